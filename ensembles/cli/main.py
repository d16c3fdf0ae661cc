"""The `ecgtune` console script.

Each command has its own module in this package (`register(subparsers)`); this one stitches
them together and turns expected failures into one line. Argument parsing imports nothing heavy,
so `ecgtune --help` is instant; handlers import torch, Ray or MLflow when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ecgtune.data_prep.console import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    os_error_line,
    sigterm_as_interrupt,
    terminated,
)
from ecgtune.data_prep.heartbeat import beating
from ecgtune.ensembles.cli.formatter import HelpFormatter

# One module per command, in pipeline order.
_CLI_MODULES = tuple(f"ecgtune.ensembles.cli.{name}" for name in (
    "prep", "search", "ensemble", "evaluate", "predict", "demo", "export",
))


class _Parser(argparse.ArgumentParser):
    """Every ecgtune parser, subcommands included (subparsers inherit the class), formats its
    help with the one shared `HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    parser = _Parser(
        prog="ecgtune",
        description=(
            "Hyperparameter and ensemble search for 12-lead ECG multi-label classification."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    user_errors: list[type[BaseException]] = []
    for name in _CLI_MODULES:
        module = importlib.import_module(name)  # a renamed module must fail loudly here
        module.register(sub)
        user_errors.extend(getattr(module, "USER_ERRORS", ()))
    return parser, tuple(user_errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser, user_errors = build_parser()
    args = parser.parse_args(argv)
    # A console quiet for 10 s gets a line saying which step is still running
    # (data_prep.heartbeat); SIGTERM takes Ctrl-C's path (a search saves its state and prints
    # its summary), and the status says which signal it was.
    with beating(), sigterm_as_interrupt():
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        try:
            code = int(args.func(args) or 0)
        except user_errors as exc:
            # Expected failures (bad input, corrupt shards, unreachable servers): one clear
            # line; option errors are usage errors (exit 2), the rest exit 1.
            print(f"ecgtune {args.command}: error: {exc}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 1))
        except KeyboardInterrupt:
            if terminated():
                print(f"ecgtune {args.command}: terminated (SIGTERM)", file=sys.stderr)
                return EXIT_TERMINATED
            print(f"ecgtune {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            # A read-only, forbidden or full file system: one line naming the path, whichever
            # step met it (anything else is a bug, and its traceback the report).
            line = os_error_line(exc, _output(args))
            if line is None:
                raise
            print(f"ecgtune {args.command}: error: {line}", file=sys.stderr)
            return 1
        return EXIT_TERMINATED if code == EXIT_INTERRUPTED and terminated() else code


def _output(args: argparse.Namespace) -> str | None:
    """Where the command writes, to name when a file-system error names no file."""
    for name in ("output", "storage", "workdir"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
