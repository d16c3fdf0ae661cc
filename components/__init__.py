"""Model building blocks, branches, fusion heads, the multi-branch model and its presets.

    from ecgtune.components import build_model, get_preset
    model = build_model(get_preset("seed"), num_labels=20)   # (B, 12, L) -> logits (B, 20)

Imports nothing else of the project.
"""

from .checkpoint import (
    CheckpointMeta,
    checkpoint_state,
    load_checkpoint,
    model_from_state,
    save_checkpoint,
)
from .config import (
    FLAT_KEYS,
    MIN_LENGTH,
    NUM_LEADS,
    BranchConfig,
    ModelConfig,
    StemConfig,
    split_label_groups,
    validate,
)
from .export import export_model, load_exported, save_exported
from .fusion import FUSIONS, Fusion, register_fusion
from .model import (
    MultiBranchModel,
    ResUDenseTrunk,
    build_model,
    count_parameters,
    prepare_model,
)
from .presets import PRESETS, get_preset

__all__ = [
    "FLAT_KEYS",
    "FUSIONS",
    "MIN_LENGTH",
    "NUM_LEADS",
    "PRESETS",
    "BranchConfig",
    "CheckpointMeta",
    "Fusion",
    "ModelConfig",
    "MultiBranchModel",
    "ResUDenseTrunk",
    "StemConfig",
    "build_model",
    "checkpoint_state",
    "count_parameters",
    "export_model",
    "get_preset",
    "load_checkpoint",
    "load_exported",
    "model_from_state",
    "prepare_model",
    "register_fusion",
    "save_checkpoint",
    "save_exported",
    "split_label_groups",
    "validate",
]
