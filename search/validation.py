"""The validation of an `ecgtune search` invocation, before anything is started or created.

`SearchOptions` (`search.options`) checks its own ranges, choices and types when it is built.
`validate_options` is the first thing `run_search` does: what needs the machine or the space
(the local CPUs, every `--set KEY=VALUE` against the typed trial config, and a write probe of
`--storage`). A bad invocation therefore fails in a second with one line naming the option,
and leaves no Ray instance, no MLflow run and no Ray experiment folder behind (so its `--name`
stays usable).

A `--set` on a key the space samples pins it: the key leaves the sampled space, parameters
conditional on it follow the pinned value (kept unconditionally when it satisfies their `when`,
dropped when it cannot), and warm-start points lose it. Without this Optuna's sampled value
would silently win over the `--set` one.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ecgtune.components import SOURCE_FS, parse_branch_key
from ecgtune.search.config import TrialConfig
from ecgtune.search.errors import SearchOptionError
from ecgtune.search.options import SearchOptions, resolve_storage
from ecgtune.search.space import Param, SearchSpace, load_space

__all__ = [
    "Implied",
    "ValidatedSearch",
    "check_branch_groups",
    "check_input_rate",
    "condition_pins",
    "pin_space",
    "probe_storage",
    "typed_pins",
    "validate_options",
]

# Random points tried when a `--set` value only fails next to the base preset: a value that
# fits no sampled point either is rejected, one that fits some is the space's business.
_FIT_SAMPLES = 8


@dataclass(frozen=True)
class ValidatedSearch:
    """What `validate_options` hands back to `run_search`."""

    space: SearchSpace  # fixed values, `--epochs` and every `--set` applied; pins not sampled
    pins: Mapping[str, Any]  # every `--set` (and `--epochs`) as its typed flat value
    # Keys the space sampled that a pin took out, with their distributions (start-up line).
    unsearched: Mapping[str, Param]
    storage: str  # resolved `--storage`: an absolute path or a URI
    # Conditions the pins brought with them (`condition_pins`): pinned or limited keys.
    implied: tuple[Implied, ...] = ()
    # Pinned keys whose condition another pin rules out, with that condition in words.
    unused: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Implied:
    """A condition that a pinned conditional key brought with it: the space samples
    `needed_by` only when `key` takes one of `values`, so `key` is pinned (one value) or
    searched over those values only."""

    key: str
    values: tuple[Any, ...]  # in the space's form ('3-2', 0, 'concat')
    needed_by: tuple[str, ...]
    pinned: Any = None  # the typed flat value when `values` has one element

    @property
    def is_pin(self) -> bool:
        return len(self.values) == 1


def validate_options(opts: SearchOptions) -> ValidatedSearch:
    """Check everything about `opts` that needs neither the data nor Ray; raises
    `SearchOptionError` (one line, naming the option) or `SpaceError` (the space file)."""
    _check_local_cpus(opts)
    if opts.resume and (opts.overrides or opts.epochs is not None):
        given = [f"--set {k}={v}" for k, v in opts.overrides.items()]
        given += [f"--epochs {opts.epochs}"] if opts.epochs is not None else []
        raise SearchOptionError(
            f"--resume continues search {opts.name!r} with the config it was started with; "
            f"{', '.join(given)} would be ignored. Drop them, or start a new --name"
        )
    space = load_space(opts.space)
    pins = typed_pins(space, opts.overrides, opts.epochs)
    limited, implied, unused = condition_pins(space, pins)
    every_pin = {**pins, **{i.key: i.pinned for i in implied if i.is_pin}}
    pinned, unsearched = pin_space(limited, every_pin)
    _check_pins_fit(pinned, every_pin)
    pinned = _resolve_init(pinned, pins)
    storage = resolve_storage(opts.storage)
    probe_storage(storage)
    return ValidatedSearch(pinned, pins, unsearched, storage, implied, unused)


def _check_local_cpus(opts: SearchOptions) -> None:
    # A trial that needs more CPUs than the local instance has is never scheduled: Ray
    # would wait for it forever.
    if opts.address is not None:
        return
    cores = opts.num_cpus if opts.num_cpus is not None else os.cpu_count()
    if cores is not None and opts.cpus_per_trial > cores:
        where = "--num-cpus" if opts.num_cpus is not None else "this machine"
        raise SearchOptionError(
            f"--cpus-per-trial {opts.cpus_per_trial:g} exceeds the {cores} CPUs of the local "
            f"Ray instance ({where}): no trial could ever start"
        )


def _valid_keys(space: SearchSpace) -> dict[str, Any]:
    return space.base_flat()


def _unknown_key(flag: str, key: str, valid: Mapping[str, Any]) -> SearchOptionError:
    # List the keys of the section the user meant (train.* or the model's), not all.
    def section(name: str) -> str:
        return "train" if name.split(".", 1)[0] == "train" else "model"

    same = sorted(k for k in valid if section(k) == section(key))
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    kind = "model" if section(key) == "model" else f"{section(key)}.*"
    return SearchOptionError(
        f"{flag}: unknown config key {key!r}{hint}; valid {kind} keys: {', '.join(same)}"
    )


def _typed_value(key: str, value: Any, candidates: list[dict[str, Any]]) -> Any:
    """The value as the trial config types it (`to_flat` form), checked by building a whole
    trial config around it; the first candidate's error is the one reported."""
    first: ValueError | None = None
    for candidate in candidates:
        try:
            flat = TrialConfig.from_flat({**candidate, key: value}).to_flat()
        except ValueError as exc:
            first = first or exc
            continue
        typed = flat.get(key)
        if typed is None and (where := parse_branch_key(key)) is not None:
            # A per-branch value equal to the shared branch's is no override, so the flat
            # config leaves it out: the pinned value is then the shared one.
            typed = flat[f"branch.{where[1]}"]
        if isinstance(typed, float) and not math.isfinite(typed):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return typed
    assert first is not None
    raise first


def typed_pins(space: SearchSpace, overrides: Mapping[str, Any],
               epochs: int | None = None) -> dict[str, Any]:
    """Every `--set KEY=VALUE` (and `--epochs`) checked against the typed trial config and
    converted to its typed flat value; raises `SearchOptionError` naming the first bad one."""
    valid = _valid_keys(space)
    base = space.base_flat()
    samples: list[dict[str, Any]] | None = None
    pins: dict[str, Any] = {}
    requested = [(f"--set {k}={v}", str(k), v) for k, v in overrides.items()]
    if epochs is not None:
        requested.append((f"--epochs {epochs}", "train.epochs", epochs))
    for flag, key, value in requested:
        try:  # branches.<group>.<field>: the field here, the group against the data's labels
            per_branch = parse_branch_key(key) is not None
        except ValueError as exc:
            raise SearchOptionError(f"{flag}: {exc}") from None
        if key not in valid and not per_branch:
            raise _unknown_key(flag, key, valid)
        try:
            typed = _typed_value(key, value, [base])
        except ValueError:
            # Maybe it only clashes with the base preset (branch.heads vs a sampled width):
            # accept it when some sampled point takes it.
            if samples is None:
                samples = [space.trial_flat(space.sample(seed)) for seed in range(_FIT_SAMPLES)]
            try:
                typed = _typed_value(key, value, [base, *samples])
            except ValueError as exc:
                raise SearchOptionError(f"{flag}: {exc}") from None
        if key in pins and pins[key] != typed:
            raise SearchOptionError(
                f"{flag} contradicts --set {key}={overrides.get(key)}; give one value"
            )
        pins[key] = typed
    return pins


def check_branch_groups(validated: ValidatedSearch, group_names: Sequence[str]) -> None:
    """Every `--set branches.<group>.*` (and per-branch key of the space) names a group of
    the data's label map; called once the manifest is read, before Ray starts."""
    names = [n.lower() for n in group_names]
    keys = [*validated.pins, *validated.space.fixed, *validated.space.param_names]
    for key in keys:
        where = parse_branch_key(key)
        if where is not None and where[0] not in names:
            flag = f"--set {key}" if key in validated.pins else f"{validated.space.name}: {key}"
            raise SearchOptionError(
                f"{flag}: unknown label group {where[0]!r}; this data's groups are "
                f"{', '.join(names)}"
            )


def check_input_rate(validated: ValidatedSearch, data_fs: float) -> None:
    """A model whose `input.fs` is below the stored rate resamples the SOURCE_FS record in its
    front end: data prepared at another rate can only be read as it is (input.fs 500)."""
    if float(data_fs) == SOURCE_FS:
        return
    space = validated.space
    values = {space.base_flat().get("input.fs")}
    for param in space.params:
        if param.name == "input.fs":  # a range's low end is below the stored rate too
            values |= set(param.args) if param.kind == "choice" else {param.args[0]}
    for value in sorted(int(v) for v in values if v is not None and int(v) != SOURCE_FS):
        flag = "--set input.fs" if "input.fs" in validated.pins else f"{space.name}: input.fs"
        raise SearchOptionError(
            f"{flag}={value} resamples the {SOURCE_FS} Hz record, and this data is at "
            f"{data_fs:g} Hz: prepare it with `ecgtune prep --fs {SOURCE_FS}` (or search "
            f"input.fs={SOURCE_FS} only)")


def _resolve_init(space: SearchSpace, pins: Mapping[str, Any]) -> SearchSpace:
    """`branch.init` as an absolute path (trials run in their own directories), checked to
    be a readable safetensors file before anything starts."""
    path = str(space.fixed.get("branch.init") or "")
    if not path:
        return space
    from ecgtune.components.pretrained import read_trunk_weights

    absolute = Path(path).expanduser().absolute()
    flag = "--set branch.init" if "branch.init" in pins else f"{space.name}: branch.init"
    try:
        read_trunk_weights(absolute)
    except ValueError as exc:
        raise SearchOptionError(f"{flag}: {str(exc).removeprefix('branch.init: ')}") from None
    return replace(space, fixed={**space.fixed, "branch.init": str(absolute)})


def _as_choice(value: Any) -> Any:
    """A typed flat value in the form a space's `choice`/`when` lists use ('6-5-4-3')."""
    return "-".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def pin_space(space: SearchSpace, pins: Mapping[str, Any]) -> tuple[SearchSpace, dict[str, Param]]:
    """The space with `pins` fixed and taken out of the sampled parameters; returns it and the
    parameters the pins took out. A parameter conditional on a pinned key keeps being sampled
    (now unconditionally on that key) when the pinned value meets its `when`, and is dropped
    when it cannot (as is anything conditional on a dropped parameter)."""
    unsearched = {p.name: p for p in space.params if p.name in pins}
    gone = set(unsearched)
    params: list[Param] = []
    for param in space.params:
        if param.name in gone:
            continue
        when = []
        applies = True
        for key, allowed in param.when:
            if key in pins:
                applies = applies and _as_choice(pins[key]) in allowed
            elif key in gone:
                applies = False  # its condition key is never sampled, so it never held
            else:
                when.append((key, allowed))
        if applies:
            params.append(replace(param, when=tuple(when)))
        else:
            gone.add(param.name)
    kept = {p.name for p in params}
    points: list[dict[str, Any]] = []
    for point in space.points_to_evaluate:
        trimmed = {k: v for k, v in point.items() if k in kept}
        if trimmed and trimmed not in points:
            points.append(trimmed)
    pinned = replace(space, fixed={**space.fixed, **pins}, params=tuple(params),
                     points_to_evaluate=tuple(points))
    return pinned, unsearched


def condition_pins(space: SearchSpace, pins: Mapping[str, Any]
                   ) -> tuple[SearchSpace, tuple[Implied, ...], dict[str, str]]:
    """Make the condition of every pinned conditional key hold.

    The space samples a conditional key only under its `when`; a pin puts the key in every
    trial, where outside that condition it would be meaningless (`fusion.hidden` with
    independent fusion) or invalid (`branches.rhythm.depths` with one branch). So a condition
    that no pin settles is made to hold: its key is pinned when one of its values qualifies,
    searched over the qualifying values only when several do, refused when none does; and
    that key's own condition in turn. Returns the space with the limited keys, what was
    implied (`Implied`, for the start-up line) and the pinned keys whose condition another
    pin rules out (kept: the model's checks decide; the start-up line says it is unused).
    """
    params = {p.name: p for p in space.params}
    base = space.base_flat()
    limits: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
    unused: dict[str, str] = {}
    todo = [key for key in pins if key in params]
    seen: set[str] = set()
    while todo:
        key = todo.pop(0)
        if key in seen:
            continue
        seen.add(key)
        for cond, allowed in params[key].when:
            if cond in pins:
                if _as_choice(pins[cond]) not in allowed:
                    unused[key] = f"{cond} is {_choices_text(allowed)}"
                continue
            current, needed_by = limits.get(cond, (params[cond].args, ()))
            if cond not in limits and params[cond].kind != "choice":
                values = tuple(v for v in allowed if params[cond].contains(v))
            else:
                values = tuple(v for v in current if v in allowed)
            if not values:
                what = (_choices_text(current) if cond in limits or params[cond].kind == "choice"
                        else f"from {params[cond].kind} {list(current)}")
                origin = (f"--set {key}={_as_choice(pins[key])}" if key in pins
                          else f"{key} (needed by --set {limits[key][1][0]})")
                raise SearchOptionError(
                    f"{origin}: the space samples {key} "
                    f"only when {cond} is {_choices_text(allowed)}, and "
                    f"{'the other pins leave' if cond in limits else 'it samples'} {cond} "
                    f"{what}; pin {cond} too"
                )
            limits[cond] = (values, (*needed_by, key))
            todo.append(cond)  # the condition's own condition must hold as well
    implied = []
    for cond, (values, needed_by) in limits.items():
        typed = None
        if len(values) == 1:
            try:
                typed = _typed_value(cond, values[0], [base])
            except ValueError as exc:
                raise SearchOptionError(f"{cond}={values[0]} (implied by --set "
                                        f"{needed_by[0]}): {exc}") from None
        implied.append(Implied(cond, values, needed_by, typed))
    limited = tuple(
        replace(p, kind="choice", args=limits[p.name][0])
        if p.name in limits and len(limits[p.name][0]) > 1 else p
        for p in space.params
    )
    points = tuple(
        point for point in space.points_to_evaluate
        if all(point[k] in limits[k][0] for k in limits if k in point)
    )
    return replace(space, params=limited, points_to_evaluate=points), tuple(implied), unused


def _choices_text(values: Sequence[Any]) -> str:
    text = [str(_as_choice(v)) for v in values]
    return text[0] if len(text) == 1 else f"one of {', '.join(text)}"


def _check_pins_fit(space: SearchSpace, pins: Mapping[str, Any]) -> None:
    """Each `--set` is fine alone; together they must still build some trial config."""
    if len(pins) < 2:
        return
    first: ValueError | None = None
    for seed in range(-1, _FIT_SAMPLES):
        flat = space.base_flat() if seed < 0 else space.trial_flat(space.sample(seed))
        try:
            TrialConfig.from_flat(flat)
            return
        except ValueError as exc:
            first = first or exc
    given = ", ".join(f"{k}={_as_choice(v)}" for k, v in pins.items())
    raise SearchOptionError(f"--set values {given} do not fit together: {first}")


def probe_storage(storage: str) -> None:
    """Fail now, not after Ray has started, when `--storage` cannot take the experiment."""
    if "://" not in storage or storage.startswith("file://"):
        _probe_local(storage, Path(storage.removeprefix("file://")))
    else:
        _probe_uri(storage)


def _probe_local(storage: str, path: Path) -> None:
    # The folder may not exist yet (Ray creates it): probe its nearest existing ancestor,
    # which is where the folders would be created. Nothing is left behind.
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SearchOptionError(f"--storage {storage}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ecgtune-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SearchOptionError(
            f"--storage {storage}: cannot write in {existing} ({exc.strerror or exc}); "
            "choose a writable folder"
        ) from None


def _probe_uri(storage: str) -> None:
    import pyarrow
    import pyarrow.fs as pafs

    # The same resolution Ray applies to a storage URI (pyarrow.fs.FileSystem.from_uri); a
    # probe object written and deleted checks reachability and write access at once.
    probe = f".ecgtune-write-probe-{uuid.uuid4().hex}"
    try:
        fs, path = pafs.FileSystem.from_uri(storage)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            raise SearchOptionError(f"--storage {storage}: it is a file, not a folder")
        target = f"{path.rstrip('/')}/{probe}"
        with fs.open_output_stream(target) as out:
            out.write(b"")
        fs.delete_file(target)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise SearchOptionError(
            f"--storage {storage}: not reachable or not writable ({detail})"
        ) from None
