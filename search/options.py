"""The options of `ecgtune search`, declared once: `SearchOptions` checks its own ranges,
choices and types when it is built, and the same declarations make the command line
(`ensembles.cli.search`). What needs the space, the data or the machine is checked by
`search.validation` before anything starts.

Importing this module imports nothing heavy: argument parsing uses it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ecgtune.search import metric_keys as K
from ecgtune.search.declared_options import REQUIRED, option, validate
from ecgtune.search.errors import SearchOptionError

__all__ = [
    "DATA_SHARING",
    "OBJECTIVES",
    "QUALITY_OBJECTIVES",
    "SCHEDULERS",
    "SEARCHERS",
    "SearchOptions",
    "objective_metric",
    "parse_objective",
    "parse_override",
    "resolve_storage",
]

DATA_SHARING = ("object_store", "memmap")  # how the trials of a node share the data
SEARCHERS = ("tpe", "random")
# `--objective` names -> (reported metric, direction). Quality comes first; any further
# name makes the search multi-objective (a Pareto front of quality against cost).
OBJECTIVES: dict[str, tuple[str, str]] = {
    "auprc": (K.OBJECTIVE, "max"),
    # Validation macro AUPRC per source (site) of the validation fold: its worst, or its mean.
    "worst-source": (K.WORST_SOURCE_AUPRC, "max"),
    "mean-source": (K.MEAN_SOURCE_AUPRC, "max"),
    "gflops": (K.COST_GFLOPS, "min"),
    "cpu_ms": (K.COST_CPU_MS, "min"),
    "params": (K.COST_PARAMS, "min"),
}
# The quality terms: one of them comes first; ASHA, the checkpoints kept and the members
# ranked by the ensemble all follow it.
QUALITY_OBJECTIVES = ("auprc", "worst-source", "mean-source")


def parse_objective(text: str) -> tuple[str, ...]:
    """`auprc`, `worst-source` or `auprc,gflops` (...) -> the names; raises ValueError naming
    the problem."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise ValueError(f"unknown objective {', '.join(unknown) or repr(text)}; valid: "
                         f"{', '.join(OBJECTIVES)} (quality first, e.g. auprc,gflops)")
    if (names[0] not in QUALITY_OBJECTIVES or len(set(names)) != len(names)
            or any(n in QUALITY_OBJECTIVES for n in names[1:])):
        raise ValueError(f"objective {text!r}: start with auprc (or another quality term: "
                         f"{', '.join(QUALITY_OBJECTIVES[1:])}), the only one, and name each "
                         "cost once, e.g. auprc,gflops or worst-source,gflops")
    return names


def objective_metric(text: str) -> str:
    """The reported metric of an objective's quality term (`val/worst_source_auprc`, ...)."""
    return OBJECTIVES[parse_objective(text)[0]][0]


SCHEDULERS = ("asha", "fifo")


def _name_problem(name: Any) -> str | None:
    text = str(name)
    # The name becomes a folder under --storage: a path in it would write outside it.
    if not text.strip() or text in (".", "..") or "/" in text or os.sep in text:
        return f"--name must be a plain folder name (no '/'), got {text!r}"
    return None


def _objective_problem(objective: str) -> str | None:
    try:
        parse_objective(objective)
    except ValueError as exc:
        return f"--objective: {exc}"
    return None


def parse_override(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of one ``--set``."""
    import argparse

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


@dataclass(frozen=True)
class SearchOptions:
    """Everything `run_search` (the `ecgtune search` command) is told."""

    option_error: ClassVar[type[Exception]] = SearchOptionError

    # `option` returns a dataclasses.field, which ruff's RUF009 cannot see through.
    data: Path = option(REQUIRED, metavar="DIR",  # noqa: RUF009
                        help="prepared data directory (from `ecgtune prep`)")
    space: str = option("default", metavar="FILE|NAME", help="search space: a YAML file, or a "
                        "shipped space: default, demo or tiny")
    name: str = option("ecgtune-search", check=_name_problem, help="search name: the MLflow "
                       "experiment and the Ray experiment directory")
    num_samples: int = option(20, minimum=1, metavar="N", help="number of trials")
    epochs: int | None = option(None, kind=int, minimum=1, metavar="N", help="epoch budget "
                                "per trial, ASHA's max_t (default: the space's)")
    cpus_per_trial: float = option(1.0, above=0, metavar="C", help="CPUs reserved per trial")
    gpus_per_trial: float | None = option(
        None, kind=float, minimum=0, metavar="G", help="GPUs per trial, fractions allowed "
        "(0.5 = two trials per GPU) (default: 1 when the cluster has GPUs, else 0)")
    tracking_uri: str | None = option(None, metavar="URI", help="MLflow tracking URI "
                                      "(default: $MLFLOW_TRACKING_URI, else "
                                      "sqlite:///$PWD/mlflow.db)")
    storage: str | None = option(None, metavar="PATH", help="Ray results: a local or NFS path, "
                                 "or s3://bucket/prefix (default: $PWD/ray_results)")
    resume: bool = option(False, help="continue an interrupted search of this --name "
                          "(Tuner.restore)")
    address: str | None = option(None, help="join a running Ray cluster (e.g. auto) instead "
                                 "of starting one")
    num_cpus: int | None = option(None, kind=int, minimum=1, metavar="N",
                                  help="CPUs of the local Ray instance (default: all)")
    max_concurrent: int | None = option(None, kind=int, minimum=1, metavar="N", help="at most "
                                        "N trials at once (default: as many as resources "
                                        "allow)")
    seed: int = option(0, help="searcher seed")
    searcher: str = option("tpe", choices=SEARCHERS, help="Optuna TPE or random sampling")
    scheduler: str = option("asha", choices=SCHEDULERS, help="ASHA early stopping or full "
                            "budget for every trial")
    data_sharing: str = option("object_store", choices=DATA_SHARING, help="how the trials on "
                               "a node share one copy of the data")
    max_failures: int = option(2, minimum=0, metavar="N", help="retries of a crashed trial, "
                               "each from its last checkpoint")
    overrides: Mapping[str, Any] = option(
        factory=dict, flag="--set", many="append", item=parse_override, metavar="KEY=VALUE",
        help="fix a config key for every trial, e.g. --set train.steps_per_epoch=50; a key the "
        "space samples is pinned (no longer searched); one branch's own architecture: --set "
        "branches.rhythm.depths=6-5-4-3 (group names from the label map, lower-cased); "
        "checked before anything starts")
    verbose: int = option(1, choices=(0, 1, 2), help="0: summary only; 1: one line per trial "
                          "event; 2: also Ray's own status tables")
    objective: str = option("auprc", check=_objective_problem, metavar="auprc[,gflops]",
                            help="what the searcher optimises: auprc (validation macro "
                            "AUPRC), worst-source or mean-source (the worst or mean "
                            "per-source macro AUPRC over the sources in the validation fold), "
                            "optionally plus cost terms (gflops, cpu_ms, params) for a "
                            "multi-objective search whose Pareto front the search run logs; "
                            "ASHA stops trials on the quality term either way")

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        found = []
        if not isinstance(self.overrides, Mapping):  # `--set` pairs from the command line
            pairs: dict[str, Any] = {}
            for key, value in self.overrides:
                if key in pairs and pairs[key] != value:
                    found.append(f"--set {key}={value} contradicts --set {key}={pairs[key]}; "
                                 "give one value")
                pairs[key] = value
            object.__setattr__(self, "overrides", pairs)
        if self.address is not None and self.num_cpus is not None:
            found.append("--num-cpus sizes the local Ray instance; with --address the "
                         "cluster's own CPUs are used, so drop --num-cpus")
        validate(self, found)


def resolve_storage(storage: str | None) -> str:
    if storage is None:
        return str(Path("ray_results").resolve())
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())
