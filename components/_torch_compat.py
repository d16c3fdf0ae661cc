"""Every internal of PyTorch that ecgtune touches, in one place.

tests/components/test_torch_compat.py checks each one against the installed torch, so a
release that moves one fails the fast tier with its name.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fft_ops", "uncompiled"]

# The module that `torch.compile(module)` wraps, kept on the wrapper; torch has no public
# accessor, and the wrapper's state_dict prefixes every key with it.
COMPILED_ORIGINAL = "_orig_mod"


def uncompiled(model: nn.Module) -> nn.Module:
    """The module that `torch.compile` wrapped, else `model` itself."""
    original = getattr(model, COMPILED_ORIGINAL, model)
    return original if isinstance(original, nn.Module) else model


def fft_ops() -> tuple[object, object]:
    """The aten operators of a real FFT and its inverse (`torch.fft.rfft`, `irfft`).

    FlopCounterMode has no formula for them, so the SSM branch's FFT convolution would count as
    free. Its custom mapping is keyed by operator (not by overload, which it never looks up),
    and torch names these operators only privately.
    """
    return torch.ops.aten._fft_r2c, torch.ops.aten._fft_c2r
