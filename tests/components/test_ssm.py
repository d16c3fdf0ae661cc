"""The state-space trunk (`branch.kind: ssm`): the S4D kernel against its complex formula,
the FFT convolution against the direct one, both directions, configs and presets."""

from __future__ import annotations

import json

import pytest
import torch

from ecgtune.components import (
    BranchConfig,
    ModelConfig,
    StateSpaceTrunk,
    build_model,
    count_parameters,
    get_preset,
)
from ecgtune.components.ssm import S4DKernel, direct_conv, fft_conv, fft_size


def _reference_kernel(kernel: S4DKernel, length: int) -> torch.Tensor:
    """S4D's kernel in complex float64: K[l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n
    exp(dt A_n l))."""
    dt = kernel.log_dt.double().exp()[:, None]
    a = torch.complex(-kernel.log_a_real.double().exp(), kernel.a_imag.double())
    c = torch.complex(kernel.c[..., 0].double(), kernel.c[..., 1].double())
    c = c * (torch.exp(a * dt) - 1) / a
    steps = torch.arange(length, dtype=torch.float64)
    return 2 * torch.einsum("dhp,hpl->dhl", c, torch.exp((a * dt)[..., None] * steps)).real


@pytest.mark.parametrize("length", [1, 2, 17, 1000])
def test_kernel_matches_the_complex_formula(length):
    torch.manual_seed(0)
    kernel = S4DKernel(6, 16)
    with torch.no_grad():
        got = kernel(length).double()
        expected = _reference_kernel(kernel, length)
    assert got.shape == (2, 6, length)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("length", [1, 5, 64, 301])
def test_fft_convolution_is_the_direct_one(length):
    torch.manual_seed(length)
    u = torch.randn(2, 4, length)
    k_fwd, k_bwd = torch.randn(4, length), torch.randn(4, length)
    torch.testing.assert_close(fft_conv(u, k_fwd, k_bwd), direct_conv(u, k_fwd, k_bwd),
                               rtol=0, atol=1e-4)
    assert fft_size(length) >= 2 * length and fft_size(length) & (fft_size(length) - 1) == 0


def test_convolution_looks_both_ways():
    torch.manual_seed(0)
    u = torch.zeros(1, 1, 32)
    u[0, 0, 16] = 1.0
    k_fwd, k_bwd = torch.rand(1, 32) + 0.1, torch.rand(1, 32) + 0.1
    y = fft_conv(u, k_fwd, k_bwd)[0, 0]
    torch.testing.assert_close(y[16:], k_fwd[0, :16])  # what follows the impulse
    torch.testing.assert_close(y[:16].flip(0), k_bwd[0, :16])  # what precedes it


def test_trunk_takes_any_length_and_pools():
    torch.manual_seed(0)
    config = BranchConfig(kind="ssm", width=8, ssm_state=4, ssm_layers=2, out_channels=5)
    trunk = StateSpaceTrunk(3, config).eval()
    with torch.no_grad():
        for length in (1, 7, 512):
            out = trunk(torch.randn(2, 3, length))
            assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_bf16_autocast_keeps_the_kernel_in_float32():
    torch.manual_seed(0)
    model = build_model(get_preset("ssm-tiny"), 20).eval()
    x = torch.randn(2, 12, 1024)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 0.05


def test_presets_sizes():
    small = build_model(get_preset("ssm-small"), 20)
    assert isinstance(small.branches[0].trunk, StateSpaceTrunk)
    assert 200_000 <= count_parameters(small) <= 1_000_000  # vs the seed's 7.2M
    assert count_parameters(build_model(get_preset("ssm-tiny"), 20)) <= 20_000


def test_ssm_config_json_and_checks():
    config = get_preset("ssm-tiny")
    data = json.loads(config.to_json())
    assert data["branch"]["kind"] == "ssm" and data["branch"]["ssm_state"] == 8
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=r"branch.ssm_state: must be even"):
        ModelConfig.from_flat({"branch.ssm_state": 7}, base=config)
    with pytest.raises(ValueError, match=r"branch.kind: unknown kind 'mamba'; valid: resu, ssm"):
        ModelConfig.from_flat({"branch.kind": "mamba"})
    # resu-only rules do not bind a state-space branch: 16 channels, 6 attention heads
    odd_heads = {"branch.heads": 6, "branch.attention": True}
    ModelConfig.from_flat(odd_heads, base=config)
    with pytest.raises(ValueError, match=r"branches.rhythm.heads"):
        ModelConfig.from_flat({**odd_heads, "branches.rhythm.kind": "resu"}, base=config)


def test_inference_reuses_the_kernel_until_the_weights_change():
    torch.manual_seed(0)
    model = build_model(get_preset("ssm-tiny"), 20).eval()
    layer = model.branches[0].trunk.layers[0]
    x = torch.randn(2, 12, 1024)
    with torch.no_grad():
        first = model(x)
        cached = layer._cache
        assert cached is not None and torch.equal(model(x), first)
        assert layer._cache is cached  # the same length and weights: not recomputed
    with torch.enable_grad():  # training computes it afresh, and agrees
        torch.testing.assert_close(model(x), first, rtol=0, atol=1e-6)
    with torch.no_grad():
        layer.kernel.log_dt += 0.5  # an optimizer step changes the weights in place
        changed = model(x)
    assert layer._cache is not cached and not torch.allclose(changed, first)
    with torch.enable_grad():
        torch.testing.assert_close(model(x), changed, rtol=0, atol=1e-6)
