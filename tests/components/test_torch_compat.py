"""components._torch_compat against the installed torch: a release that renames what
`torch.compile` keeps of the module fails here, with the name."""

from __future__ import annotations

import torch
from torch import nn

from ecgtune.components import _torch_compat


def test_uncompiled_is_the_module_torch_compile_wrapped():
    model = nn.Linear(3, 2)
    wrapper = torch.compile(model)  # lazy: nothing compiles until the first call
    assert hasattr(wrapper, _torch_compat.COMPILED_ORIGINAL), (
        f"torch {torch.__version__}: torch.compile's wrapper has no "
        f"{_torch_compat.COMPILED_ORIGINAL}")
    assert _torch_compat.uncompiled(wrapper) is model
    assert _torch_compat.uncompiled(model) is model
