"""Every internal of PyTorch that ecgtune touches, in one place.

tests/components/test_torch_compat.py checks each one against the installed torch, so a
release that moves one fails the fast tier with its name.
"""

from __future__ import annotations

from torch import nn

__all__ = ["uncompiled"]

# The module that `torch.compile(module)` wraps, kept on the wrapper; torch has no public
# accessor, and the wrapper's state_dict prefixes every key with it.
COMPILED_ORIGINAL = "_orig_mod"


def uncompiled(model: nn.Module) -> nn.Module:
    """The module that `torch.compile` wrapped, else `model` itself."""
    original = getattr(model, COMPILED_ORIGINAL, model)
    return original if isinstance(original, nn.Module) else model
