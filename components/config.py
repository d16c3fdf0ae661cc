"""The typed, frozen description of a model, with JSON and flat-dict round trips.

The flat form (`to_flat` / `from_flat`) is what search spaces, Optuna and MLflow params use:
dotted keys such as `branch.depths`. `from_flat` also accepts the string forms that an MLflow
param or a YAML file may hand back (`"6-5-4-3"`, `"[6, 5, 4, 3]"`, `"true"`) and rejects
everything else with a `ValueError` that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = [
    "BRANCH_FIELDS",
    "BRANCH_KINDS",
    "FLAT_KEYS",
    "FUSION_NAMES",
    "LAYOUTS",
    "LEAD_NAMES",
    "LEAD_SETS",
    "MIN_LENGTH",
    "NUM_LEADS",
    "SOURCE_FS",
    "BranchConfig",
    "BranchOverride",
    "InputConfig",
    "ModelConfig",
    "StemConfig",
    "parse_branch_key",
    "split_label_groups",
]

NUM_LEADS = 12
# How the convolutional layers compute (`model.set_layout`): `ncl` on (B, C, L) tensors
# (nn.Conv1d's own layout), `channels_last` as height-1 2-D layers on (B, C, 1, L)
# channels-last tensors (the layout cuDNN's kernels compute in). Not part of a config: the
# same model and weights in either.
LAYOUTS = ("ncl", "channels_last")
# Shortest input every valid config must accept, in samples at SOURCE_FS (the seed uses 4,096;
# crops may be shorter).
MIN_LENGTH = 1024
# What every model reads: 12 leads at the rate `prep` stores (500 Hz). A model's input
# section (`input.fs`, `input.leads`) selects and resamples inside the model, so that every
# path that feeds a model (training, inference, ONNX) hands it the same stored signal.
SOURCE_FS = 500
LEAD_NAMES: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"
)
# Named lead subsets a model may read (`input.leads`), in stored lead order.
LEAD_SETS: dict[str, tuple[str, ...]] = {
    "all12": LEAD_NAMES,
    "limb6": LEAD_NAMES[:6],
    "V1-V6": LEAD_NAMES[6:],
    "I-II": ("I", "II"),
    "II": ("II",),
    "I": ("I",),
}
# The lowest input rate: below it a 10 s record keeps too few samples for any trunk.
MIN_INPUT_FS = 50
# The trunk families a branch may be (`branch.kind`).
BRANCH_KINDS = ("resu", "ssm")
# The fusion strategies a config may name, as data, so that a config never imports torch:
# components/fusion.py registers one class under each (a test checks that both agree), and
# `register_fusion` adds the name of a new one here.
FUSION_NAMES: list[str] = ["independent", "concat", "attention", "late"]


def _fail(key: str, message: str) -> NoReturn:
    raise ValueError(f"{key}: {message}")


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"expected an int, got {value!r}")
    if value < minimum:
        _fail(key, f"must be >= {minimum}, got {value}")


def _check_odd(key: str, value: int) -> None:
    # Odd kernels with padding k // 2 keep lengths exact (same conv, exact 2x up/down).
    if value % 2 == 0:
        _fail(key, f"must be odd, got {value}")


def _check_float(key: str, value: Any, low: float, high: float, high_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, f"expected a finite number, got {value!r}")
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        _fail(key, f"must be in [{low}, {high}{bracket}, got {value}")
    return float(value)


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, f"expected a bool, got {value!r}")


def _check_int_tuple(key: str, value: Any, minimum: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        _fail(key, f"expected a sequence of ints, got {value!r}")
    items = tuple(value)
    if not items:
        _fail(key, "must not be empty")
    for item in items:
        _check_int(key, item, minimum)
    return items


@dataclass(frozen=True)
class StemConfig:
    """First conv of the network: 12 leads -> `channels`, stride `stride`."""

    channels: int = 256
    kernel: int = 15
    stride: int = 2
    shared: bool = True  # one stem for all branches, or one per branch

    def __post_init__(self) -> None:
        _check_int("stem.channels", self.channels, 1)
        _check_int("stem.kernel", self.kernel, 1)
        _check_odd("stem.kernel", self.kernel)
        _check_int("stem.stride", self.stride, 1)
        _check_bool("stem.shared", self.shared)


@dataclass(frozen=True)
class InputConfig:
    """What the model reads of the stored 12-lead, SOURCE_FS record: the leads `leads` names,
    resampled to `fs` Hz (an integer divisor of SOURCE_FS: the model's front end is one
    polyphase decimation filter, the one `prep` uses)."""

    fs: int = SOURCE_FS
    leads: str = "all12"

    def __post_init__(self) -> None:
        _check_int("input.fs", self.fs, MIN_INPUT_FS)
        if SOURCE_FS % self.fs:
            rates = [r for r in range(MIN_INPUT_FS, SOURCE_FS + 1) if SOURCE_FS % r == 0]
            _fail("input.fs", f"must divide the stored rate {SOURCE_FS} Hz "
                              f"({', '.join(map(str, rates))}), got {self.fs}")
        if not isinstance(self.leads, str) or self.leads not in LEAD_SETS:
            _fail("input.leads",
                  f"unknown lead set {self.leads!r}; valid: {', '.join(LEAD_SETS)}")

    @property
    def decimation(self) -> int:
        """Stored samples per input sample."""
        return SOURCE_FS // self.fs

    @property
    def lead_indices(self) -> tuple[int, ...]:
        """Positions of the selected leads in the stored record."""
        return tuple(LEAD_NAMES.index(name) for name in LEAD_SETS[self.leads])

    @property
    def n_leads(self) -> int:
        return len(LEAD_SETS[self.leads])

    @property
    def is_source(self) -> bool:
        """True when the model reads the stored record as it is (no front end)."""
        return self.fs == SOURCE_FS and self.leads == "all12"

    def length(self, n: int) -> int:
        """Input samples for `n` stored samples (the decimation keeps ceil(n / factor))."""
        return -(-n // self.decimation)

    def describe(self) -> str:
        return f"{self.fs} Hz, {self.leads}"


@dataclass(frozen=True)
class BranchConfig:
    """One trunk: a ResU-Dense trunk (`kind` resu: U-blocks, dense blocks, optional
    attention) or a stack of diagonal state-space layers (`kind` ssm: `ssm_layers` layers of
    `width` channels and `ssm_state` states each), pooled to an `out_channels` embedding."""

    depths: tuple[int, ...] = (6, 5, 4, 3)  # one residual U-block per entry (its U-depth)
    width: int = 256  # U-block channels
    mid: int = 64  # U-block encoder/decoder channels
    kernel: int = 9  # U-block conv kernel
    dense_layers: tuple[int, ...] = (16, 16)  # one dense block per entry (its layer count)
    growth: int = 12
    bottleneck: int = 4  # dense-layer 1x1 conv width = bottleneck * growth
    compression: float = 0.5  # transitions between dense blocks keep floor(c * compression)
    out_channels: int = 256  # embedding size D (the last transition's output)
    attention: bool = True
    heads: int = 8
    dropout: float = 0.5  # before attention / pooling (resu); inside each layer (ssm)
    kind: str = "resu"
    ssm_state: int = 64  # state size N of each channel (N / 2 complex-conjugate pairs)
    ssm_layers: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in BRANCH_KINDS:
            _fail("branch.kind", f"unknown kind {self.kind!r}; valid: {', '.join(BRANCH_KINDS)}")
        _check_int("branch.ssm_state", self.ssm_state, 2)
        if self.ssm_state % 2:
            _fail("branch.ssm_state", f"must be even (conjugate pairs), got {self.ssm_state}")
        _check_int("branch.ssm_layers", self.ssm_layers, 1)
        object.__setattr__(self, "depths", _check_int_tuple("branch.depths", self.depths, 1))
        object.__setattr__(
            self, "dense_layers", _check_int_tuple("branch.dense_layers", self.dense_layers, 1)
        )
        for name in ("width", "mid", "growth", "bottleneck", "out_channels", "heads"):
            _check_int(f"branch.{name}", getattr(self, name), 1)
        _check_int("branch.kernel", self.kernel, 1)
        _check_odd("branch.kernel", self.kernel)
        compression = _check_float("branch.compression", self.compression, 0.0, 1.0, True)
        if compression == 0.0:
            _fail("branch.compression", "must be > 0")
        object.__setattr__(self, "compression", compression)
        object.__setattr__(
            self, "dropout", _check_float("branch.dropout", self.dropout, 0.0, 1.0, False)
        )
        _check_bool("branch.attention", self.attention)
        if self.kind != "resu":
            return  # the checks below are about the ResU-Dense layout
        if self.attention and self.out_channels % self.heads:
            _fail(
                "branch.heads",
                f"branch.out_channels={self.out_channels} (the attention width) is not "
                f"divisible by branch.heads={self.heads}",
            )
        for i, channels in enumerate(self.dense_channels()[1:-1]):
            if channels < 1:
                _fail("branch.compression", f"leaves transition {i} with 0 channels")

    def dense_channels(self) -> list[int]:
        """Channels entering each dense block, then the embedding size."""
        channels = [self.width]
        for i, layers in enumerate(self.dense_layers):
            grown = channels[-1] + layers * self.growth
            last = i == len(self.dense_layers) - 1
            channels.append(self.out_channels if last else int(grown * self.compression))
        return channels


BRANCH_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BranchConfig))
# Fields whose default configs leave out of their JSON, so that configs written before the
# fields existed keep their bytes and checksums (and still load: absent means default).
_NEW_BRANCH_FIELDS = ("kind", "ssm_state", "ssm_layers")
# A label group's name as it appears in `branches.<group>.<field>` (the label map's, lower-cased).
_GROUP_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class BranchOverride:
    """The `BranchConfig` fields one label group's branch sets for itself; None inherits the
    shared `branch` value, so a later change of `branch.*` still reaches unset fields."""

    depths: tuple[int, ...] | None = None
    width: int | None = None
    mid: int | None = None
    kernel: int | None = None
    dense_layers: tuple[int, ...] | None = None
    growth: int | None = None
    bottleneck: int | None = None
    compression: float | None = None
    out_channels: int | None = None
    attention: bool | None = None
    heads: int | None = None
    dropout: float | None = None
    kind: str | None = None
    ssm_state: int | None = None
    ssm_layers: int | None = None

    def values(self) -> dict[str, Any]:
        """The fields set, by name."""
        return {
            name: getattr(self, name) for name in BRANCH_FIELDS if getattr(self, name) is not None
        }

    def apply(self, base: BranchConfig) -> BranchConfig:
        return dataclasses.replace(base, **self.values())


def parse_branch_key(key: str) -> tuple[str, str] | None:
    """`branches.<group>.<field>` -> (group, field); None for any other key. Raises a
    `ValueError` naming the key for a malformed group or an unknown field."""
    if not key.startswith("branches."):
        return None
    parts = key.split(".")
    if len(parts) != 3 or not _GROUP_NAME.fullmatch(parts[1]):
        _fail(key, "expected branches.<group>.<field> with a lower-case group name, e.g. "
                   "branches.rhythm.depths")
    if parts[2] not in BRANCH_FIELDS:
        _fail(key, f"unknown branch field {parts[2]!r}; valid: {', '.join(BRANCH_FIELDS)}")
    return parts[1], parts[2]


@dataclass(frozen=True)
class ModelConfig:
    """The whole multi-branch model. Label-dependent checks live in `validate`."""

    stem: StemConfig = field(default_factory=StemConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)
    input: InputConfig = field(default_factory=InputConfig)
    n_branches: int = 0  # 0 = one branch per label group
    fusion: str = "independent"
    fusion_hidden: int = 256  # concat: MLP hidden size; attention: key size
    fusion_dropout: float = 0.2  # concat / attention / late; unused by independent
    # Per-group branch overrides (group name, fields), sorted by name; see `branch_for`.
    branches: tuple[tuple[str, BranchOverride], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.stem, StemConfig):
            _fail("stem", f"expected a StemConfig, got {type(self.stem).__name__}")
        if not isinstance(self.branch, BranchConfig):
            _fail("branch", f"expected a BranchConfig, got {type(self.branch).__name__}")
        if not isinstance(self.input, InputConfig):
            _fail("input", f"expected an InputConfig, got {type(self.input).__name__}")
        _check_int("n_branches", self.n_branches, 0)
        if not isinstance(self.fusion, str) or self.fusion not in FUSION_NAMES:
            _fail("fusion", f"unknown fusion {self.fusion!r}; valid: {', '.join(FUSION_NAMES)}")
        _check_int("fusion.hidden", self.fusion_hidden, 1)
        object.__setattr__(
            self,
            "fusion_dropout",
            _check_float("fusion.dropout", self.fusion_dropout, 0.0, 1.0, False),
        )
        self._check_branches()
        length = self.sequence_length(MIN_LENGTH)
        if length < 1:
            deepest = max(self.branch_configs(), key=self._halvings)
            at = "" if self.input.fs == SOURCE_FS else f" ({self.input.fs} Hz: input.fs)"
            _fail(
                "branch.depths",
                f"stem.stride={self.stem.stride} and {self._halvings(deepest)} U-blocks "
                f"(each halving the length) leave nothing of a {MIN_LENGTH}-sample input{at}",
            )

    def _check_branches(self) -> None:
        items = self.branches.items() if isinstance(self.branches, Mapping) else self.branches
        pairs = []
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                _fail("branches", f"expected (group, BranchOverride) pairs, got {item!r}")
            group, override = item
            if not isinstance(group, str) or not _GROUP_NAME.fullmatch(group):
                _fail("branches", f"group names are lower-case identifiers, got {group!r}")
            if not isinstance(override, BranchOverride):
                _fail(f"branches.{group}", f"expected a BranchOverride, got {override!r}")
            if not override.values():
                continue  # an override that sets nothing is no override
            try:
                resolved = override.apply(self.branch)
            except ValueError as exc:  # name the per-branch key, not the shared one
                raise ValueError(str(exc).replace("branch.", f"branches.{group}.", 1)) from None
            # Stored as the branch config types them (tuples, floats), and only where they
            # differ from the shared branch: equal configs then describe equal models.
            typed = {
                name: getattr(resolved, name)
                for name in override.values()
                if getattr(resolved, name) != getattr(self.branch, name)
            }
            if typed:
                pairs.append((group, BranchOverride(**typed)))
        if len({g for g, _ in pairs}) != len(pairs):
            _fail("branches", "a group is listed twice")
        object.__setattr__(self, "branches", tuple(sorted(pairs, key=lambda p: p[0])))

    def branch_for(self, group: str) -> BranchConfig:
        """The branch of label group `group` (lower-case name): the shared `branch` with that
        group's overrides applied."""
        for name, override in self.branches:
            if name == group:
                return override.apply(self.branch)
        return self.branch

    def branch_configs(self) -> list[BranchConfig]:
        """The shared branch and every overridden one (what length checks must cover)."""
        return [self.branch, *(o.apply(self.branch) for _, o in self.branches)]

    @staticmethod
    def _halvings(branch: BranchConfig) -> int:
        # A ResU-Dense trunk halves the length once per U-block; a state-space trunk keeps it.
        return len(branch.depths) if branch.kind == "resu" else 0

    def sequence_length(self, length: int) -> int:
        """Time steps reaching attention/pooling for `length` stored (SOURCE_FS) samples in
        the deepest branch (0: too short)."""
        k, s = self.stem.kernel, self.stem.stride
        t = (self.input.length(length) + 2 * (k // 2) - k) // s + 1
        if t < 1:
            return 0
        for _ in range(max(self._halvings(b) for b in self.branch_configs())):
            if t < 2:  # AvgPool1d(2) needs two samples
                return 0
            t //= 2
        return t

    # --- flat dict --------------------------------------------------------------------

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys -> JSON-friendly values (tuples become lists)."""
        out: dict[str, Any] = {}
        for key, (section, name) in _FLAT.items():
            value = getattr(getattr(self, section) if section else self, name)
            out[key] = list(value) if isinstance(value, tuple) else value
        for group, override in self.branches:
            for name, value in override.values().items():
                out[f"branches.{group}.{name}"] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], *, base: ModelConfig | None = None) -> ModelConfig:
        """Build from dotted keys; keys absent from `flat` come from `base` (default config)."""
        base = cls() if base is None else base
        per_branch = {k: parse_branch_key(k) for k in flat if k.startswith("branches.")}
        unknown = sorted(set(flat) - set(_FLAT) - set(per_branch))
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(FLAT_KEYS)}, branches.<group>.<field>"
            )
        sections: dict[str, dict[str, Any]] = {"stem": {}, "branch": {}, "input": {}, "": {}}
        overrides = {group: o.values() for group, o in base.branches}
        for key, value in flat.items():
            where = per_branch.get(key)
            if where is not None:
                group, name = where
                parsed = _parse(key, value, getattr(base.branch, name))
                overrides.setdefault(group, {})[name] = parsed
                continue
            section, name = _FLAT[key]
            default = getattr(getattr(base, section) if section else base, name)
            sections[section][name] = _parse(key, value, default)
        stem = dataclasses.replace(base.stem, **sections["stem"])
        branch = dataclasses.replace(base.branch, **sections["branch"])
        inputs = dataclasses.replace(base.input, **sections["input"])
        branches = tuple((g, _override(g, v)) for g, v in overrides.items())
        return dataclasses.replace(
            base, stem=stem, branch=branch, input=inputs, branches=branches, **sections[""]
        )

    # --- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (lists for tuples), the JSON form."""
        out = dataclasses.asdict(self)
        for section in ("stem", "branch"):
            out[section] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in out[section].items()
            }
        # Sections and fields added since the first configs are written only where they differ
        # from their defaults: a ResU-Dense model reading the stored record keeps its JSON (and
        # its checkpoints' and bundles' checksums) byte for byte.
        defaults = BranchConfig()
        for name in _NEW_BRANCH_FIELDS:
            if getattr(self.branch, name) == getattr(defaults, name):
                del out["branch"][name]
        if self.input == InputConfig():
            del out["input"]
        # Only a heterogeneous model writes the key: every other config's JSON (checkpoints,
        # bundles, their checksums) stays as it was.
        del out["branches"]
        if self.branches:
            out["branches"] = {
                group: {k: list(v) if isinstance(v, tuple) else v for k, v in o.values().items()}
                for group, o in self.branches
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; every key is required and unknown keys are rejected."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
        flat: dict[str, Any] = {}
        top = {name: key for key, (section, name) in _FLAT.items() if not section}
        expected = {"stem", "branch", *top}
        if set(data) - {"branches", "input"} != expected:
            raise ValueError(
                f"config keys {sorted(data)} do not match the expected {sorted(expected)} "
                "(and optionally 'branches', 'input')"
            )
        branches = data.get("branches") or {}
        if not isinstance(branches, Mapping):
            raise ValueError(f"branches: expected a mapping of groups, got {branches!r}")
        for group, part in branches.items():
            if not isinstance(part, Mapping):
                raise ValueError(f"branches.{group}: expected a mapping, got {part!r}")
            for name, value in part.items():
                flat[f"branches.{group}.{name}"] = value
        for section in ("stem", "branch", "input"):
            part = data.get(section, {})
            if not isinstance(part, Mapping):
                raise ValueError(f"{section}: expected a mapping, got {part!r}")
            for name, value in part.items():
                flat[f"{section}.{name}"] = value
        for name, key in top.items():
            flat[key] = data[name]
        missing = sorted(set(FLAT_KEYS) - set(flat) - set(_OPTIONAL_KEYS))
        if missing:
            raise ValueError(f"missing config key(s): {', '.join(missing)}")
        return cls.from_flat(flat)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _override(group: str, values: Mapping[str, Any]) -> BranchOverride:
    try:
        return BranchOverride(**values)
    except TypeError as exc:  # an unknown field; parse_branch_key names it for flat keys
        raise ValueError(f"branches.{group}: {exc}") from None


def _flat_table() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for section, klass in (("stem", StemConfig), ("branch", BranchConfig),
                           ("input", InputConfig)):
        for f in dataclasses.fields(klass):
            table[f"{section}.{f.name}"] = (section, f.name)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in ("stem", "branch", "input", "branches"):
            # fusion_hidden -> fusion.hidden; the search space nests fusion options
            key = f.name.replace("fusion_", "fusion.", 1)
            table[key] = ("", f.name)
    return table


_FLAT = _flat_table()
FLAT_KEYS: tuple[str, ...] = tuple(_FLAT)
# Keys a stored config may lack (written before they existed): absent means the default.
_OPTIONAL_KEYS = (*(f"branch.{n}" for n in _NEW_BRANCH_FIELDS),
                  *(f"input.{f.name}" for f in dataclasses.fields(InputConfig)))

_TRUE, _FALSE = {"true"}, {"false"}


def _parse(key: str, value: Any, default: Any) -> Any:
    """Coerce MLflow/YAML string forms to the type of `default`; leave the rest to checks."""
    if isinstance(default, bool):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            _fail(key, f"expected true/false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            return _parse_int_tuple(key, value)
        if isinstance(value, (list, tuple)):
            return tuple(value)
        _fail(key, f"expected a list of ints like [6, 5, 4, 3] or '6-5-4-3', got {value!r}")
    if isinstance(default, int) and isinstance(value, str):
        if re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        _fail(key, f"expected an int, got {value!r}")
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            _fail(key, f"expected a number, got {value!r}")
    return value


def _parse_int_tuple(key: str, text: str) -> tuple[int, ...]:
    body = text.strip()
    if re.fullmatch(r"\d+(-\d+)*", body):  # "6-5-4-3", "16"
        return tuple(int(p) for p in body.split("-"))
    bracketed = re.fullmatch(r"[\[(]\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*[\])]", body)
    if bracketed and (body[0], body[-1]) in {("[", "]"), ("(", ")")}:
        return tuple(int(p) for p in bracketed.group(1).split(","))
    _fail(key, f"expected ints like '6-5-4-3' or '[6, 5, 4, 3]', got {text!r}")


def split_label_groups(num_labels: int, n_groups: int) -> list[list[int]]:
    """Contiguous near-even split of range(num_labels) into `n_groups` groups."""
    if not 1 <= n_groups <= num_labels:
        raise ValueError(f"cannot split {num_labels} labels into {n_groups} non-empty groups")
    size, extra = divmod(num_labels, n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        stop = start + size + (1 if g < extra else 0)
        groups.append(list(range(start, stop)))
        start = stop
    return groups
