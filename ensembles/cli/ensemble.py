"""`ecgtune ensemble`: argument parsing only (the options are declared once, in
`ensembles.options`); the handler imports torch, MLflow and the rest when it runs."""

from __future__ import annotations

import argparse
import sys

from ecgtune.ensembles.errors import EnsembleError
from ecgtune.ensembles.options import EnsembleOptions, add_arguments, from_namespace

__all__ = ["USER_ERRORS", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "ensemble",
        help="build, report, export and register a calibrated ensemble of a search's best trials",
        description=(
            "Take the top-K finished trials of the search --name (MLflow experiment), predict "
            "the ensemble fold and the test fold of --data with each (fold roles from the data "
            "manifest), select an ensemble on the ensemble fold (greedy forward selection with "
            "replacement; the uniform average of all K competes and is kept when it scores "
            "better), calibrate it per label and fit per-label thresholds there, report the "
            "test fold against the best single trial, the uniform average and a seed-style "
            "baseline, export a checksummed bundle to --output and log it to MLflow as an "
            "ensemble run with a pyfunc model (registered with --register, alias 'champion')."
        ),
    )
    add_arguments(e, EnsembleOptions)
    e.set_defaults(func=_run_ensemble)


def _run_ensemble(args: argparse.Namespace) -> int:
    # Options first: a bad value is refused before torch and MLflow are imported.
    options = from_namespace(args, EnsembleOptions)
    from ecgtune.ensembles.build.ensemble import build_ensemble, format_summary

    # Progress bars only on a terminal: a log file would fill with their redraws.
    if not sys.stderr.isatty():
        options = options.replace(progress=False)
    print(format_summary(build_ensemble(options)))
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from ecgtune.data_prep.errors import PrepError
    from ecgtune.search.errors import TrackingError

    return (EnsembleError, PrepError, TrackingError)


USER_ERRORS: tuple[type[BaseException], ...] = _user_errors()
