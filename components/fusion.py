"""Fusion heads: pooled branch embeddings -> logits (B, num_labels) in label order.

A strategy is one `Fusion` subclass registered under a name with `@register_fusion("name")`;
`ModelConfig.fusion` selects it and the contract tests run over every entry of `FUSIONS`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from .config import FUSION_NAMES

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "ConcatFusion",
    "Fusion",
    "IndependentFusion",
    "LateFusion",
    "register_fusion",
]


class Fusion(nn.Module, abc.ABC):
    """Maps one embedding (B, D_i) per branch to logits (B, num_labels) in label order."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        embed_dims: list[int],
        num_labels: int,
        label_groups: list[list[int]],
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.check_layout(len(embed_dims), num_labels, label_groups)
        self.num_branches = len(embed_dims)
        self.num_labels = num_labels

    @classmethod
    def check_layout(
        cls, n_branches: int, num_labels: int, label_groups: Sequence[Sequence[int]]
    ) -> None:
        """Raise ValueError when this strategy cannot serve the branch/label layout."""
        if n_branches < 1:
            raise ValueError(f"fusion {cls.name!r} needs at least one branch")

    @abc.abstractmethod
    def forward(self, embeddings: list[Tensor]) -> Tensor: ...


FusionT = TypeVar("FusionT", bound=type[Fusion])

FUSIONS: dict[str, type[Fusion]] = {}


def register_fusion(name: str) -> Callable[[FusionT], FusionT]:
    """Class decorator adding a Fusion subclass to FUSIONS under `name`."""

    def add(cls: FusionT) -> FusionT:
        if name in FUSIONS:
            raise ValueError(f"fusion {name!r} is already registered ({FUSIONS[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Fusion)):
            raise TypeError(f"{cls!r} is not a Fusion subclass")
        cls.name = name
        FUSIONS[name] = cls
        if name not in FUSION_NAMES:  # a new strategy: configs may name it from now on
            FUSION_NAMES.append(name)
        return cls

    return add


@register_fusion("independent")
class IndependentFusion(Fusion):
    """Each branch predicts its own label group with a linear head (the seed multi-model).

    With a single branch there is nothing to split: it predicts every label, whatever the
    grouping, which makes the single-branch model the plain seed network.
    """

    def __init__(
        self,
        embed_dims: list[int],
        num_labels: int,
        label_groups: list[list[int]],
        config: ModelConfig,
    ) -> None:
        super().__init__(embed_dims, num_labels, label_groups, config)
        groups = [list(range(num_labels))] if len(embed_dims) == 1 else label_groups
        self.heads = nn.ModuleList(
            nn.Linear(d, len(g)) for d, g in zip(embed_dims, groups, strict=True)
        )
        placed = [i for g in groups for i in g]
        # order[j] = position of label j in the concatenated branch outputs
        order = torch.empty(num_labels, dtype=torch.long)
        order[torch.tensor(placed)] = torch.arange(num_labels)
        self.reorder = placed != list(range(num_labels))
        self.order: Tensor
        self.register_buffer("order", order, persistent=False)

    @classmethod
    def check_layout(
        cls, n_branches: int, num_labels: int, label_groups: Sequence[Sequence[int]]
    ) -> None:
        super().check_layout(n_branches, num_labels, label_groups)
        if n_branches != 1 and n_branches != len(label_groups):
            raise ValueError(
                f"fusion 'independent' needs one branch per label group: n_branches="
                f"{n_branches} but there are {len(label_groups)} groups (use n_branches=0 "
                "to follow the groups, or another fusion)"
            )

    def forward(self, embeddings: list[Tensor]) -> Tensor:
        outs: list[Tensor] = []
        for i, head in enumerate(self.heads):
            outs.append(head(embeddings[i]))
        logits = torch.cat(outs, dim=1)
        return logits.index_select(1, self.order) if self.reorder else logits


@register_fusion("concat")
class ConcatFusion(Fusion):
    """Concatenated embeddings -> Linear(hidden) -> ReLU -> Dropout -> Linear(num_labels)."""

    def __init__(
        self,
        embed_dims: list[int],
        num_labels: int,
        label_groups: list[list[int]],
        config: ModelConfig,
    ) -> None:
        super().__init__(embed_dims, num_labels, label_groups, config)
        self.mlp = nn.Sequential(
            nn.Linear(sum(embed_dims), config.fusion_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.fusion_dropout),
            nn.Linear(config.fusion_hidden, num_labels),
        )

    def forward(self, embeddings: list[Tensor]) -> Tensor:
        return self.mlp(torch.cat(embeddings, dim=1))


@register_fusion("attention")
class AttentionFusion(Fusion):
    """Per-label attention over branches.

    Each branch embedding is projected to `fusion.hidden`; a learned query per label scores
    the projected branches, a softmax over branches weights their sum, and a per-label
    linear map turns each label's mixture into its logit.
    """

    def __init__(
        self,
        embed_dims: list[int],
        num_labels: int,
        label_groups: list[list[int]],
        config: ModelConfig,
    ) -> None:
        super().__init__(embed_dims, num_labels, label_groups, config)
        hidden = config.fusion_hidden
        self.proj = nn.ModuleList(nn.Linear(d, hidden) for d in embed_dims)
        self.queries = nn.Parameter(torch.randn(num_labels, hidden) / math.sqrt(hidden))
        self.dropout = nn.Dropout(config.fusion_dropout)
        self.weight = nn.Parameter(torch.randn(num_labels, hidden) / math.sqrt(hidden))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.scale = 1.0 / math.sqrt(hidden)

    def branch_weights(self, embeddings: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Projected branches (B, N, H) and per-label branch weights (B, labels, N)."""
        projected: list[Tensor] = []
        for i, proj in enumerate(self.proj):
            projected.append(proj(embeddings[i]))
        z = torch.stack(projected, dim=1)
        scores = torch.einsum("bnh,lh->bln", z, self.queries) * self.scale
        return z, scores.softmax(dim=-1)

    def forward(self, embeddings: list[Tensor]) -> Tensor:
        z, weights = self.branch_weights(embeddings)
        mixed = self.dropout(torch.einsum("bln,bnh->blh", weights, z))
        return (mixed * self.weight).sum(dim=-1) + self.bias


@register_fusion("late")
class LateFusion(Fusion):
    """Every branch predicts all labels; a softmax-weighted average (per label) of logits."""

    def __init__(
        self,
        embed_dims: list[int],
        num_labels: int,
        label_groups: list[list[int]],
        config: ModelConfig,
    ) -> None:
        super().__init__(embed_dims, num_labels, label_groups, config)
        self.dropout = nn.Dropout(config.fusion_dropout)
        self.heads = nn.ModuleList(nn.Linear(d, num_labels) for d in embed_dims)
        # zeros -> a plain mean at initialisation
        self.mix = nn.Parameter(torch.zeros(len(embed_dims), num_labels))

    def forward(self, embeddings: list[Tensor]) -> Tensor:
        logits: list[Tensor] = []
        for i, head in enumerate(self.heads):
            logits.append(head(self.dropout(embeddings[i])))
        stacked = torch.stack(logits, dim=1)  # (B, N, labels)
        return (stacked * self.mix.softmax(dim=0)).sum(dim=1)
