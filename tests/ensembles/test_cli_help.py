"""Every subcommand's --help has the one format of `ensembles.cli.formatter.HelpFormatter`."""

from __future__ import annotations

import argparse
import re

import pytest

from ecgtune.ensembles.cli import build_parser

WIDTH = 100


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser, _ = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers())


def test_every_pipeline_subcommand_is_covered():
    assert {"synth", "prep", "search", "ensemble", "predict", "demo"} <= set(SUBCOMMANDS)


def _option_helps(text: str) -> dict[str, str]:
    """Option string -> its whole help text (continuation lines joined)."""
    helps: dict[str, str] = {}
    current = None
    for line in text.split("options:", 1)[1].splitlines():
        match = re.match(r"^  (-[-\w]+)", line)
        if match:
            current = match.group(1)
            helps[current] = line
        elif current and line.startswith(" " * 10):
            helps[current] += " " + line.strip()
        else:
            current = None
    return helps


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_format(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    parser = _subparsers()[command]
    text = parser.format_help()
    for bad in ("(default: None)", "(default: False)", "(default: True)", "(default: [])"):
        assert bad not in text, (command, bad)
    assert max(len(line) for line in text.splitlines()) <= WIDTH, command
    helps = _option_helps(text)
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        help_text = helps[action.option_strings[0]]
        assert len(re.findall(r"\(default", help_text)) <= 1, (command, help_text)
        assert help_text.lower().count("default:") <= 1, (command, help_text)
        plain_default = (action.default not in (None, [], argparse.SUPPRESS)
                         and not isinstance(action.default, bool) and not action.required)
        if plain_default and "(default:" not in (action.help or ""):
            assert help_text.endswith(f"(default: {action.default})"), (command, help_text)
        if action.required or isinstance(action.default, bool):
            assert "(default" not in help_text, (command, help_text)


def test_descriptions_and_epilogs_are_wrapped(monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    predict = _subparsers()["predict"].format_help()
    assert max(len(line) for line in predict.splitlines()) <= 90
    # Indented examples stay as written; headings keep their own line.
    assert "\n    record JS00001: truncated_signal:" in predict
    assert "\nexit status:\n  0 every record predicted;" in predict
