"""Multi-label losses, computed in float32 whatever the autocast precision of the logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ecgtune.search.config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor, TrainConfig], torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return wrap


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}") from None


@register_loss("bce")
def bce_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


@register_loss("focal")
def focal_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    # Lin et al. 2017: down-weights easy examples, which dominate rare-label ECG data.
    logits, targets = logits.float(), targets.float()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-ce)
    return ((1.0 - p_t) ** cfg.focal_gamma * ce).mean()


@register_loss("asymmetric")
def asymmetric_loss(
    logits: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    # Ridnik et al. 2021 (ASL): separate focusing for positives and negatives, plus a
    # probability margin that discards very easy negatives.
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    p_neg = (p - cfg.asl_clip).clamp(min=0.0) if cfg.asl_clip > 0 else p
    log_pos = F.logsigmoid(logits)
    log_neg = torch.log((1.0 - p_neg).clamp(min=1e-8))
    loss_pos = targets * (1.0 - p) ** cfg.asl_gamma_pos * log_pos
    loss_neg = (1.0 - targets) * p_neg**cfg.asl_gamma_neg * log_neg
    return -(loss_pos + loss_neg).mean()
