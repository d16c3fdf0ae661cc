"""The ResU-Dense trunk and the multi-branch model built from a `ModelConfig`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .blocks import (
    ConvBNAct,
    DenseBlock,
    GlobalMaxPool,
    ResUBlock,
    TemporalSelfAttention,
    Transition,
)
from .config import NUM_LEADS, BranchConfig, ModelConfig, StemConfig, validate
from .fusion import FUSIONS

__all__ = [
    "MultiBranchModel",
    "ResUDenseTrunk",
    "Stem",
    "build_model",
    "count_parameters",
    "prepare_model",
]


class Stem(ConvBNAct):
    """Conv1d 12 -> channels (kernel, stride, padding kernel // 2, no bias) + BN + LeakyReLU."""

    def __init__(self, config: StemConfig, in_channels: int = NUM_LEADS) -> None:
        super().__init__(in_channels, config.channels, config.kernel, stride=config.stride)


class ResUDenseTrunk(nn.Module):
    """(B, C_in, T) -> pooled embedding (B, out_channels).

    Residual U-blocks (each halving T), dense blocks joined by transitions, dropout,
    optional self-attention over time, global max pool.
    """

    def __init__(self, in_channels: int, config: BranchConfig) -> None:
        super().__init__()
        self.ublocks = nn.Sequential(
            *(
                ResUBlock(
                    in_channels if i == 0 else config.width,
                    config.width,
                    config.mid,
                    d,
                    config.kernel,
                )
                for i, d in enumerate(config.depths)
            )
        )
        channels = config.dense_channels()
        dense: list[nn.Module] = []
        for i, layers in enumerate(config.dense_layers):
            block = DenseBlock(channels[i], layers, config.growth, config.bottleneck)
            dense += [block, Transition(block.out_channels, channels[i + 1])]
        self.dense = nn.Sequential(*dense)
        self.dropout = nn.Dropout(config.dropout)
        self.attention = (
            TemporalSelfAttention(config.out_channels, config.heads) if config.attention else None
        )
        self.pool = GlobalMaxPool(time_dim=1 if config.attention else 2)
        self.out_channels = config.out_channels

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.dense(self.ublocks(x)))
        if self.attention is not None:
            h = self.attention(h)  # (B, T, C)
        return self.pool(h)


class Branch(nn.Module):
    """A trunk with its own stem, or nn.Identity when the stem is shared."""

    def __init__(self, stem: nn.Module, trunk: ResUDenseTrunk) -> None:
        super().__init__()
        self.stem = stem
        self.trunk = trunk

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(self.stem(x))


class MultiBranchModel(nn.Module):
    """(B, 12, L) -> logits (B, num_labels) in label order, for any L >= MIN_LENGTH."""

    def __init__(self, config: ModelConfig, num_labels: int, label_groups: list[list[int]]) -> None:
        super().__init__()
        n_branches = config.n_branches or len(label_groups)
        shared = config.stem.shared
        self.stem = Stem(config.stem) if shared else nn.Identity()
        self.branches = nn.ModuleList(
            Branch(
                nn.Identity() if shared else Stem(config.stem),
                ResUDenseTrunk(config.stem.channels, config.branch),
            )
            for _ in range(n_branches)
        )
        self.fusion = FUSIONS[config.fusion](
            [config.branch.out_channels] * n_branches, num_labels, label_groups, config
        )
        # plain attributes (not state): what a checkpoint needs to rebuild this model
        self.config = config
        self.num_labels = num_labels
        self.label_groups = [list(g) for g in label_groups]

    def embed(self, x: Tensor) -> list[Tensor]:
        """Pooled embedding (B, D) of every branch."""
        h = self.stem(x)
        embeddings: list[Tensor] = []
        for branch in self.branches:
            embeddings.append(branch(h))
        return embeddings

    def forward(self, x: Tensor) -> Tensor:
        return self.fusion(self.embed(x))


def build_model(
    config: ModelConfig,
    num_labels: int = 20,
    label_groups: Sequence[Sequence[int]] | None = None,
) -> MultiBranchModel:
    """Build the model `config` describes; raises ValueError for an incompatible layout.

    `label_groups` lists label indices per group (from the label map); see `validate` for
    what None means and how the number of branches follows from it.
    """
    groups = validate(config, num_labels, label_groups)
    return MultiBranchModel(config, num_labels, groups)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def prepare_model(
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    compile: bool = False,
    compile_mode: str | None = None,
) -> nn.Module:
    """Move `model` to `device` and optionally wrap it in torch.compile (off by default).

    Keep a reference to the uncompiled module for checkpoints (`save_checkpoint` also
    unwraps a compiled one). There is no channels_last step: that memory format exists for
    4-D/5-D tensors only, and Conv1d inputs are 3-D (B, C, L) and already contiguous.
    """
    model = model.to(device)
    if compile:
        return torch.compile(model, mode=compile_mode)  # type: ignore[return-value]
    return model
