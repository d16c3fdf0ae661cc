"""The bundle contract: what bundle.json and each member's weights file must hold, beyond
their checksums.

A checksum says that a file is the one manifest.json lists, not that its content is usable:
an edited and re-stamped bundle, or a bug in code that writes bundles, verifies as well as a
good one. Unchecked, a threshold of 2.0 or NaN turns a label off for every record, -0.1 turns
it on, and label names out of the label map's order report one label's probability under
another's name. `check_bundle` holds both files to the one schema stated in `RULES`: it runs
on what `load_bundle` reads and on what `save_bundle` is about to rename into place. Every
refusal is a `BundleFormatError`, one line naming the file and the field::

    bundle file bundle.json: thresholds[3] = 2.0 (SB) is outside [0, 1]

Member identity: the safetensors metadata of each member's weights holds one key, ``ecgtune``
(safetensors writes its metadata map in hash order, so several keys would make the bytes and
the checksum differ between builds), whose JSON value names the bundle format, the member and
``config_sha256``: the sha256 of the canonical JSON (sorted keys, no spaces) of everything in
the member's bundle.json entry that says how its weights are built and fed (`IDENTITY_KEYS`).
A weights file without it is refused: nothing then ties the weights to their entry.

A registered label map (`data_prep.LABEL_MAPS`) fixes the label names, their order and their
groups; a bundle whose ``labels.map`` is ``manifest`` or another name is held to internal
consistency (unique names, groups that partition them).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ecgtune.ensembles.errors import BundleFormatError

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "IDENTITY_KEYS",
    "LABEL_CALIBRATORS",
    "RULES",
    "Rule",
    "check_bundle",
    "check_bundle_json",
    "check_member_file",
    "member_config_sha256",
    "member_metadata",
    "rules_table",
]

BUNDLE_FORMAT = "ecgtune.bundle/1"
BUNDLE_FILE = "bundle.json"
METADATA_KEY = "ecgtune"  # the one key of a member's safetensors metadata
# Per-label calibrators `ensembles.build.calibration` can rebuild (`per_label` holds them).
LABEL_CALIBRATORS = ("identity", "temperature", "platt", "isotonic")
NORMALIZATIONS = ("dataset", "record")  # `inference.MemberSpec`
# What a member's config_sha256 covers: how its weights are built and fed.
IDENTITY_KEYS = ("config", "num_labels", "label_groups", "crop_len", "normalization",
                 "group_names")
_SHOW_MAX = 60


@dataclass(frozen=True)
class Rule:
    """One row of the contract: a field, what it must hold, and an example refusal."""

    field: str
    rule: str
    refusal: str


RULES: tuple[Rule, ...] = (
    Rule("format", f'"{BUNDLE_FORMAT}"',
         f'format = "ecgtune.bundle/0", expected "{BUNDLE_FORMAT}"'),
    Rule("labels.map", "a non-empty string; a registered map (seed20, seed20-rbbb) fixes the "
         "names and groups below",
         "labels.map = 3 is not a string"),
    Rule("labels.names", "unique non-empty strings; for a registered map exactly its labels, in "
         "its order",
         'labels.names[0] = "SR": label map seed20 has "AFIB" there (names out of the label '
         "map's order)"),
    Rule("labels.groups", "objects {name, labels}; for a registered map exactly its groups, in "
         "order; otherwise they partition labels.names",
         'labels.groups[1].labels[0] = "XX" is not in labels.names'),
    Rule("thresholds", "one per label, each a finite number in [0, 1]",
         "thresholds[3] = 2.0 (SB) is outside [0, 1]"),
    Rule("input.preprocessing.fs", "an integer > 0 (Hz)",
         "input.preprocessing.fs = 0 is not > 0"),
    Rule("input.preprocessing.seconds", "a finite number > 0",
         "input.preprocessing.seconds = NaN is not finite"),
    Rule("input.preprocessing.n_samples", "an integer equal to round(fs x seconds)",
         "input.preprocessing: n_samples = 5000 differs from fs x seconds = 250 x 10 = 2500"),
    Rule("input.preprocessing.gain", "a finite number > 0 (stored units per mV)",
         "input.preprocessing.gain = -1000 is not > 0"),
    Rule("input.preprocessing.units", '"mV"',
         'input.preprocessing.units = "uV", expected "mV"'),
    Rule("input.preprocessing.leads", "the 12 standard leads, in order I, II, III, aVR, aVL, "
         "aVF, V1-V6",
         'input.preprocessing.leads = ["V6", ...] is not I II III aVR aVL aVF V1 V2 V3 V4 V5 '
         "V6"),
    Rule("input.preprocessing.dtype", '"int16" (when present)',
         'input.preprocessing.dtype = "float32", expected "int16"'),
    Rule("input.normalization.mean", "12 finite numbers (mV)",
         "input.normalization.mean[4] = Infinity is not finite"),
    Rule("input.normalization.std", "12 finite numbers > 0 (mV)",
         "input.normalization.std[0] = 0 is not > 0"),
    Rule("inference.n_windows", "an integer >= 1",
         "inference.n_windows = 0 is below 1"),
    Rule("inference.referral", "absent (never refer), or {rate: a number in [0, 1), "
         "threshold: a finite number}: refer a record whose uncertainty is >= threshold",
         "inference.referral.rate = 1.5 is outside [0, 1)"),
    Rule("members", "a non-empty list", "members is empty: an ensemble needs a member"),
    Rule("members[i].name", "a non-empty string, unique",
         'members[1].name = "m0" repeats members[0].name'),
    Rule("members[i].file", "a file listed in manifest.json",
         "members[0].file = \"members/x.safetensors\" is not listed in manifest.json"),
    Rule("members[i].weight", "a finite number > 0 (so the weights sum to more than 0)",
         "members[0].weight = NaN is not finite"),
    Rule("members[i].num_labels", "the number of labels",
         "members[0].num_labels = 19, the bundle has 20 labels"),
    Rule("members[i].label_groups", "lists of label indices that partition 0 .. labels - 1",
         "members[0].label_groups = [[0, 1], [1]] does not partition the label indices 0..19"),
    Rule("members[i].crop_len", "an integer in 1 .. input.preprocessing.n_samples",
         "members[0].crop_len = 6000 is above 5000"),
    Rule("members[i].normalization", '"dataset" or "record"',
         'members[0].normalization = "zscore" is not one of "dataset", "record"'),
    Rule("members[i].config", "a model config `components.ModelConfig` accepts (with "
         "`input`: the member's rate and leads, absent = 500 Hz, all 12; `branch.kind`, "
         "absent = resu)",
         "members[0].config is not a model config: ValueError: config keys [...] do not "
         "match ..."),
    Rule("calibration", '{"method": "per_label", "params": {methods, cv, seed, calibrators}}',
         'calibration.method = "isotonic", expected "per_label"'),
    Rule("calibration.params.calibrators", "one per label, each identity, temperature, platt "
         "or isotonic",
         'calibration.params.calibrators[2].method = "beta" (GSVT) is not one of identity, '
         "temperature, platt, isotonic"),
    Rule("calibration.params.calibrators[i].params",
         "temperature: temperature (and t_min, t_max) finite > 0; platt: a finite >= 0, b "
         "finite; isotonic: x, y equally long, finite, x not decreasing, y in [0, 1]",
         "calibration.params.calibrators[1].params.temperature = 0 (CAVB) is not > 0"),
    Rule("member weights file metadata",
         'one key "ecgtune": {"format", "member": members[i].name, "config_sha256": sha256 '
         f"of the entry's {', '.join(IDENTITY_KEYS)}}}",
         "bundle file members/m0.safetensors: metadata member = \"m1\", but bundle.json "
         'members[0].name = "m0"'),
)


def rules_table() -> str:
    """`RULES` as a Markdown table (the README's)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| field | must be | refused with |", "|---|---|---|"]
    rows += [f"| `{r.field}` | {cell(r.rule)} | `{cell(r.refusal)}` |" for r in RULES]
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Helpers: each names the field it checks in the refusal


def _fail(field: str, detail: str, file: str = BUNDLE_FILE) -> NoReturn:
    raise BundleFormatError(f"bundle file {file}: {field} {detail}")


def _show(value: Any) -> str:
    """A value as JSON (NaN, Infinity as Python's json writes them), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _key(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        _fail(path, "is missing")
    return obj[key]


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, f"= {_show(value)} is not an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, f"= {_show(value)} is not a list")
    return value


def _string(value: Any, path: str, note: str = "") -> str:
    if not isinstance(value, str):
        _fail(path, f"= {_show(value)}{note} is not a string")
    if not value:
        _fail(path, f"is empty{note}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any, path: str, note: str = "", *, lo: float | None = None,
            hi: float | None = None, positive: bool = False) -> float:
    """A finite number; ``lo``/``hi``: a closed range; ``positive``: > 0."""
    shown = f"= {_show(value)}{note}"
    if not _is_number(value):
        _fail(path, f"{shown} is not a number")
    if not math.isfinite(value):
        _fail(path, f"{shown} is not finite")
    if positive and not value > 0:
        _fail(path, f"{shown} is not > 0")
    if lo is not None and hi is not None and not lo <= value <= hi:
        _fail(path, f"{shown} is outside [{lo:g}, {hi:g}]")
    if lo is not None and hi is None and value < lo:
        _fail(path, f"{shown} is below {lo:g}")
    return float(value)


def _integer(value: Any, path: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(path, f"= {_show(value)} is not an integer")
    if lo is not None and value < lo:
        _fail(path, f"= {value} is below {lo}")
    if hi is not None and value > hi:
        _fail(path, f"= {value} is above {hi}")
    return value


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# bundle.json


def check_bundle_json(meta: Any) -> None:
    """Hold a parsed bundle.json to `RULES`; the first broken rule raises `BundleFormatError`
    naming its field."""
    if not isinstance(meta, dict):
        _fail("content", f"is a JSON {type(meta).__name__}, not an object")
    found = meta.get("format")
    if found != BUNDLE_FORMAT:
        _fail("format", f"= {_show(found)}, expected {_show(BUNDLE_FORMAT)}")
    names = _labels(meta)
    thresholds = _list(_key(meta, "thresholds", "thresholds"), "thresholds")
    if len(thresholds) != len(names):
        _fail("thresholds", f"has {len(thresholds)} entries, one per label ({len(names)}) "
              "expected")
    for i, t in enumerate(thresholds):
        _number(t, f"thresholds[{i}]", f" ({names[i]})", lo=0.0, hi=1.0)
    n_samples = _input(meta)
    inference = _object(_key(meta, "inference", "inference"), "inference")
    _integer(_key(inference, "n_windows", "inference.n_windows"), "inference.n_windows", lo=1)
    if "referral" in inference:
        _referral(inference["referral"])
    _members(meta, len(names), n_samples)
    _calibration(meta, names)


def _referral(value: Any) -> None:
    path = "inference.referral"
    referral = _object(value, path)
    rate = _number(_key(referral, "rate", f"{path}.rate"), f"{path}.rate", lo=0.0, hi=1.0)
    if rate >= 1.0:
        _fail(f"{path}.rate", f"= {_show(rate)} is outside [0, 1)")
    _number(_key(referral, "threshold", f"{path}.threshold"), f"{path}.threshold")


def _labels(meta: dict[str, Any]) -> list[str]:
    from ecgtune.data_prep import LABEL_MAPS, get_label_map

    labels = _object(_key(meta, "labels", "labels"), "labels")
    map_name = _string(_key(labels, "map", "labels.map"), "labels.map")
    names = _list(_key(labels, "names", "labels.names"), "labels.names")
    if not names:
        _fail("labels.names", "is empty")
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        _string(name, f"labels.names[{i}]")
        if name in first:
            _fail(f"labels.names[{i}]", f"= {_show(name)} repeats labels.names[{first[name]}]")
        first[name] = i
    groups: list[tuple[str, list[str]]] = []
    for g, group in enumerate(_list(_key(labels, "groups", "labels.groups"), "labels.groups")):
        path = f"labels.groups[{g}]"
        _object(group, path)
        gname = _string(_key(group, "name", f"{path}.name"), f"{path}.name")
        members = _list(_key(group, "labels", f"{path}.labels"), f"{path}.labels")
        for j, name in enumerate(members):
            _string(name, f"{path}.labels[{j}]")
        groups.append((gname, list(members)))
    if map_name in LABEL_MAPS:
        _registered_labels(map_name, names, groups, get_label_map(map_name))
    else:
        _partition(names, groups)
    return list(names)


def _registered_labels(map_name: str, names: list[str], groups: list[tuple[str, list[str]]],
                       label_map: Any) -> None:
    """The names and groups of the registered map, in its order: the members' outputs are
    indexed in that order, so any other order reports a probability under another name."""
    want = list(label_map.names)
    permuted = sorted(names) == sorted(want)
    for i, (got, expected) in enumerate(zip(names, want, strict=False)):
        if got != expected:
            why = " (names out of the label map's order)" if permuted else ""
            _fail(f"labels.names[{i}]", f"= {_show(got)}: label map {map_name} has "
                  f"{_show(expected)} there{why}")
    if len(names) != len(want):
        _fail("labels.names", f"has {len(names)} labels, label map {map_name} {len(want)}")
    want_groups = [(g, [want[i] for i in idx])
                   for g, idx in zip(label_map.group_names, label_map.group_indices(),
                                     strict=True)]
    for g, ((gname, members), (wname, wmembers)) in enumerate(
            zip(groups, want_groups, strict=False)):
        if gname != wname:
            _fail(f"labels.groups[{g}].name", f"= {_show(gname)}: label map {map_name} has "
                  f"{_show(wname)} there")
        if members != wmembers:
            _fail(f"labels.groups[{g}].labels", f"= {_show(members)}: label map {map_name} "
                  f"has {_show(wmembers)}")
    if len(groups) != len(want_groups):
        _fail("labels.groups", f"has {len(groups)} groups, label map {map_name} "
              f"{len(want_groups)}")


def _partition(names: list[str], groups: list[tuple[str, list[str]]]) -> None:
    known = set(names)
    owner: dict[str, int] = {}
    group_of: dict[str, int] = {}
    for g, (gname, members) in enumerate(groups):
        if gname in group_of:
            _fail(f"labels.groups[{g}].name",
                  f"= {_show(gname)} repeats labels.groups[{group_of[gname]}].name")
        group_of[gname] = g
        for j, name in enumerate(members):
            path = f"labels.groups[{g}].labels[{j}]"
            if name not in known:
                _fail(path, f"= {_show(name)} is not in labels.names")
            if name in owner:
                _fail(path, f"= {_show(name)} is also in labels.groups[{owner[name]}]")
            owner[name] = g
    left = [n for n in names if n not in owner]
    if left:
        _fail("labels.groups", f"leave out {', '.join(left)}: the groups must partition "
              "labels.names")


def _input(meta: dict[str, Any]) -> int:
    """The input block (`input_spec.InputSpec.to_dict`); returns n_samples."""
    from ecgtune.data_prep import STANDARD_LEADS

    block = _object(_key(meta, "input", "input"), "input")
    p = "input.preprocessing"
    prep = _object(_key(block, "preprocessing", p), p)
    fs = _integer(_key(prep, "fs", f"{p}.fs"), f"{p}.fs")
    if fs <= 0:
        _fail(f"{p}.fs", f"= {fs} is not > 0")
    seconds = _number(_key(prep, "seconds", f"{p}.seconds"), f"{p}.seconds", positive=True)
    n_samples = _integer(_key(prep, "n_samples", f"{p}.n_samples"), f"{p}.n_samples", lo=1)
    if n_samples != round(fs * seconds):
        _fail(f"{p}:", f"n_samples = {n_samples} differs from fs x seconds = {fs} x {seconds:g} = "
              f"{round(fs * seconds)}")
    _number(_key(prep, "gain", f"{p}.gain"), f"{p}.gain", positive=True)
    units = _key(prep, "units", f"{p}.units")
    if units != "mV":
        _fail(f"{p}.units", f"= {_show(units)}, expected \"mV\"")
    leads = _key(prep, "leads", f"{p}.leads")
    if leads != list(STANDARD_LEADS):
        _fail(f"{p}.leads", f"= {_show(leads)} is not {' '.join(STANDARD_LEADS)}")
    if "dtype" in prep and prep["dtype"] != "int16":
        _fail(f"{p}.dtype", f"= {_show(prep['dtype'])}, expected \"int16\"")
    n = "input.normalization"
    norm = _object(_key(block, "normalization", n), n)
    if "units" in norm and norm["units"] != "mV":
        _fail(f"{n}.units", f"= {_show(norm['units'])}, expected \"mV\"")
    for key in ("mean", "std"):
        values = _list(_key(norm, key, f"{n}.{key}"), f"{n}.{key}")
        if len(values) != len(STANDARD_LEADS):
            _fail(f"{n}.{key}", f"has {len(values)} entries, one per lead "
                  f"({len(STANDARD_LEADS)}) expected")
        for i, v in enumerate(values):
            _number(v, f"{n}.{key}[{i}]", positive=key == "std")
    return n_samples


def _members(meta: dict[str, Any], n_labels: int, n_samples: int) -> None:
    from ecgtune.components import ModelConfig

    members = _list(_key(meta, "members", "members"), "members")
    if not members:
        _fail("members", "is empty: an ensemble needs a member")
    first: dict[str, int] = {}
    for i, entry in enumerate(members):
        p = f"members[{i}]"
        _object(entry, p)
        name = _string(_key(entry, "name", f"{p}.name"), f"{p}.name")
        if name in first:
            _fail(f"{p}.name", f"= {_show(name)} repeats members[{first[name]}].name")
        first[name] = i
        _string(_key(entry, "file", f"{p}.file"), f"{p}.file")
        _number(_key(entry, "weight", f"{p}.weight"), f"{p}.weight", positive=True)
        num = _integer(_key(entry, "num_labels", f"{p}.num_labels"), f"{p}.num_labels")
        if num != n_labels:
            _fail(f"{p}.num_labels", f"= {num}, the bundle has {n_labels} labels")
        groups = _list(_key(entry, "label_groups", f"{p}.label_groups"), f"{p}.label_groups")
        flat = [k for g in groups if isinstance(g, list) for k in g]
        if (not all(isinstance(g, list) for g in groups)
                or not all(isinstance(k, int) and not isinstance(k, bool) for k in flat)
                or sorted(flat) != list(range(n_labels))):
            _fail(f"{p}.label_groups", f"= {_show(groups)} does not partition the label "
                  f"indices 0..{n_labels - 1}")
        _integer(_key(entry, "crop_len", f"{p}.crop_len"), f"{p}.crop_len", lo=1, hi=n_samples)
        mode = _key(entry, "normalization", f"{p}.normalization")
        if mode not in NORMALIZATIONS:
            _fail(f"{p}.normalization", f"= {_show(mode)} is not one of "
                  f"{', '.join(_show(m) for m in NORMALIZATIONS)}")
        if "group_names" in entry:
            for j, g in enumerate(_list(entry["group_names"], f"{p}.group_names")):
                _string(g, f"{p}.group_names[{j}]")
        config = _key(entry, "config", f"{p}.config")
        try:
            ModelConfig.from_dict(config)
        except Exception as exc:  # ValueError, KeyError, TypeError: any refusal of the builder
            _fail(f"{p}.config", f"is not a model config: {_one_line(exc)}")


def _calibration(meta: dict[str, Any], names: list[str]) -> None:
    cal = _object(_key(meta, "calibration", "calibration"), "calibration")
    method = _key(cal, "method", "calibration.method")
    if method != "per_label":
        _fail("calibration.method", f"= {_show(method)}, expected \"per_label\"")
    p = "calibration.params"
    params = _object(_key(cal, "params", p), p)
    methods = _list(_key(params, "methods", f"{p}.methods"), f"{p}.methods")
    if not methods:
        _fail(f"{p}.methods", "is empty")
    for j, m in enumerate(methods):
        if m not in LABEL_CALIBRATORS:
            _fail(f"{p}.methods[{j}]", f"= {_show(m)} is not one of "
                  f"{', '.join(LABEL_CALIBRATORS)}")
    _integer(_key(params, "cv", f"{p}.cv"), f"{p}.cv", lo=2)
    _integer(_key(params, "seed", f"{p}.seed"), f"{p}.seed")
    calibrators = _list(_key(params, "calibrators", f"{p}.calibrators"), f"{p}.calibrators")
    if len(calibrators) != len(names):
        _fail(f"{p}.calibrators", f"has {len(calibrators)} entries, one per label "
              f"({len(names)}) expected")
    for c, entry in enumerate(calibrators):
        _label_calibrator(entry, f"{p}.calibrators[{c}]", f" ({names[c]})")
    if params.get("cv_log_loss") is not None:  # diagnostics: null where not cross-fitted
        rows = _list(params["cv_log_loss"], f"{p}.cv_log_loss")
        for r, row in enumerate(rows):
            for j, v in enumerate(_list(row, f"{p}.cv_log_loss[{r}]")):
                if v is not None:
                    _number(v, f"{p}.cv_log_loss[{r}][{j}]")


def _label_calibrator(entry: Any, path: str, note: str) -> None:
    _object(entry, path)
    method = _key(entry, "method", f"{path}.method")
    if method not in LABEL_CALIBRATORS:
        _fail(f"{path}.method", f"= {_show(method)}{note} is not one of "
              f"{', '.join(LABEL_CALIBRATORS)}")
    p = f"{path}.params"
    params = _object(_key(entry, "params", p), p)
    if method == "temperature":
        _number(_key(params, "temperature", f"{p}.temperature"), f"{p}.temperature", note,
                positive=True)
        for key in ("t_min", "t_max"):
            if key in params:
                _number(params[key], f"{p}.{key}", note, positive=True)
    elif method == "platt":
        _number(_key(params, "a", f"{p}.a"), f"{p}.a", note, lo=0.0)
        _number(_key(params, "b", f"{p}.b"), f"{p}.b", note)
    elif method == "isotonic":
        x = _list(_key(params, "x", f"{p}.x"), f"{p}.x")
        y = _list(_key(params, "y", f"{p}.y"), f"{p}.y")
        if not x or len(x) != len(y):
            _fail(f"{p}{note}:", f"x and y have {len(x)} and {len(y)} knots; equally many, "
                  "at least one, expected")
        for i, v in enumerate(x):
            _number(v, f"{p}.x[{i}]", note)
            if i and v < x[i - 1]:
                _fail(f"{p}.x[{i}]", f"= {_show(v)}{note} is below x[{i - 1}] = "
                      f"{_show(x[i - 1])}: knots must not decrease")
        for i, v in enumerate(y):
            _number(v, f"{p}.y[{i}]", note, lo=0.0, hi=1.0)


# ---------------------------------------------------------------------------------------------
# Member weights files


def member_config_sha256(entry: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a member entry's `IDENTITY_KEYS`."""
    body = {k: entry[k] for k in IDENTITY_KEYS if k in entry}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def member_metadata(entry: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata of a member's weights file (one key, see the module doc);
    ``entry`` is its bundle.json entry as written (JSON values)."""
    info = {"format": BUNDLE_FORMAT, "member": entry["name"],
            "config_sha256": member_config_sha256(entry)}
    return {METADATA_KEY: json.dumps(info, sort_keys=True)}


def _safetensors_metadata(data: bytes, file: str) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file: its first 8 bytes are the little-endian
    length of a JSON header that holds it."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        if size > len(data) - 8:
            raise ValueError(f"header length {size} exceeds the file")
        header = json.loads(data[8 : 8 + size])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (struct.error, ValueError) as exc:
        _fail("content", f"is not a valid safetensors file ({_one_line(exc)})", file)
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def check_member_file(index: int, entry: Mapping[str, Any], data: bytes, file: str) -> None:
    """The weights file of ``members[index]`` carries that member's name and config_sha256."""
    raw = _safetensors_metadata(data, file).get(METADATA_KEY)
    if raw is None:
        _fail("metadata", f"has no {METADATA_KEY!r} key (member name and config_sha256): "
              "nothing ties these weights to bundle.json; rebuild the bundle with "
              "`ecgtune ensemble`", file)
    try:
        info = json.loads(raw)
    except (TypeError, ValueError):
        info = None
    if not isinstance(info, dict):
        _fail(f"metadata {METADATA_KEY!r}", f"= {_show(raw)} is not a JSON object", file)
    if info.get("format") != BUNDLE_FORMAT:
        _fail("metadata format", f"= {_show(info.get('format'))}, expected "
              f"{_show(BUNDLE_FORMAT)}", file)
    if info.get("member") != entry["name"]:
        _fail("metadata member", f"= {_show(info.get('member'))}, but bundle.json "
              f"members[{index}].name = {_show(entry['name'])}", file)
    stored = info.get("config_sha256")
    if not isinstance(stored, str):
        _fail("metadata config_sha256", "is missing: nothing ties these weights to "
              f"bundle.json members[{index}]; rebuild the bundle with `ecgtune ensemble`", file)
    expected = member_config_sha256(entry)
    if stored != expected:
        _fail("metadata config_sha256", f"= {stored[:12]}... does not match bundle.json "
              f"members[{index}] ({expected[:12]}... over its {', '.join(IDENTITY_KEYS)}): "
              "these weights were written for another model", file)


def check_bundle(meta: Any, files: Mapping[str, bytes]) -> None:
    """The whole contract: ``meta`` (the parsed bundle.json) and, for each member, the
    weights file it names among ``files`` (relative path -> verified bytes)."""
    check_bundle_json(meta)
    for i, entry in enumerate(meta["members"]):
        rel = entry["file"]
        if rel not in files:
            _fail(f"members[{i}].file", f"= {_show(rel)} is not listed in manifest.json")
        check_member_file(i, entry, files[rel], rel)
