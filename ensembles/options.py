"""The options of `ecgtune ensemble`, declared once.

Each option is a field of a frozen dataclass whose metadata (`option`) carries its help text,
its flag, and its constraints (choices, a minimum, a check). The same declaration builds the
command line (`add_arguments`, `from_namespace`), validates a value built in Python (every
dataclass here checks itself in ``__post_init__``) and gives the defaults to `EnsembleSelector`
and the fitting code, which take `FitOptions` instead of repeating them.

Importing this module imports nothing heavy (no torch, no MLflow): argument parsing uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgtune.ensembles.errors import EnsembleOptionError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WINDOWS",
    "DEVICES",
    "PRECISIONS",
    "EnsembleOptions",
    "EvaluateOptions",
    "FitOptions",
    "add_arguments",
    "from_namespace",
    "option",
]

DEFAULT_WINDOWS = 3
DEFAULT_BATCH_SIZE = 32  # records cropped and normalised together
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")

_MISSING: Any = dataclasses.MISSING
REQUIRED: Any = _MISSING  # an option without a default (argparse: required)


def option(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    minimum: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    metavar: str | None = None,
    noun: str | None = None,
    cli: bool = True,
    many: str | None = None,
    item: Callable[[str], Any] = str,
) -> Any:
    """A dataclass field that is also a command-line option. ``choices`` may be a callable so
    that registries are read when the parser is built, not when this module is imported;
    ``check`` returns a problem (or None) and runs at validation only (it may import torch);
    ``noun`` names the value in messages ("unknown metric ..."); ``cli=False`` keeps a field
    out of the command line; a tuple field takes ``many`` values: ``"append"`` (the flag
    repeated) or ``"nargs"`` (several after one flag), each parsed by ``item``."""
    meta = {"help": help, "flag": flag, "choices": choices, "minimum": minimum, "check": check,
            "metavar": metavar, "noun": noun, "cli": cli, "many": many, "item": item}
    return field(default=default, metadata={"option": meta})


def _meta(f: dataclasses.Field) -> dict[str, Any] | None:
    return f.metadata.get("option")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")


def _choices(meta: Mapping[str, Any]) -> list[str] | None:
    choices = meta["choices"]
    if choices is None:
        return None
    return sorted(choices() if callable(choices) else choices)


def _problems(obj: Any) -> list[str]:
    """Every violated constraint of a dataclass instance, named by its flag."""
    problems = []
    for f in dataclasses.fields(obj):
        meta, value = _meta(f), getattr(obj, f.name)
        if meta is None:
            continue
        choices = _choices(meta)
        if choices is not None and value not in choices:
            noun = meta["noun"] or f.name.replace("_", " ")
            problems.append(f"unknown {noun} {value!r} ({_flag(f)}); valid: {choices}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            problems.append(f"{_flag(f)} must be >= {meta['minimum']}, got {value}")
        if meta["check"] is not None and (problem := meta["check"](value)):
            problems.append(problem)
    return problems


def _validate(obj: Any) -> None:
    problems = _problems(obj)
    if problems:
        raise EnsembleOptionError("; ".join(problems))


def _selection_metrics() -> Iterable[str]:
    from ecgtune.ensembles.selection import SELECTION_METRICS

    return SELECTION_METRICS


def _policy_problem(value: str) -> str | None:
    from ecgtune.ensembles.policies import policy_problem

    return policy_problem(value)


def _override_problem(value: tuple[str, ...]) -> str | None:
    from ecgtune.ensembles.policies import override_problem

    return override_problem(value)


def _bag_fraction_problem(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else f"bag_fraction must be in (0, 1], got {value}"


@dataclass(frozen=True)
class FitOptions:
    """Selection, calibration and threshold settings, all fitted on the ensemble fold."""

    metric: str = option("macro_auprc", choices=_selection_metrics, noun="metric",
                         help="selection metric on the ensemble fold")
    init_size: int = option(3, minimum=1, metavar="N", help="selection starts from the best "
                            "prefix of up to this many members")
    max_rounds: int = option(50, minimum=0, cli=False,
                             help="at most this many greedy additions after the start")
    bags: int = option(0, minimum=0, metavar="N", help="bagged selection over this many "
                       "random halves of the members (0: plain selection)")
    bag_fraction: float = option(0.5, check=_bag_fraction_problem, cli=False,
                                 help="share of the members in each bag")
    seed: int = option(0, metavar="S", help="seed of bagging, calibration folds and the bootstrap")
    tol: float = option(0.0, minimum=0.0, cli=False,
                        help="an addition must improve the metric by more than this")
    uniform_candidate: bool = option(True, cli=False, help="the uniform average of all "
                                     "members competes with the greedy selection")
    calibration_methods: tuple[str, ...] = option(("temperature", "platt", "isotonic"),
                                                  cli=False, help="per-label calibrators tried")
    calibration_cv: int = option(5, minimum=2, cli=False,
                                 help="folds of the cross-fitted calibration choice")
    threshold_policy: str = option("f1", check=_policy_problem, metavar="POLICY",
                                   help="how each label's threshold is chosen on the "
                                   "calibrated ensemble fold: f1, fbeta:B, challenge, "
                                   "sensitivity:S (the highest threshold reaching sensitivity "
                                   "S there), specificity:S (the lowest reaching specificity "
                                   "S)")
    threshold_policy_for: tuple[str, ...] = option(
        (), check=_override_problem, metavar="LABEL=POLICY", many="append",
        help="another policy for one label, e.g. AFIB=sensitivity:0.98 (repeatable)")
    min_positives: int = option(5, minimum=1, metavar="N", help="labels with fewer positives "
                                "on the ensemble fold keep the fallback threshold (0.5)")
    fallback: float = option(0.5, cli=False, help="threshold of labels with few positives")

    def __post_init__(self) -> None:
        if isinstance(self.threshold_policy_for, str):  # one override given as a string
            object.__setattr__(self, "threshold_policy_for", (self.threshold_policy_for,))
        object.__setattr__(self, "threshold_policy_for", tuple(self.threshold_policy_for))
        _validate(self)

    def policies(self) -> Any:
        """The `PolicySet` of --threshold-policy and --threshold-policy-for."""
        from ecgtune.ensembles.policies import PolicySet

        return PolicySet.parse(self.threshold_policy, self.threshold_policy_for)

    def threshold_params(self) -> dict[str, Any]:
        """bundle.json ``fit.thresholds`` settings; ``objective`` and ``beta`` (the default
        policy's) keep readers of bundles from before policies working."""
        default = self.policies().default
        return {"objective": default.kind,
                "beta": float(default.value) if default.kind == "fbeta" else 1.0,
                "min_positives": self.min_positives, "fallback": self.fallback}


def _device_problem(device: str) -> str | None:
    from ecgtune.search.devices import resolve_device

    try:
        resolve_device(device)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class EnsembleOptions:
    """Everything `build_ensemble` (the `ecgtune ensemble` command) is told; `fit` holds the
    selection, calibration and threshold settings."""

    # `option` returns a dataclasses.field, which ruff's RUF009 cannot see through.
    data: str | Path = option(  # noqa: RUF009
        REQUIRED, metavar="DIR", help="prepared data directory the search ran on (from "
        "`ecgtune prep`)")
    name: str = option(REQUIRED, help="search name (the MLflow experiment)")
    output: str | Path = option(  # noqa: RUF009
        REQUIRED, metavar="BUNDLE_DIR", help="bundle directory to write (an existing bundle "
        "there is replaced)")
    top_k: int = option(5, minimum=1, metavar="K", help="candidate members: the best K "
                        "finished trials by the search objective")
    register: str | None = option(None, metavar="MODEL_NAME", help="register the pyfunc "
                                  "model under this name, alias 'champion'")
    tracking_uri: str | None = option(None, metavar="URI", help="MLflow tracking URI "
                                      "(default: sqlite:///$PWD/mlflow.db)")
    storage: str | None = option(None, metavar="PATH", help="search storage (local/NFS path "
                                 "or s3://...) to find checkpoints whose recorded path moved: "
                                 "STORAGE/NAME/<trial>/<checkpoint>")
    search_run_id: str | None = option(None, metavar="RUN_ID", help="the search's parent "
                                       "MLflow run (default: the newest search run of --name)")
    allow_running: bool = option(False, help="build from the trials a search that is still "
                                 "running has finished so far (refused by default: its best "
                                 "trials are not known yet)")
    fit: FitOptions = field(default_factory=FitOptions)
    n_windows: int = option(DEFAULT_WINDOWS, flag="--windows", minimum=1, metavar="N",
                            help="evenly spaced crop windows per record at inference, averaged")
    batch_size: int = option(DEFAULT_BATCH_SIZE, minimum=1, metavar="N",
                             help="records per batch")
    n_boot: int = option(1000, minimum=1, metavar="N",
                         help="bootstrap resamples for the test-fold confidence intervals")
    device: str = option("auto", choices=DEVICES, check=_device_problem, help="where the "
                         "members run: auto = the GPU when torch can use one")
    precision: str = option("fp32", choices=PRECISIONS, noun="precision", help="fp32: the "
                            "CPU's probabilities to ~1e-7 on any device (TF32 off); bf16: "
                            "autocast on a GPU, ~2.3x faster on an H200, probabilities within "
                            "~1e-4")
    onnx: bool = option(True, flag="--no-onnx", help="do not log the ONNX graph of the "
                        "ensemble beside the pyfunc (its export takes ~20 s on a laptop CPU; "
                        "`ecgtune export` makes it later)")
    progress: bool = option(True, flag="--no-progress", help="no progress bars")
    # Compute budgets (ensembles.budget); 0 = none. A float default makes the flag a float.
    max_gflops: float = option(0.0, minimum=0.0, metavar="G", help="the best ensemble whose "
                               "members' summed forward GFLOP per 10 s record (from their "
                               "trials) is at most G; 0: no limit")
    max_ms: float = option(0.0, minimum=0.0, metavar="MS", help="the same with the members' "
                           "summed CPU inference ms per record, as measured in their trials")

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def create(cls, **kwargs: Any) -> EnsembleOptions:
        """Options from flat keywords: `FitOptions` field names go into ``fit``."""
        fit_names = {f.name for f in dataclasses.fields(FitOptions)}
        fit_values = {k: kwargs.pop(k) for k in list(kwargs) if k in fit_names}
        base = kwargs.pop("fit", FitOptions())
        problems = []
        try:
            fit = dataclasses.replace(base, **fit_values)
        except EnsembleOptionError as exc:  # still check the rest: one message names all
            problems.append(str(exc))
            fit = base
        try:
            options = cls(**kwargs, fit=fit)
        except EnsembleOptionError as exc:
            problems.append(str(exc))
        if problems:
            raise EnsembleOptionError("; ".join(problems))
        return options

    def replace(self, **kwargs: Any) -> EnsembleOptions:
        """A copy with flat keywords changed (`FitOptions` names included)."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return EnsembleOptions.create(**{**flat, **kwargs})

    def validate(self) -> None:
        """Re-check (construction already did): for callers that build and check apart."""
        _validate(self)
        _validate(self.fit)


def _same_as(cls: type, name: str, default: Any = _MISSING) -> Any:
    """The declaration of ``cls.name`` (help, flag, checks) for another command's option."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field(default=f.default if default is _MISSING else default, metadata=f.metadata)


def _by_problem(value: str | None) -> str | None:
    return None if value in (None, "source") else f"--by: only 'source' is known, got {value!r}"


def _refit_problem(value: str | None) -> str | None:
    from ecgtune.ensembles.policies import policy_problem

    return None if value is None else policy_problem(value, "--refit-thresholds")


def _model_problem(value: str | None) -> str | None:
    if value is None or (value.count("@") == 1 and all(value.split("@"))):
        return None
    return f"--model: expected NAME@ALIAS (e.g. ecg-ensemble@champion), got {value!r}"


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything `evaluate_bundle` (the `ecgtune evaluate` command) is told."""

    bundle: str = option(REQUIRED, metavar="BUNDLE_DIR|models:/NAME@ALIAS",
                         help="bundle directory (from `ecgtune ensemble`), or a registered "
                         "ensemble model")
    data: str | Path = option(  # noqa: RUF009
        REQUIRED, metavar="DIR", help="prepared, labelled data (from `ecgtune prep`), with the "
        "bundle's label map")
    folds: tuple[int, ...] = option((), many="nargs", item=int, metavar="F",
                                    help="folds to evaluate (default: the data's test-role "
                                    "folds)")
    all_folds: bool = option(False, flag="--all", help="evaluate every record (external data)")
    by: str | None = option(None, check=_by_problem, metavar="source",
                            help="also break the metrics down by source database")
    output: str | Path = option(  # noqa: RUF009
        "evaluation", metavar="REPORT_DIR", help="directory for report.{html,md,json}, figures "
        "and summary.json")
    min_positives: int = option(5, minimum=1, metavar="N", help="labels with fewer positives "
                                "(or no negative) in the evaluated records are reported as not "
                                "assessable")
    tracking_uri: str | None = _same_as(EnsembleOptions, "tracking_uri")
    model: str | None = option(None, check=_model_problem, metavar="NAME@ALIAS",
                               help="log an evaluation run linked to this registered model "
                               "version (tags: model name, version, data manifest sha256)")
    refit_thresholds: str | None = option(
        None, check=_refit_problem, metavar="POLICY", help="refit every label's threshold by "
        "this policy on --on-folds, write the result as a new bundle (--refit-output) and "
        "evaluate that one")
    threshold_policy_for: tuple[str, ...] = _same_as(FitOptions, "threshold_policy_for")
    on_folds: tuple[int, ...] = option((), many="nargs", item=int, metavar="F",
                                       help="folds the thresholds are refitted on (none of "
                                       "the evaluated folds)")
    refit_output: str | None = option(None, metavar="BUNDLE_DIR", help="the refitted bundle: "
                                      "a new directory, never the evaluated bundle")
    n_boot: int = _same_as(EnsembleOptions, "n_boot")
    seed: int = option(0, metavar="S", help="seed of the bootstrap (the build's --seed "
                       "reproduces its test-fold intervals)")
    batch_size: int = _same_as(EnsembleOptions, "batch_size")
    device: str = _same_as(EnsembleOptions, "device")
    precision: str = _same_as(EnsembleOptions, "precision")
    progress: bool = _same_as(EnsembleOptions, "progress")

    def __post_init__(self) -> None:
        for name in ("folds", "on_folds"):
            object.__setattr__(self, name, tuple(int(f) for f in getattr(self, name)))
        if isinstance(self.threshold_policy_for, str):
            object.__setattr__(self, "threshold_policy_for", (self.threshold_policy_for,))
        object.__setattr__(self, "threshold_policy_for", tuple(self.threshold_policy_for))
        problems = _problems(self)
        if self.folds and self.all_folds:
            problems.append("--folds and --all exclude each other")
        refit = {"--on-folds": self.on_folds, "--refit-output": self.refit_output,
                 "--threshold-policy-for": self.threshold_policy_for}
        if self.refit_thresholds is None:
            problems += [f"{flag} needs --refit-thresholds" for flag, v in refit.items() if v]
        else:
            problems += [f"--refit-thresholds needs {flag}" for flag, v in refit.items()
                         if not v and flag != "--threshold-policy-for"]
            if self.all_folds:
                problems.append("--refit-thresholds cannot evaluate --all: the refit folds "
                                "would be among the evaluated ones")
        if problems:
            raise EnsembleOptionError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# The command line, generated from the declarations above.


def _value_type(f: dataclasses.Field, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    """str -> value with the field's minimum checked at parse time (a usage error, exit 2)."""
    kind: Any = type(f.default) if f.default not in (_MISSING, None) else str
    if kind is tuple:
        kind = meta["item"]

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise argparse.ArgumentTypeError(f"must be >= {meta['minimum']}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type = EnsembleOptions,
                  only: Iterable[str] | None = None) -> None:
    """One option per command-line field of ``cls`` (nested option dataclasses included), or
    of the fields named in ``only``."""
    wanted = set(only) if only is not None else None
    for f in dataclasses.fields(cls):
        if f.name in _NESTED:
            add_arguments(parser, _NESTED[f.name], only)
            continue
        meta = _meta(f)
        if meta is None or not meta["cli"] or (wanted is not None and f.name not in wanted):
            continue
        if isinstance(f.default, bool):  # a switch: a default-on field off, or off on
            action = "store_false" if f.default else "store_true"
            parser.add_argument(_flag(f), dest=f.name, action=action, help=meta["help"])
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if f.default is _MISSING:
            kwargs["required"] = True
        elif meta["many"]:
            kwargs["default"] = None  # argparse would append to a shared default list
        else:
            kwargs["default"] = f.default
        if meta["many"] == "append":
            kwargs["action"] = "append"
        elif meta["many"] == "nargs":
            kwargs["nargs"] = "+"
        if (choices := _choices(meta)) is not None:
            kwargs["choices"] = choices
        else:
            kwargs["type"] = _value_type(f, meta)
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(_flag(f), **kwargs)


# Nested option groups by field name (annotations are strings under `from __future__`).
_NESTED: dict[str, type] = {"fit": FitOptions}


def from_namespace(args: argparse.Namespace, cls: type = EnsembleOptions) -> Any:
    """The ``cls`` instance an `add_arguments` parser produced; invalid values raise
    `EnsembleOptionError` naming the flag."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in _NESTED:
            values[f.name] = from_namespace(args, _NESTED[f.name])
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            if (_meta(f) or {}).get("many"):
                value = f.default if value is None else tuple(value)
            values[f.name] = value
    return cls(**values)
