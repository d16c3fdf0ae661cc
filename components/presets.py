"""Named model configurations (dict name -> ModelConfig)."""

from __future__ import annotations

from .config import BranchConfig, ModelConfig, StemConfig

__all__ = ["PRESETS", "get_preset"]

_TINY_BRANCH = BranchConfig(
    depths=(3, 2),
    width=16,
    mid=8,
    kernel=9,
    dense_layers=(2,),
    growth=4,
    bottleneck=4,
    compression=0.5,
    out_channels=16,
    attention=False,
    heads=2,
    dropout=0.1,
)

_SSM_TINY_BRANCH = BranchConfig(
    **{**vars(_TINY_BRANCH), "kind": "ssm", "ssm_state": 8, "ssm_layers": 2}
)

PRESETS: dict[str, ModelConfig] = {
    # The reference ResU-Dense (Hwang et al. 2023): 7,205,204 parameters at 20 labels.
    "seed": ModelConfig(n_branches=1, fusion="independent"),
    # The seed study's multi-model: four full networks, one per label group, own stems.
    "seed-multi": ModelConfig(stem=StemConfig(shared=False), n_branches=4, fusion="independent"),
    # CPU tests and smoke searches: trains in seconds on 12 x 1,024 inputs.
    "tiny": ModelConfig(
        stem=StemConfig(channels=16),
        branch=_TINY_BRANCH,
        n_branches=1,
        fusion="independent",
        fusion_hidden=32,
        fusion_dropout=0.1,
    ),
    # Tiny branches, one per label group, shared stem, attention on both levels.
    "tiny-multi": ModelConfig(
        stem=StemConfig(channels=16),
        branch=BranchConfig(**{**vars(_TINY_BRANCH), "attention": True}),
        n_branches=0,
        fusion="attention",
        fusion_hidden=16,
        fusion_dropout=0.1,
    ),
    # A reasonable CPU demo model.
    "small": ModelConfig(
        stem=StemConfig(channels=32),
        branch=BranchConfig(
            depths=(4, 3, 2),
            width=32,
            mid=16,
            kernel=9,
            dense_layers=(4, 4),
            growth=8,
            bottleneck=4,
            compression=0.5,
            out_channels=64,
            attention=True,
            heads=4,
            dropout=0.3,
        ),
        n_branches=1,
        fusion="independent",
        fusion_hidden=64,
        fusion_dropout=0.2,
    ),
    # A compact state-space network (S4D layers), the size of the field's compact SSMs:
    # ~0.4M parameters where the seed has 7.2M (BENCHMARKS.md "input").
    "ssm-small": ModelConfig(
        stem=StemConfig(channels=64),
        branch=BranchConfig(
            kind="ssm",
            width=128,
            ssm_state=64,
            ssm_layers=6,
            dropout=0.1,
            out_channels=128,
        ),
        n_branches=1,
        fusion="independent",
        fusion_hidden=128,
        fusion_dropout=0.2,
    ),
    # The state-space trunk at the tiny size, for CPU tests.
    "ssm-tiny": ModelConfig(
        stem=StemConfig(channels=16),
        branch=_SSM_TINY_BRANCH,
        n_branches=1,
        fusion="independent",
        fusion_hidden=32,
        fusion_dropout=0.1,
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}") from None
