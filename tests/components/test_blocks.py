"""Building blocks: length rule of the residual U-block, dense blocks, attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecgtune.components import count_parameters
from ecgtune.components.blocks import (
    DenseBlock,
    GlobalMaxPool,
    ResUBlock,
    TemporalSelfAttention,
    Transition,
)


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_u_block_halves_every_length(depth):
    torch.manual_seed(0)
    block = ResUBlock(3, 4, 2, depth, kernel=9).eval()
    with torch.no_grad():
        for n in range(2, 150):
            assert block(torch.randn(1, 3, n)).shape == (1, 4, n // 2), n


def test_u_block_grid_is_anchored_at_the_first_sample():
    """Lengths only change what happens at the right end: a longer input gives the same
    leading outputs, so odd lengths never shift skips against each other."""
    torch.manual_seed(0)
    block = ResUBlock(3, 4, 2, 4, kernel=9).eval()
    x = torch.randn(1, 3, 1200)
    with torch.no_grad():
        ref = block(x[..., :1024])
        for n in (1025, 1027, 1031, 1100, 1200):
            torch.testing.assert_close(block(x[..., :n])[..., :400], ref[..., :400])


def test_u_block_parameters_match_the_layer_description():
    width, mid, k, depth = 256, 64, 9, 6
    bn = lambda c: 2 * c  # noqa: E731
    expected = (
        width * width * k + bn(width)  # conv_in
        + width * mid * k + bn(mid) + (depth - 1) * (mid * mid * k + bn(mid))  # encoder
        + mid * mid * k + bn(mid)  # bottleneck
        + (depth - 1) * (2 * mid * mid * k + bn(mid)) + 2 * mid * width * k + bn(width)  # dec
        + width * width  # 1x1 conv after pooling
    )  # fmt: skip
    assert count_parameters(ResUBlock(width, width, mid, depth, k)) == expected


def test_dense_block_and_transition_channels():
    block = DenseBlock(256, 16, growth=12, bottleneck=4)
    x = torch.randn(2, 256, 32)
    y = block(x)
    assert block.out_channels == 448 and y.shape == (2, 448, 32)
    assert torch.equal(y[:, :256], x)  # input passes through the concatenation untouched
    assert Transition(448, 224)(y).shape == (2, 224, 32)


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = TemporalSelfAttention(32, 4).eval()
    ref = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    assert count_parameters(ours) == count_parameters(ref)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
        x = torch.randn(2, 32, 50)  # (B, C, T)
        seq = x.transpose(1, 2)
        expected, _ = ref(seq, seq, seq, need_weights=False)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible by heads 3"):
        TemporalSelfAttention(32, 3)


def test_global_max_pool():
    x = torch.randn(2, 5, 7)
    assert torch.equal(GlobalMaxPool(time_dim=2)(x), x.amax(dim=2))
    assert GlobalMaxPool()(x).shape == (2, 7)


@pytest.mark.parametrize("length", [2, 3, 8, 9, 2048, 2049])
def test_halve_length_is_avgpool2_forward_and_backward(length):
    from ecgtune.components.blocks import HalveLength

    x = torch.randn(2, 4, length, requires_grad=True)
    ours, pool = HalveLength()(x), nn.AvgPool1d(2)(x)
    assert torch.equal(ours, pool)
    g = torch.randn_like(pool)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_pool,) = torch.autograd.grad(pool, x, g)
    assert torch.equal(grad_ours, grad_pool)
