"""Checkpoints that carry everything needed to rebuild their model.

One `torch.save` of plain types (config as a dict, label layout, state dict, caller extras),
so `torch.load(..., weights_only=True)` reads it and no project class is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._torch_compat import uncompiled
from .config import ModelConfig
from .model import MultiBranchModel, build_model, validate

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMeta",
    "checkpoint_state",
    "load_checkpoint",
    "model_from_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "ecgtune.components.checkpoint/1"


@dataclass(frozen=True)
class CheckpointMeta:
    config: ModelConfig
    num_labels: int
    label_groups: list[list[int]]
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = CHECKPOINT_FORMAT
    group_names: list[str] = field(default_factory=list)  # lower-case; [] when not recorded


def _check_plain(value: Any, where: str) -> None:
    # Fail at save time on anything weights_only loading would refuse later.
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored in a weights-only checkpoint "
        "(use None, bool, int, float, str, tensors, lists and dicts of those)"
    )


def checkpoint_state(
    model: nn.Module,
    config: ModelConfig,
    *,
    num_labels: int,
    label_groups: Sequence[Sequence[int]] | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint as a plain dict (for callers that embed it in their own checkpoint).

    `label_groups` as passed to `build_model` (None allowed); the resolved groups are stored.
    """
    model = uncompiled(model)
    # The group names pick each branch's own architecture (`branches.<group>.*`) on rebuild.
    names = list(getattr(model, "group_names", []) or [])
    groups = validate(config, num_labels, label_groups, names)  # stored resolved (for None)
    if isinstance(model, MultiBranchModel) and (
        model.config != config or model.num_labels != num_labels or model.label_groups != groups
    ):
        raise ValueError(
            "config / num_labels / label_groups differ from those the model was built with: "
            f"model has {model.num_labels} labels in groups {model.label_groups}"
        )
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "num_labels": int(num_labels),
        "label_groups": groups,
        "state_dict": dict(model.state_dict()),
        "extra": extra,
        "torch_version": str(torch.__version__),
    }
    if names:
        state["group_names"] = [str(n) for n in names]
    return state


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: ModelConfig,
    *,
    num_labels: int,
    label_groups: Sequence[Sequence[int]] | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write weights + config + label layout + `extra` (e.g. epoch) to `path`, atomically."""
    state = checkpoint_state(
        model, config, num_labels=num_labels, label_groups=label_groups, extra=extra
    )
    tmp = f"{os.fspath(path)}.partial"
    torch.save(state, tmp)
    os.replace(tmp, path)


def model_from_state(
    state: Mapping[str, Any], device: str | torch.device = "cpu"
) -> tuple[MultiBranchModel, CheckpointMeta]:
    """Rebuild the model from a checkpoint dict alone and load its weights strictly."""
    fmt = state.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(
            f"not a components checkpoint: format {fmt!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    config = ModelConfig.from_dict(state["config"])
    meta = CheckpointMeta(
        config=config,
        num_labels=int(state["num_labels"]),
        label_groups=[list(g) for g in state["label_groups"]],
        extra=dict(state.get("extra") or {}),
        group_names=[str(n) for n in state.get("group_names") or []],
    )
    model = build_model(config, meta.num_labels, meta.label_groups, meta.group_names)
    model.load_state_dict(state["state_dict"], strict=True)
    return model.to(device).eval(), meta


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[MultiBranchModel, CheckpointMeta]:
    """Load a `save_checkpoint` file (weights_only) into a rebuilt model in eval mode."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    return model_from_state(state, device=map_location)
