"""The state-space trunk (`branch.kind: ssm`): a stack of diagonal state-space layers.

Each layer is S4D (Gu et al., "On the Parameterization and Initialization of Diagonal State
Space Models", 2022): per channel, N / 2 complex-conjugate pairs of modes with S4D-Lin
initialisation, a learned time step (the layer's time scale), zero-order-hold
discretisation, and a skip term D. It runs bidirectionally (one kernel looking back, one
looking ahead), inside a pre-normalised residual block with a GELU and a gated (GLU) output
projection. The trunk pools mean and max over time into its embedding.

Plain PyTorch, no compiled extension: the kernel is computed in real arithmetic (so that it
also runs under torch.export and in ONNX), and the sequence convolution with it is an FFT of
the next power of two >= 2 L (ONNX Runtime's DFT for such sizes matches torch's FFT to ~1e-6
relative; arbitrary sizes lose three digits). `direct_conv` is the same convolution as a
plain depthwise Conv1d, the reference the tests hold the FFT to.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BranchConfig

__all__ = [
    "ChannelNorm",
    "S4DKernel",
    "S4DLayer",
    "StateSpaceTrunk",
    "direct_conv",
    "fft_conv",
    "fft_size",
    "kernel_spectrum",
]

# Time steps drawn log-uniformly in this range: at 250 steps/s (500 Hz after a stride-2 stem)
# the slowest modes remember several seconds, the fastest a few samples.
DT_MIN, DT_MAX = 1e-3, 1e-1


def fft_size(length: int) -> int:
    """The FFT length for a linear (not circular) two-sided convolution of `length` samples:
    the next power of two >= 2 * length."""
    return 1 << (2 * length - 1).bit_length()


def _two_sided(k_fwd: Tensor, k_bwd: Tensor, n: int) -> Tensor:
    """(H, n): k_fwd at lags 0..L-1, k_bwd at lags -1..-L (circularly, at the end)."""
    length = k_fwd.shape[-1]
    return F.pad(k_fwd, (0, n - length)) + F.pad(k_bwd.flip(-1), (n - length, 0))


def kernel_spectrum(k_fwd: Tensor, k_bwd: Tensor, n: int) -> Tensor:
    """The rfft (H, n // 2 + 1) of the two-sided kernel, float32."""
    return torch.fft.rfft(_two_sided(k_fwd.float(), k_bwd.float(), n), n=n)


def fft_conv(u: Tensor, k_fwd: Tensor, k_bwd: Tensor,
             spectrum: Tensor | None = None) -> Tensor:
    """y[t] = sum_s k_fwd[s] u[t - s] + sum_m k_bwd[m] u[t + 1 + m], per channel, for
    u (B, H, L) and kernels (H, L); computed by FFT in float32 (`spectrum`: the kernels'
    `kernel_spectrum`, when already known)."""
    length = u.shape[-1]
    n = fft_size(length)
    if spectrum is None:
        spectrum = kernel_spectrum(k_fwd, k_bwd, n)
    return torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * spectrum, n=n)[..., :length]


def direct_conv(u: Tensor, k_fwd: Tensor, k_bwd: Tensor) -> Tensor:
    """`fft_conv` as a depthwise Conv1d with the kernels materialised (2 L - 1 taps): exact
    in exact arithmetic, O(L^2) per channel."""
    length = u.shape[-1]
    weight = torch.cat([k_fwd.flip(-1), k_bwd[:, : length - 1]], dim=-1).unsqueeze(1)
    return F.conv1d(u, weight.to(u.dtype), padding=length - 1, groups=u.shape[1])


class S4DKernel(nn.Module):
    """The convolution kernels (2, H, L) of H diagonal state-space channels with N states
    each, one per direction; B is folded into C, as in S4D."""

    def __init__(self, channels: int, state: int) -> None:
        super().__init__()
        pairs = state // 2
        log_dt = torch.rand(channels) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        self.log_dt = nn.Parameter(log_dt)
        # S4D-Lin: A_n = -1/2 + i pi n
        self.log_a_real = nn.Parameter(torch.full((channels, pairs), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(pairs).float().expand(channels, pairs)
                                   .clone())
        # (direction, channel, mode, real/imaginary)
        self.c = nn.Parameter(torch.randn(2, channels, pairs, 2) * math.sqrt(0.5))

    def forward(self, length: int) -> Tensor:
        dt = self.log_dt.exp()[:, None]  # (H, 1)
        a_re = -self.log_a_real.exp()
        a_im = self.a_imag
        da_re, da_im = a_re * dt, a_im * dt  # dt * A
        # zero-order hold: C' = C (exp(dt A) - 1) / A, in real arithmetic
        grow = da_re.exp()
        num_re, num_im = grow * torch.cos(da_im) - 1.0, grow * torch.sin(da_im)
        den = a_re * a_re + a_im * a_im
        q_re = (num_re * a_re + num_im * a_im) / den
        q_im = (num_im * a_re - num_re * a_im) / den
        c_re, c_im = self.c[..., 0], self.c[..., 1]  # (2, H, P)
        cq_re = c_re * q_re - c_im * q_im
        cq_im = c_re * q_im + c_im * q_re
        # K[l] = 2 Re(sum_n C'_n z_n^l), z = exp(dt A), with l = q * B + r: z^l = z^(qB) z^r,
        # so the exponentials and sines cover B + L / B steps per mode instead of L, and the
        # sum over modes is a batched matrix product (2 sqrt(L) vs L transcendental terms).
        block = math.isqrt(length - 1) + 1 if length > 1 else 1
        blocks = -(-length // block)
        fine_re, fine_im = _powers(da_re, da_im, torch.arange(block, device=dt.device,
                                                              dtype=dt.dtype))
        coarse_re, coarse_im = _powers(da_re, da_im, block * torch.arange(
            blocks, device=dt.device, dtype=dt.dtype))
        left_re = cq_re[..., None] * coarse_re - cq_im[..., None] * coarse_im  # (2, H, P, Q)
        left_im = cq_re[..., None] * coarse_im + cq_im[..., None] * coarse_re
        k = 2.0 * (torch.einsum("dhpq,hpr->dhqr", left_re, fine_re)
                   - torch.einsum("dhpq,hpr->dhqr", left_im, fine_im))
        return k.reshape(2, k.shape[1], blocks * block)[..., :length]


def _powers(da_re: Tensor, da_im: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of exp(dt A * step), (H, P, len(steps))."""
    decay = (da_re[..., None] * steps).exp()
    angle = da_im[..., None] * steps
    return decay * torch.cos(angle), decay * torch.sin(angle)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, T) at every time step."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _full_precision(x: Tensor) -> Any:
    # The kernel's exponentials over thousands of steps and the FFT need float32: bf16 keeps
    # three digits, and CUDA's FFT takes no bf16 at all.
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


class S4DLayer(nn.Module):
    """x + Dropout(GLU(W Dropout(GELU(SSM(norm(x)) + D norm(x))))) on (B, H, L)."""

    def __init__(self, width: int, state: int, dropout: float) -> None:
        super().__init__()
        self.norm = ChannelNorm(width)
        self.kernel = S4DKernel(width, state)
        self.d = nn.Parameter(torch.randn(width))
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv1d(width, 2 * width, 1)
        self.glu = nn.GLU(dim=1)
        self._cache: tuple[Any, Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        z = self.norm(x)
        with _full_precision(x):
            y = fft_conv(z, *self._kernels(z.shape[-1])) + z.float() * self.d[:, None]
        y = self.dropout(self.act(y))
        return x + self.dropout(self.glu(self.out(y)))

    def _kernels(self, length: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The kernels (and, in inference, their cached spectrum): without autograd the
        kernel is a constant of the weights, recomputed only when they change (an optimizer
        step or a load bumps their version) or the length does."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            k = self.kernel(length)
            return k[0], k[1], None
        params = list(self.kernel.parameters())
        key = (length, params[0].device, tuple((p.data_ptr(), p._version) for p in params))
        if self._cache is None or self._cache[0] != key:
            k = self.kernel(length)
            self._cache = (key, k, kernel_spectrum(k[0], k[1], fft_size(length)))
        _, k, spectrum = self._cache
        return k[0], k[1], spectrum


class StateSpaceTrunk(nn.Module):
    """(B, C_in, T) -> pooled embedding (B, out_channels): a 1x1 projection to `width`,
    `ssm_layers` S4D layers, a final norm, mean and max over time, a linear map."""

    def __init__(self, in_channels: int, config: BranchConfig) -> None:
        super().__init__()
        width = config.width
        self.proj = nn.Conv1d(in_channels, width, 1)
        self.layers = nn.Sequential(
            *(S4DLayer(width, config.ssm_state, config.dropout) for _ in range(config.ssm_layers))
        )
        self.norm = ChannelNorm(width)
        self.head = nn.Linear(2 * width, config.out_channels)
        self.out_channels = config.out_channels

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.layers(self.proj(x)))
        return self.head(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1))
