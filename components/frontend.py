"""The model's input front end: the leads `input.leads` names, resampled to `input.fs`.

Every model reads the stored record (12 leads at SOURCE_FS, normalised as the loader does)
and makes its own input from it inside `forward`. Training (on the CPU or a GPU), ensemble
inference and the ONNX graph therefore run one and the same definition, and a model at 100 Hz
costs what it costs at 100 Hz in every cost figure.

The resampling is `prep`'s: `scipy.signal.resample_poly(x, 1, factor)` with its default
Kaiser window (beta 5.0) and zero padding at the edges, here as one depthwise Conv1d with
stride `factor` (output j centred on input j * factor, ceil(n / factor) outputs), so the
exported graph holds it as an ordinary strided convolution. The filter is computed from the
configuration (never stored): a checkpoint of a front-end model holds the same keys as any
other.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .config import InputConfig

__all__ = ["KAISER_BETA", "InputFrontEnd", "decimation_filter", "front_end"]

KAISER_BETA = 5.0  # scipy.signal.resample_poly's default window, ('kaiser', 5.0)
_HALF_LEN_PER_FACTOR = 10  # resample_poly: half_len = 10 * max(up, down)


def decimation_filter(factor: int) -> np.ndarray:
    """The low-pass FIR `scipy.signal.resample_poly(x, 1, factor)` applies (float64, odd
    length 20 * factor + 1, unit gain at DC): `firwin(20 * factor + 1, 1 / factor,
    window=('kaiser', 5.0))`, computed here without importing scipy.signal."""
    if factor < 1:
        raise ValueError(f"decimation factor must be >= 1, got {factor}")
    half = _HALF_LEN_PER_FACTOR * factor
    taps = 2 * half + 1
    cutoff = 1.0 / factor
    m = np.arange(taps, dtype=np.float64) - half
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(taps, KAISER_BETA)
    return h / h.sum()


class InputFrontEnd(nn.Module):
    """(B, 12, L) at SOURCE_FS -> (B, n_leads, ceil(L / factor)) at `config.fs`."""

    def __init__(self, config: InputConfig) -> None:
        super().__init__()
        self.config = config
        self.factor = config.decimation
        indices = config.lead_indices
        # Leads 0..k-1 are a slice (no copy on export); any other subset is a gather.
        self.prefix = indices == tuple(range(len(indices)))
        self.n_leads = len(indices)
        self.index: Tensor
        self.register_buffer("index", torch.tensor(indices, dtype=torch.long), persistent=False)
        self.weight: Tensor
        if self.factor > 1:
            h = torch.tensor(decimation_filter(self.factor), dtype=torch.float32)
            weight = h.flip(0).reshape(1, 1, -1).repeat(self.n_leads, 1, 1)
            self.register_buffer("weight", weight, persistent=False)
        else:
            self.register_buffer("weight", torch.zeros(0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.n_leads != x.shape[1]:
            x = x[:, : self.n_leads] if self.prefix else x.index_select(1, self.index)
        if self.factor == 1:
            return x
        half = self.weight.shape[-1] // 2
        return nn.functional.conv1d(x, self.weight.to(x.dtype), stride=self.factor,
                                    padding=half, groups=self.n_leads)

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, factor={self.factor}"


def front_end(config: InputConfig) -> nn.Module:
    """The front end `config` asks for; nn.Identity for the stored record itself, so that
    such a model's modules, graph and cost stay exactly those of a model without one."""
    return nn.Identity() if config.is_source else InputFrontEnd(config)
