"""The one `--help` format of every `ecgtune` command, and the value types its flags share."""

from __future__ import annotations

import argparse
import re
import textwrap

__all__ = ["HelpFormatter", "non_negative_int", "positive_float", "positive_int"]


class HelpFormatter(argparse.HelpFormatter):
    """The one `--help` format of every ecgtune subcommand (the `ecgtune` parser makes it the
    default of every subparser).

    - An option with a value default shows it once, as ``(default: X)``, appended here; help
      texts do not spell defaults out themselves, except where the default is not a plain value
      (``(default: sqlite:///$PWD/mlflow.db)``), which is then left alone. Required options,
      switches and options whose default is None or empty show none.
    - Descriptions and epilogs are wrapped to the terminal paragraph by paragraph (blank lines
      separate paragraphs); a run of lines indented by two spaces is wrapped as one indented
      paragraph, and lines indented further (examples) are kept as written.
    """

    _MENTIONS_DEFAULT = re.compile(r"\(default[: ]|%\(default\)")

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.required
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default in ([], ())
            or self._MENTIONS_DEFAULT.search(text)
        ):
            return text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for paragraph in text.strip("\n").split("\n\n"):
            if out:
                out.append("")
            for lead, words in _runs(paragraph.splitlines()):
                if lead is None:  # an example: as written
                    out.append(indent + words)
                else:
                    pad = indent + " " * lead
                    out += textwrap.wrap(words, width, initial_indent=pad, subsequent_indent=pad)
        return "\n".join(out)


def _runs(lines: list[str]) -> list[tuple[int | None, str]]:
    """Consecutive lines with the same indentation joined into (indent, text); a heading line
    (ending in ':') stands alone; lines indented 4+ spaces come back verbatim (None, line)."""
    runs: list[tuple[int | None, str]] = []
    for line in lines:
        lead = len(line) - len(line.lstrip(" "))
        if lead >= 4:
            runs.append((None, line))
            continue
        last = runs[-1] if runs else None
        if last is not None and last[0] == lead and not last[1].endswith(":"):
            runs[-1] = (lead, f"{last[1]} {line.strip()}")
        else:
            runs.append((lead, line.strip()))
    return runs


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value
