"""`ecgtune search`: argument parsing only; the handler imports Ray and torch when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ecgtune.search.errors import SearchError, SearchOptionError, SpaceError, TrackingError


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def register(sub: argparse._SubParsersAction) -> None:
    # Long but flat: one add_argument per flag, read top to bottom like the --help it makes.
    p = sub.add_parser(
        "search",
        help="run a Ray Tune search (Optuna TPE + ASHA) tracked in MLflow",
        description=(
            "Search branch depths, fusion strategies and training hyperparameters of the "
            "multi-branch ResU-Dense model on prepared shards. Starts a local Ray instance "
            "(or joins --address), tracks one parent MLflow run per search and one nested run "
            "per trial, and keeps checkpoints under --storage/NAME."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR",
                   help="prepared data directory (from `ecgtune prep`)")
    p.add_argument("--space", default="default", metavar="FILE|NAME",
                   help="search space: a YAML file, or a shipped space: default, demo or tiny")
    p.add_argument("--name", default="ecgtune-search",
                   help="search name: the MLflow experiment and the Ray experiment directory")
    p.add_argument("--num-samples", type=int, default=20, metavar="N",
                   help="number of trials")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="epoch budget per trial, ASHA's max_t (default: the space's)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                   help="CPUs reserved per trial")
    p.add_argument("--gpus-per-trial", type=float, default=None, metavar="G",
                   help="GPUs per trial, fractions allowed (0.5 = two trials per GPU) (default: 1 "
                   "when the cluster has GPUs, else 0)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: sqlite:///$PWD/mlflow.db)")
    p.add_argument("--storage", default=None, metavar="PATH",
                   help="Ray results: a local or NFS path, or s3://bucket/prefix "
                   "(default: $PWD/ray_results)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search of this --name (Tuner.restore)")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster (e.g. auto) instead of starting one")
    p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="at most N trials at once (default: as many as resources allow)")
    p.add_argument("--seed", type=int, default=0, help="searcher seed")
    p.add_argument("--searcher", choices=("tpe", "random"), default="tpe",
                   help="Optuna TPE or random sampling")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="ASHA early stopping or full budget for every trial")
    p.add_argument("--data-sharing", choices=("object_store", "memmap"), default="object_store",
                   help="how the trials on a node share one copy of the data")
    p.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help="retries of a crashed trial, each from its last checkpoint")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0: summary only; 1: one line per trial event; 2: also Ray's own status "
                   "tables")
    p.add_argument("--set", dest="overrides", action="append", type=_parse_override,
                   default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial, e.g. --set train.steps_per_epoch=50; a "
                   "key the space samples is pinned (no longer searched); one branch's own "
                   "architecture: --set branches.rhythm.depths=6-5-4-3 (group names from the "
                   "label map, lower-cased); checked before anything starts")
    p.add_argument("--objective", default="auprc", metavar="auprc[,gflops]",
                   help="what the searcher optimises: auprc (validation macro AUPRC), or "
                   "auprc plus cost terms (gflops, cpu_ms, params) for a multi-objective "
                   "search whose Pareto front the search run logs; ASHA stops trials on "
                   "auprc either way")
    p.set_defaults(func=_run)


def _overrides(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise SearchOptionError(
                f"--set {key}={value} contradicts --set {key}={out[key]}; give one value"
            )
        out[key] = value
    return out


def _run(args: argparse.Namespace) -> int:
    try:
        return _search(args)
    except SearchOptionError as exc:
        # A usage error, like argparse's own: exit 2, one line, nothing was started.
        print(f"ecgtune search: error: {exc}", file=sys.stderr)
        return SearchOptionError.exit_code


def _search(args: argparse.Namespace) -> int:
    from ecgtune.search.report import print_search_summary
    from ecgtune.search.run import SearchOptions, run_search

    opts = SearchOptions(
        data=args.data, space=args.space, name=args.name, num_samples=args.num_samples,
        epochs=args.epochs, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, tracking_uri=args.tracking_uri,
        storage=args.storage, resume=args.resume, address=args.address,
        num_cpus=args.num_cpus, max_concurrent=args.max_concurrent, seed=args.seed,
        searcher=args.searcher, scheduler=args.scheduler, data_sharing=args.data_sharing,
        max_failures=args.max_failures, overrides=_overrides(args.overrides), verbose=args.verbose,
        objective=args.objective,
    )
    result = run_search(opts)
    print_search_summary(result)
    return 0 if result.complete else 130


USER_ERRORS = (SearchError, SpaceError, TrackingError)
