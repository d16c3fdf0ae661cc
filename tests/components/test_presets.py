"""The shipped presets, the reference seed network in particular."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecgtune.components import (
    PRESETS,
    build_model,
    count_parameters,
    get_preset,
)
from ecgtune.components.blocks import DenseBlock, ResUBlock, TemporalSelfAttention, Transition

SEED_PARAMS = 7_205_204


def test_get_preset_unknown_lists_names():
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid: seed, seed-multi, tiny"):
        get_preset("nope")


@pytest.mark.parametrize("groups", [None, "seed20"])
def test_seed_has_the_reference_parameter_count(groups, seed20_groups):
    model = build_model(get_preset("seed"), 20, seed20_groups if groups else None)
    assert count_parameters(model) == SEED_PARAMS
    assert len(model.branches) == 1


def test_seed_layers_follow_the_design():
    model = build_model(get_preset("seed"), 20)
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        12,
        256,
        (15,),
        (2,),
        (7,),
    )
    trunk = model.branches[0].trunk
    assert [b.depth for b in trunk.ublocks if isinstance(b, ResUBlock)] == [6, 5, 4, 3]
    channels = [m.out_channels for m in trunk.dense if isinstance(m, DenseBlock)]
    transitions = [m[2].out_channels for m in trunk.dense if isinstance(m, Transition)]
    assert channels == [448, 416] and transitions == [224, 256]
    assert isinstance(trunk.attention, TemporalSelfAttention) and trunk.attention.heads == 8
    assert all(
        m.bias is None for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))
    )
    head = model.fusion.heads[0]
    assert (head.in_features, head.out_features) == (256, 20)


def test_seed_forward_at_4096():
    torch.manual_seed(0)
    model = build_model(get_preset("seed"), 20).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 12, 4096))
    assert out.shape == (2, 20) and torch.isfinite(out).all()


def test_seed_multi_is_four_seed_networks(seed20_groups):
    model = build_model(get_preset("seed-multi"), 20, seed20_groups)
    assert len(model.branches) == 4
    assert all(not isinstance(b.stem, nn.Identity) for b in model.branches)
    # four seed networks minus their 256 -> 20 heads, plus heads of 5 + 5 + 6 + 4 outputs
    assert count_parameters(model) == 4 * (SEED_PARAMS - 257 * 20) + 257 * 20
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 12, 1024))
    assert out.shape == (1, 20) and torch.isfinite(out).all()


def test_small_presets_are_small():
    tiny = count_parameters(build_model(get_preset("tiny"), 20))
    small = count_parameters(build_model(get_preset("small"), 20))
    assert 2_000 <= tiny <= 50_000
    assert 100_000 <= small <= 300_000


def test_seed_exports_with_symbolic_length(export):
    # seed-multi (four such trunks, ~4x the export time) is left out to keep the suite short;
    # its other pieces (own stems, independent heads) export in the contract tests
    torch.manual_seed(0)
    model = build_model(PRESETS["seed"], 20).eval()
    exported = export(model, 1024).module()
    with torch.no_grad():
        for batch, length in ((2, 1024), (1, 1283)):
            x = torch.randn(batch, 12, length)
            torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=1e-5)
