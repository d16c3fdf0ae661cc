"""Typed, frozen training configuration and the flat-dict form a trial sees.

A trial's Ray Tune config is one flat dict: model keys (`branch.depths`, `fusion`,
`input.fs`, ...) go to `components.ModelConfig.from_flat`, `train.*` keys to `TrainConfig`,
and the pretrained-trunk keys (`branch.init`, `branch.freeze_epochs`: how the trunks start,
not what they are) to `InitConfig`. The same flat dict is what MLflow records as the trial's
params, so a run's params rebuild its trial exactly. Fault injection for tests is no part of
it: tests install a hook through the Python API (search.trainable.TrialHook).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from ecgtune.components import ModelConfig

LOSS_NAMES = ("bce", "focal", "asymmetric")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# `train.layout`: how the convolutions compute (components.LAYOUTS), or `auto` (search.autotune).
TRAIN_LAYOUTS = ("auto", "ncl", "channels_last")
# `train.compile`: `off`, `trunk` (torch.compile of each stem and trunk, in place: the
# parameter names stay), `trunk-graphs` (the same with CUDA graphs: mode reduce-overhead), or
# `auto` (what `make gpu-check` measured faster on this GPU, else off).
COMPILE_MODES = ("auto", "off", "trunk", "trunk-graphs")
NORMALIZATIONS = ("dataset", "record")


@dataclass(frozen=True)
class TrainConfig:
    """How one trial trains; `epochs` is the budget ASHA allocates in."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    crop_len: int = 4096
    loss: str = "bce"
    focal_gamma: float = 2.0
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    augment: bool = True
    normalization: str = "dataset"
    # 0 = one full pass over the training folds; a cap keeps CPU smoke searches short.
    steps_per_epoch: int = 0
    threshold_objective: str = "f1"
    precision: str = "auto"
    layout: str = "auto"
    compile: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"train.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            problems.append(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            problems.append(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.crop_len < 1024:
            problems.append(f"train.crop_len must be >= 1024, got {self.crop_len}")
        if self.loss not in LOSS_NAMES:
            problems.append(f"train.loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.layout not in TRAIN_LAYOUTS:
            problems.append(f"train.layout must be one of {TRAIN_LAYOUTS}, got {self.layout!r}")
        if self.compile not in COMPILE_MODES:
            problems.append(f"train.compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.normalization not in NORMALIZATIONS:
            problems.append(
                f"train.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.steps_per_epoch < 0:
            problems.append(f"train.steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class InitConfig:
    """Where the trunks' weights start (`components.load_trunk_weights`): a safetensors file
    of one trunk, loaded into every branch before the first epoch, its weights frozen for the
    first `freeze_epochs` epochs. Empty: the usual random initialisation."""

    init: str = ""
    freeze_epochs: int = 0

    def __post_init__(self) -> None:
        if self.freeze_epochs < 0:
            raise ValueError(f"branch.freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if self.freeze_epochs and not self.init:
            raise ValueError("branch.freeze_epochs freezes pretrained trunks: it needs "
                             "branch.init (a trunk weights file)")


_SECTIONS = {"train": TrainConfig}
# Flat keys of InitConfig: `branch.*` by name, kept out of the model's config (a trunk's
# starting weights do not change the model a checkpoint or bundle rebuilds).
INIT_KEYS = {f"branch.{f.name}": f.name for f in fields(InitConfig)}


def _coerce(value: Any, typ: type, key: str) -> Any:
    """Accept the string forms that YAML files, CLI flags and MLflow params produce."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{key} must be a boolean, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    return str(value)


def _section_from_flat(cls: type, prefix: str, flat: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in flat.items():
        name = key[len(prefix) + 1 :]
        if name not in valid:
            options = ", ".join(f"{prefix}.{v}" for v in sorted(valid))
            raise ValueError(f"unknown key {key!r}; valid {prefix}.* keys: {options}")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: the model, how to train it, and how its trunks start."""

    model: ModelConfig
    train: TrainConfig = TrainConfig()
    init: InitConfig = InitConfig()

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrialConfig:
        split: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        init: dict[str, Any] = {}
        hints = get_type_hints(InitConfig)
        for key, value in flat.items():
            if key in INIT_KEYS:
                init[INIT_KEYS[key]] = _coerce(value, hints[INIT_KEYS[key]], key)
                continue
            section = key.split(".", 1)[0]
            split[section if section in _SECTIONS else "model"][key] = value
        return cls(
            model=ModelConfig.from_flat(split["model"]),
            train=_section_from_flat(TrainConfig, "train", split["train"]),
            init=InitConfig(**init),
        )

    def to_flat(self) -> dict[str, Any]:
        flat = dict(self.model.to_flat())
        flat.update({key: getattr(self.init, name) for key, name in INIT_KEYS.items()})
        flat.update({f"train.{k}": v for k, v in dataclasses.asdict(self.train).items()})
        return flat

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), sort_keys=True)
