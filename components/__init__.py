"""Model building blocks, branches, fusion heads, the multi-branch model and its presets.

    from ecgtune.components import build_model, get_preset
    model = build_model(get_preset("seed"), num_labels=20)   # (B, 12, L) -> logits (B, 20)

Imports nothing else of the project. Names load on first use (PEP 562), so that the plain
data (`ModelConfig`, presets) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> submodule that defines it
_EXPORTS = {
    "CheckpointMeta": "checkpoint",
    "checkpoint_state": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_from_state": "checkpoint",
    "save_checkpoint": "checkpoint",
    "BRANCH_FIELDS": "config",
    "BRANCH_KINDS": "config",
    "InputConfig": "config",
    "LAYOUTS": "config",
    "LEAD_NAMES": "config",
    "LEAD_SETS": "config",
    "SOURCE_FS": "config",
    "InputFrontEnd": "frontend",
    "StateSpaceTrunk": "ssm",
    "build_trunk": "model",
    "load_trunk_weights": "pretrained",
    "save_trunk_weights": "pretrained",
    "set_trunks_frozen": "pretrained",
    "BranchOverride": "config",
    "parse_branch_key": "config",
    "FLAT_KEYS": "config",
    "FUSION_NAMES": "config",
    "MIN_LENGTH": "config",
    "NUM_LEADS": "config",
    "BranchConfig": "config",
    "ModelConfig": "config",
    "StemConfig": "config",
    "split_label_groups": "config",
    "FUSIONS": "fusion",
    "Fusion": "fusion",
    "register_fusion": "fusion",
    "MultiBranchModel": "model",
    "ResUDenseTrunk": "model",
    "build_model": "model",
    "count_parameters": "model",
    "set_layout": "model",
    "validate": "model",
    "PRESETS": "presets",
    "get_preset": "presets",
}

__all__ = [
    "BRANCH_FIELDS",
    "BRANCH_KINDS",
    "FLAT_KEYS",
    "FUSIONS",
    "FUSION_NAMES",
    "LAYOUTS",
    "LEAD_NAMES",
    "LEAD_SETS",
    "MIN_LENGTH",
    "NUM_LEADS",
    "PRESETS",
    "SOURCE_FS",
    "BranchConfig",
    "BranchOverride",
    "CheckpointMeta",
    "Fusion",
    "InputConfig",
    "InputFrontEnd",
    "ModelConfig",
    "MultiBranchModel",
    "ResUDenseTrunk",
    "StateSpaceTrunk",
    "StemConfig",
    "build_model",
    "build_trunk",
    "checkpoint_state",
    "count_parameters",
    "get_preset",
    "load_checkpoint",
    "load_trunk_weights",
    "model_from_state",
    "parse_branch_key",
    "register_fusion",
    "save_checkpoint",
    "save_trunk_weights",
    "set_layout",
    "set_trunks_frozen",
    "split_label_groups",
    "validate",
]

if TYPE_CHECKING:
    from .checkpoint import (
        CheckpointMeta,
        checkpoint_state,
        load_checkpoint,
        model_from_state,
        save_checkpoint,
    )
    from .config import (
        BRANCH_FIELDS,
        BRANCH_KINDS,
        FLAT_KEYS,
        FUSION_NAMES,
        LAYOUTS,
        LEAD_NAMES,
        LEAD_SETS,
        MIN_LENGTH,
        NUM_LEADS,
        SOURCE_FS,
        BranchConfig,
        BranchOverride,
        InputConfig,
        ModelConfig,
        StemConfig,
        parse_branch_key,
        split_label_groups,
    )
    from .frontend import InputFrontEnd
    from .fusion import FUSIONS, Fusion, register_fusion
    from .model import (
        MultiBranchModel,
        ResUDenseTrunk,
        build_model,
        build_trunk,
        count_parameters,
        set_layout,
        validate,
    )
    from .presets import PRESETS, get_preset
    from .pretrained import load_trunk_weights, save_trunk_weights, set_trunks_frozen
    from .ssm import StateSpaceTrunk


# The same few lines as `data_prep.lazy.lazy_exports`, which components may not import (it
# imports nothing else of the project).
def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
