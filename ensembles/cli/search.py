"""`ecgtune search`: argument parsing only (the options are declared once, in
`search.options.SearchOptions`); the handler imports Ray and torch when it runs."""

from __future__ import annotations

import argparse
import sys

from ecgtune.search.declared_options import add_arguments, from_namespace
from ecgtune.search.errors import SearchError, SearchOptionError, SpaceError, TrackingError
from ecgtune.search.options import SearchOptions


def register(sub: argparse._SubParsersAction) -> None:
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
    add_arguments(p, SearchOptions)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        return _search(args)
    except SearchOptionError as exc:
        # A usage error, like argparse's own: exit 2, one line, nothing was started.
        print(f"ecgtune search: error: {exc}", file=sys.stderr)
        return SearchOptionError.exit_code


def _search(args: argparse.Namespace) -> int:
    # Options first: a bad range is refused before Ray and torch are imported (seconds).
    options = from_namespace(args, SearchOptions)
    from ecgtune.search.report import print_search_summary
    from ecgtune.search.run import run_search

    result = run_search(options)
    print_search_summary(result)
    return 0 if result.complete else 130


USER_ERRORS = (SearchError, SpaceError, TrackingError)
