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


def test_fft_ops_are_what_rfft_and_irfft_dispatch_to():
    from torch.utils.flop_counter import FlopCounterMode

    r2c, c2r = _torch_compat.fft_ops()
    seen: list[object] = []

    def count(*args, **kwargs):
        seen.append(kwargs.get("out_shape"))
        return 1

    with FlopCounterMode(display=False, custom_mapping={r2c: count, c2r: count}) as counter:
        torch.fft.irfft(torch.fft.rfft(torch.randn(2, 64)), n=64)
    assert len(seen) == 2 and counter.get_total_flops() == 2, (
        f"torch {torch.__version__}: rfft/irfft no longer dispatch to {r2c}, {c2r}")
