"""Options declared once: a frozen dataclass field that is also a command-line flag.

Each field's metadata (`option`) carries its help text, flag and constraints (a type, choices,
bounds, a check). The same declaration builds the command line (`add_arguments`,
`from_namespace`), validates a value built in Python (`problems`, `validate`, called from each
options class's ``__post_init__``) and gives the defaults to the code that takes the options.
`ecgtune search`'s options (`search.options.SearchOptions`) and the ensemble side's
(`ensembles.options`) are declared with it; it lives in `search` because both may import it.

Importing this module imports nothing heavy: argument parsing uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

__all__ = ["REQUIRED", "add_arguments", "from_namespace", "option", "problems", "same_as",
           "validate"]

_MISSING: Any = dataclasses.MISSING
REQUIRED: Any = _MISSING  # an option without a default (argparse: required)


def option(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    kind: type | None = None,
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    metavar: str | None = None,
    noun: str | None = None,
    cli: bool = True,
    many: str | None = None,
    item: Callable[[str], Any] = str,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``kind``: the value's type (int or float) when the default does not show it (None);
    ``choices`` may be a callable, so that registries are read when the parser is built, not
    when a module is imported; ``minimum`` (>=) and ``above`` (>) bound numbers; ``check``
    returns a problem (or None) and runs at validation only (it may import torch); ``noun``
    names the value in messages ("unknown metric ..."); ``cli=False`` keeps a field out of
    the command line; a tuple field takes ``many`` values: ``"append"`` (the flag repeated)
    or ``"nargs"`` (several after one flag), each parsed by ``item``; ``factory`` makes a
    mutable default (a dict) instead of ``default``."""
    meta = {"help": help, "flag": flag, "kind": kind, "choices": choices, "minimum": minimum,
            "above": above, "check": check, "metavar": metavar, "noun": noun, "cli": cli,
            "many": many, "item": item}
    if factory is not None:
        return field(default_factory=factory, metadata={"option": meta})
    return field(default=default, metadata={"option": meta})


def same_as(cls: type, name: str, default: Any = _MISSING) -> Any:
    """The declaration of ``cls.name`` (help, flag, checks) for another command's option."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field(default=f.default if default is _MISSING else default, metadata=f.metadata)


def _meta(f: dataclasses.Field) -> dict[str, Any] | None:
    return f.metadata.get("option")


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")


def _choices(meta: Mapping[str, Any]) -> list[Any] | None:
    choices = meta["choices"]
    if choices is None:
        return None
    values = list(choices() if callable(choices) else choices)
    return sorted(values) if all(isinstance(v, str) for v in values) else values


def _kind(f: dataclasses.Field, meta: Mapping[str, Any]) -> type | None:
    if meta["kind"] is not None:
        return meta["kind"]
    default = f.default
    if default in (_MISSING, None) or isinstance(default, bool) or meta["many"]:
        return None
    return type(default) if isinstance(default, (int, float)) else None


def _type_problem(value: Any, kind: type | None) -> bool:
    """True when a number field holds something else (a bool, a string, 1.5 for an int)."""
    if kind is None or value is None:
        return False
    if isinstance(value, bool):
        return True
    if kind is int:
        return not isinstance(value, int)
    if kind is float:  # NaN and infinity are numbers: the bounds refuse them by name
        return not isinstance(value, (int, float))
    return False


def problems(obj: Any) -> list[str]:
    """Every violated constraint of a dataclass instance, named by its flag."""
    found = []
    for f in dataclasses.fields(obj):
        meta, value = _meta(f), getattr(obj, f.name)
        if meta is None:
            continue
        flag = flag_of(f)
        kind = _kind(f, meta)
        if _type_problem(value, kind):
            assert kind is not None
            found.append(f"{flag} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}")
            continue
        choices = _choices(meta)
        if choices is not None and value not in choices:
            noun = meta["noun"] or flag
            listed = ", ".join(str(c) for c in choices)
            found.append(f"unknown {noun} {value!r}"
                         + (f" ({flag})" if meta["noun"] else "") + f"; valid: {listed}")
        if value is not None and meta["minimum"] is not None and not value >= meta["minimum"]:
            found.append(f"{flag} must be >= {meta['minimum']:g}, got {value}")
        if value is not None and meta["above"] is not None and not value > meta["above"]:
            found.append(f"{flag} must be > {meta['above']:g}, got {value}")
        if meta["check"] is not None and (problem := meta["check"](value)):
            found.append(problem)
    return found


def validate(obj: Any, extra: Iterable[str] = ()) -> None:
    """Raise the options class's ``option_error`` (a ValueError by default) naming every
    problem of ``obj`` (and ``extra``, problems across fields) in one message."""
    found = [*problems(obj), *extra]
    if found:
        raise getattr(type(obj), "option_error", ValueError)("; ".join(found))


# ---------------------------------------------------------------------------------------------
# The command line, generated from the declarations.


def _value_type(f: dataclasses.Field, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    """str -> value of the field's type. Bounds and checks are the declaration's validation,
    so a bad value gets the same one line whether it came from the command line or not."""
    kind: Any = _kind(f, meta) or (meta["item"] if meta["many"] else str)

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names it in its messages
    return parse


def _nested(cls: type) -> dict[str, type]:
    return getattr(cls, "nested_options", {})


def add_arguments(parser: argparse.ArgumentParser, cls: type,
                  only: Iterable[str] | None = None) -> None:
    """One option per command-line field of ``cls`` (nested option classes, named by its
    ``nested_options``, included), or of the fields named in ``only``."""
    wanted = set(only) if only is not None else None
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in nested:
            add_arguments(parser, nested[f.name], only)
            continue
        meta = _meta(f)
        if meta is None or not meta["cli"] or (wanted is not None and f.name not in wanted):
            continue
        if isinstance(f.default, bool):  # a switch: a default-on field off, or off on
            action = "store_false" if f.default else "store_true"
            parser.add_argument(flag_of(f), dest=f.name, action=action, help=meta["help"])
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if f.default is _MISSING and f.default_factory is _MISSING:
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
            if not all(isinstance(c, str) for c in choices):
                kwargs["type"] = _value_type(f, meta)
        else:
            kwargs["type"] = _value_type(f, meta)
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag_of(f), **kwargs)


def from_namespace(args: argparse.Namespace, cls: type) -> Any:
    """The ``cls`` instance an `add_arguments` parser produced; invalid values raise the
    class's ``option_error`` naming the flag."""
    values: dict[str, Any] = {}
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in nested:
            values[f.name] = from_namespace(args, nested[f.name])
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            if (_meta(f) or {}).get("many"):
                if value is None:
                    continue  # the field's own default
                value = tuple(value)
            values[f.name] = value
    return cls(**values)
