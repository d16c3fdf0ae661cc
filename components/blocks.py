"""Building blocks of the ResU-Dense trunk: conv units, residual U-block, dense blocks,
temporal self-attention and global pooling.

All convolutions are bias-free, as in the reference: almost all of them feed a BatchNorm,
whose shift makes a bias redundant (the seed's 7,205,204 parameters count none).

Layouts: every convolution and batch norm here also takes a height-1 4-D tensor (B, C, 1, L)
and then runs as the 2-D operation of height 1 with the same weights (`LayoutConv1d`,
`LayoutConvTranspose1d`, `LayoutBatchNorm1d`). A trunk switched to channels-last
(`model.set_layout`) computes on such tensors in torch's channels-last memory format, the
layout cuDNN's convolution kernels compute in: with plain (B, C, L) tensors cuDNN reorders to
and from it around every convolution (`make gpu-check` profile). Parameters, their names and
shapes are the same in both layouts, so checkpoints do not know which one trained them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvBNAct",
    "DenseBlock",
    "DenseLayer",
    "GlobalMaxPool",
    "HalveLength",
    "LayoutBatchNorm1d",
    "LayoutConv1d",
    "LayoutConvTranspose1d",
    "ResUBlock",
    "TemporalSelfAttention",
    "Transition",
    "UpConvBNAct",
    "from_channels_last",
    "to_channels_last",
]


def to_channels_last(x: Tensor) -> Tensor:
    """(B, C, L) -> (B, C, 1, L) in channels-last memory format: a view when `x` already
    has channels-last strides (what `from_channels_last` returns), a copy otherwise."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def from_channels_last(x: Tensor) -> Tensor:
    """(B, C, 1, L) -> (B, C, L), a view (its strides stay channels-last)."""
    return x.squeeze(2)


class LayoutConv1d(nn.Conv1d):
    """nn.Conv1d that also takes a height-1 input (B, C, 1, L): the same weight, viewed as
    (out, in, 1, k), runs as a 2-D convolution, which keeps a channels-last input in that
    layout. 3-D inputs run nn.Conv1d itself."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            return super().forward(x)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return to_channels_last(super().forward(from_channels_last(x)))
        return F.conv2d(x, self.weight.unsqueeze(2), self.bias, (1, self.stride[0]),
                        (0, self.padding[0]), (1, self.dilation[0]), self.groups)


class LayoutConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d that also takes a height-1 input (B, C, 1, L), as `LayoutConv1d`
    (weight (in, out / groups, k) viewed as (in, out / groups, 1, k))."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if x.dim() != 4:
            return super().forward(x, output_size)
        if output_size is not None or self.padding_mode != "zeros":
            return to_channels_last(super().forward(from_channels_last(x), output_size))
        return F.conv_transpose2d(
            x, self.weight.unsqueeze(2), self.bias, (1, self.stride[0]),
            (0, int(self.padding[0])), (0, int(self.output_padding[0])), self.groups,
            (1, self.dilation[0]))


class LayoutBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d that also takes a height-1 input (B, C, 1, L): the statistics are
    per channel over batch and length either way, so the numbers are the same."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() == 4 and input.size(2) == 1:
            return
        super()._check_input_dim(input)


def _act(kind: str) -> nn.Module:
    # In-place saves one activation-sized buffer per unit; safe because BN's output is not
    # needed by its own backward.
    if kind == "leaky":
        return nn.LeakyReLU(inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {kind!r}; valid: 'leaky', 'relu'")


class ConvBNAct(nn.Sequential):
    """Conv1d (no bias) -> BatchNorm1d -> activation, 'same' padding for odd kernels."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, act: str = "leaky"
    ) -> None:
        super().__init__(
            LayoutConv1d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            LayoutBatchNorm1d(out_ch),
            _act(act),
        )


class UpConvBNAct(nn.Sequential):
    """ConvTranspose1d stride 2 (no bias) -> BN -> LeakyReLU; exactly doubles the length."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__(
            LayoutConvTranspose1d(
                in_ch, out_ch, kernel, stride=2, padding=kernel // 2, output_padding=1, bias=False
            ),
            LayoutBatchNorm1d(out_ch),
            _act("leaky"),
        )


def _crop_to(x: Tensor, length: int) -> Tensor:
    """x[..., :length] (drops the one extra sample a decoder output may carry)."""
    if torch.compiler.is_compiling():
        # Under torch.export / torch.compile a slice would guard on whether a crop happens at
        # the example length and specialise the graph to it; index_select keeps the length
        # symbolic. Eager mode keeps the free view.
        return x.index_select(-1, torch.arange(length, device=x.device))
    return x[..., :length]


class HalveLength(nn.Module):
    """AvgPool1d(2) as the mean of the even and odd samples: the same numbers (a trailing
    odd sample is dropped, as the pool does), but a backward pass of two strided copies,
    where the pool's took 6-7% of a `seed` training step on an H200 (`make gpu-check`
    profile). Both slices have floor(L / 2) samples for any L, so export needs no guard."""

    def forward(self, x: Tensor) -> Tensor:
        return (x[..., :-1:2] + x[..., 1::2]) * 0.5


class ResUBlock(nn.Module):
    """Residual U-block of U-depth `depth` followed by AvgPool1d(2) and a 1x1 conv.

    conv_in (in -> width) gives x_in; `depth` stride-2 encoder convs (width -> mid, then
    mid -> mid); a stride-1 bottleneck conv; `depth` transposed-conv decoder stages, each on
    the concatenation with the matching encoder output (2*mid -> mid, last 2*mid -> width);
    the result is added to x_in, then the length is halved.

    Length rule (any input length works, with no padding): a stride-2 'same' conv maps n
    samples to ceil(n / 2) with output j centred on input 2j, and a decoder stage maps m to
    exactly 2m on the same grid, so each decoder output covers the tensor it meets next (the
    skip, finally x_in) plus at most one trailing sample, which is cropped. The design's
    "left-pad by 1 when the length is not divisible by 4" only lines the skips up for a few
    input lengths; both rules do nothing when every level's length is even (the seed at
    L = 4,096: 2,048 / 1,024 / 512 / 256 samples per block).
    """

    def __init__(self, in_ch: int, width: int, mid: int, depth: int, kernel: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"U-depth must be >= 1, got {depth}")
        self.depth = depth
        self.conv_in = ConvBNAct(in_ch, width, kernel)
        self.encoder = nn.ModuleList(
            ConvBNAct(width if i == 0 else mid, mid, kernel, stride=2) for i in range(depth)
        )
        self.bottleneck = ConvBNAct(mid, mid, kernel)
        self.decoder = nn.ModuleList(
            UpConvBNAct(2 * mid, width if i == depth - 1 else mid, kernel) for i in range(depth)
        )
        self.pool = HalveLength()
        self.proj = LayoutConv1d(width, width, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x_in, last = self.stages(x)
        h = _crop_to(self.decoder[-1](last), x_in.size(-1))
        return self.proj(self.pool(h + x_in))

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x_in and the input of the last decoder stage (its concatenation with the first
        encoder output): the export replaces only what follows (`onnx_rewrites`)."""
        x_in = self.conv_in(x)
        h = x_in
        inputs: list[Tensor] = []  # what each decoder output must match: x_in, e_1 .. e_{d-1}
        for enc in self.encoder:
            inputs.append(h)
            h = enc(h)
        skip = h
        h = self.bottleneck(h)
        for i in range(self.depth - 1):
            target = inputs[self.depth - 1 - i]
            h = _crop_to(self.decoder[i](torch.cat([h, skip], dim=1)), target.size(-1))
            skip = target
        return x_in, torch.cat([h, skip], dim=1)


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv (bottleneck * growth) - BN-ReLU-k3 conv (growth)."""

    def __init__(self, in_ch: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        inner = bottleneck * growth
        self.net = nn.Sequential(
            LayoutBatchNorm1d(in_ch),
            nn.ReLU(inplace=True),  # acts on BN's fresh output, never on the shared input
            LayoutConv1d(in_ch, inner, 1, bias=False),
            LayoutBatchNorm1d(inner),
            nn.ReLU(inplace=True),
            LayoutConv1d(inner, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DenseBlock(nn.Module):
    """`layers` dense layers; each sees the concatenation of the input and all earlier outputs."""

    def __init__(self, in_ch: int, layers: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + i * growth, growth, bottleneck) for i in range(layers)
        )
        self.out_channels = in_ch + layers * growth

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv; changes channels only (the length is kept, as in the seed)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            LayoutBatchNorm1d(in_ch), nn.ReLU(inplace=True),
            LayoutConv1d(in_ch, out_ch, 1, bias=False)
        )


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention over time on (B, C, T), returning (B, T, C).

    Same parameters as nn.MultiheadAttention(C, heads) (packed qkv and output projections,
    with biases) but calls scaled_dot_product_attention directly, which picks the fused
    kernel on every device and exports cleanly with a symbolic T.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        qkv = self.qkv(x.transpose(1, 2))  # (B, T, 3C)
        q, k, v = qkv.view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, C/H)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class GlobalMaxPool(nn.Module):
    """Max over the time axis: (B, T, C) -> (B, C) when `time_dim` is 1, (B, C, T) when 2."""

    def __init__(self, time_dim: int = 1) -> None:
        super().__init__()
        self.time_dim = time_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=self.time_dim)
