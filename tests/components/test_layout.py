"""The channels-last layout (`set_layout`): the same function, gradients and parameters as
the `ncl` layout for every preset and fusion, and checkpoints that do not know which layout
trained them.

Equality is checked in float64, where both layouts agree to rounding (~1e-13): in float32
the deep `seed` nets' gradients differ visibly between *any* two summation orders (a near-tie
of the global max pool or a LeakyReLU at 0 routes a gradient elsewhere), so float32 would
test the chaos of the network, not the layout."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from torch import nn

from ecgtune.components import (
    LAYOUTS,
    PRESETS,
    build_model,
    count_parameters,
    get_preset,
    load_checkpoint,
    save_checkpoint,
    set_layout,
)
from ecgtune.components.blocks import (
    LayoutBatchNorm1d,
    LayoutConv1d,
    LayoutConvTranspose1d,
    from_channels_last,
    to_channels_last,
)

# sha256 (first 16 hex digits) of the "key:shape:dtype" lines of each preset's state dict at
# 20 labels, recorded from the code before the layouts existed: a checkpoint is that state
# dict, loaded strictly, so equal signatures mean every earlier checkpoint still loads.
STATE_SIGNATURES = {
    "seed": "bebaf0499989447f",
    "seed-multi": "62ad950c0facb6df",
    "tiny": "703e8bc4dbc667b6",
    "tiny-multi": "9606a9935787b826",
    "small": "652ecd4586248536",
    "ssm-small": "c729e761daefc1ad",
    "ssm-tiny": "2995b3f0557b5c1a",
}


def _signature(model: nn.Module) -> str:
    lines = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _assert_same_training_step(model: nn.Module, batch: int = 2, length: int = 1030) -> None:
    """One train-mode forward and backward in each layout, float64, the same dropout draws:
    outputs, input and parameter gradients and the batch norms' running statistics agree."""
    ncl = model.double().train()
    cl = copy.deepcopy(ncl)
    assert set_layout(cl, "channels_last") > 0
    x = torch.randn(batch, 12, length, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(1))
    results = []
    for net in (ncl, cl):
        xi = x.clone().requires_grad_()
        torch.manual_seed(7)  # dropout
        y = net(xi)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
        results.append((y.detach(), xi.grad))
    (y1, gx1), (y2, gx2) = results
    scale = y1.abs().max().item()
    assert (y1 - y2).abs().max().item() <= 1e-9 * max(scale, 1.0)
    assert (gx1 - gx2).abs().max().item() <= 1e-9 * max(gx1.abs().max().item(), 1e-12)
    for (name, p1), p2 in zip(ncl.named_parameters(), cl.parameters(), strict=True):
        assert p1.grad is not None and p2.grad is not None, name
        tol = 1e-9 * max(p1.grad.abs().max().item(), 1e-12)
        assert (p1.grad - p2.grad).abs().max().item() <= tol, name
    for (name, b1), b2 in zip(ncl.named_buffers(), cl.buffers(), strict=True):
        assert torch.allclose(b1.double(), b2.double(), rtol=1e-9, atol=1e-12), name


def test_every_small_preset_and_fusion_trains_the_same_in_both_layouts(matrix_case,
                                                                        model_factory):
    preset, fusion, own_stems = matrix_case
    _assert_same_training_step(model_factory(preset, fusion, own_stems))


@pytest.mark.slow  # float64 steps of the 7.2M- and 28.8M-parameter nets: ~5 s together
@pytest.mark.parametrize("preset", ["seed", "seed-multi", "ssm-small"])
def test_every_big_preset_trains_the_same_in_both_layouts(preset):
    torch.manual_seed(0)
    _assert_same_training_step(build_model(get_preset(preset), 20), length=1024)


def test_float32_forward_matches_within_float_rounding(model_factory):
    model = model_factory("small").eval()
    x = torch.randn(3, 12, 1500, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        set_layout(model, "channels_last")
        out = model(x)
        set_layout(model, "ncl")
        again = model(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(again, ref)  # switching back is the ncl model again


@pytest.mark.parametrize("preset", list(PRESETS))
def test_state_dict_and_parameter_count_do_not_depend_on_the_layout(preset):
    with torch.device("meta"):
        model = build_model(get_preset(preset), 20)
    set_layout(model, "channels_last")
    assert _signature(model) == STATE_SIGNATURES[preset]
    if preset == "seed":
        assert count_parameters(model) == 7_205_204


def test_a_checkpoint_trained_channels_last_loads_weights_only_into_an_ncl_model(tmp_path):
    torch.manual_seed(0)
    config = get_preset("tiny")
    model = build_model(config, 20)
    set_layout(model, "channels_last")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(4, 12, 1024)).sum().backward()
    optimizer.step()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config, num_labels=20, label_groups=None)
    loaded, _ = load_checkpoint(path)  # torch.load(..., weights_only=True)
    x = torch.randn(2, 12, 1024)
    model.eval()
    with torch.no_grad():
        assert not any(getattr(m, "channels_last", False) for m in loaded.modules())
        assert torch.allclose(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_layout_layers_run_2d_on_height_one_tensors_and_1d_otherwise():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 37, dtype=torch.float64)
    x4 = to_channels_last(x)
    assert x4.shape == (2, 6, 1, 37) and x4.is_contiguous(memory_format=torch.channels_last)
    assert to_channels_last(from_channels_last(x4)).data_ptr() == x4.data_ptr()  # a view
    layers = [LayoutConv1d(6, 4, 5, stride=2, padding=2, bias=True),
              LayoutConvTranspose1d(6, 4, 9, stride=2, padding=4, output_padding=1),
              LayoutBatchNorm1d(6)]
    for layer in layers:
        layer.double()
        y = layer(x)
        y4 = layer(x4)
        assert y4.dim() == 4 and torch.allclose(from_channels_last(y4), y, atol=1e-12)


def test_unknown_layout_is_refused_with_the_valid_ones():
    model = build_model(get_preset("tiny"), 20)
    with pytest.raises(ValueError, match="unknown layout 'nhwc'; valid: ncl, channels_last"):
        set_layout(model, "nhwc")
    assert LAYOUTS == ("ncl", "channels_last")
