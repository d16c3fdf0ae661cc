"""The model's input (`input.fs`, `input.leads`): prep's polyphase filter as a strided
convolution, named lead subsets, configs with and without the input section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.signal import firwin, resample_poly
from torch import nn

from ecgtune.components import (
    LEAD_NAMES,
    LEAD_SETS,
    SOURCE_FS,
    InputConfig,
    InputFrontEnd,
    ModelConfig,
    build_model,
    count_parameters,
    get_preset,
)
from ecgtune.components.frontend import decimation_filter


@pytest.mark.parametrize("factor", [2, 5])
def test_filter_is_the_one_resample_poly_designs(factor):
    expected = firwin(20 * factor + 1, 1.0 / factor, window=("kaiser", 5.0))
    np.testing.assert_allclose(decimation_filter(factor), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("fs", [100, 250])
@pytest.mark.parametrize("length", [1000, 1023, 4096])
def test_front_end_matches_scipy_resample_poly(fs, length):
    rng = np.random.default_rng(length + fs)
    x = rng.standard_normal((2, 12, length)).cumsum(axis=-1) * 0.1  # ECG-like low frequencies
    front = InputFrontEnd(InputConfig(fs=fs))
    with torch.no_grad():
        got = front(torch.from_numpy(x.astype(np.float32))).numpy()
    expected = resample_poly(x, 1, SOURCE_FS // fs, axis=-1)  # prep's call, float64
    assert got.shape == expected.shape == (2, 12, -(-length // (SOURCE_FS // fs)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("leads", list(LEAD_SETS))
def test_lead_sets_select_their_leads_in_stored_order(leads):
    x = torch.arange(12, dtype=torch.float32)[None, :, None].expand(1, 12, 8)
    out = InputFrontEnd(InputConfig(fs=SOURCE_FS, leads=leads))(x) if leads != "all12" else x
    picked = [LEAD_NAMES[int(i)] for i in out[0, :, 0]]
    assert picked == list(LEAD_SETS[leads])


def test_a_model_reads_only_its_leads():
    config = ModelConfig.from_flat({"input.fs": 100, "input.leads": "limb6"},
                                   base=get_preset("tiny"))
    torch.manual_seed(0)
    model = build_model(config, 20).eval()
    assert model.stem[0].in_channels == 6
    x = torch.randn(2, 12, 1024)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 6, 1024)  # the precordial leads it does not read
    with torch.no_grad():
        assert torch.equal(model(x), model(y))
        assert not torch.equal(model(x), model(x + torch.randn_like(x)))


def test_stored_record_input_adds_nothing():
    seed = build_model(get_preset("seed"), 20)
    assert isinstance(seed.front, nn.Identity)
    assert count_parameters(seed) == 7_205_204
    at_100 = ModelConfig.from_flat({"input.fs": 100}, base=get_preset("seed"))
    model = build_model(at_100, 20)
    # The filter is rebuilt from the config, never stored: the same checkpoint keys.
    assert model.state_dict().keys() == seed.state_dict().keys()
    assert count_parameters(model) == 7_205_204


def test_configs_without_an_input_section_read_the_stored_record():
    config = get_preset("seed")
    data = json.loads(config.to_json())
    assert "input" not in data and "kind" not in data["branch"]  # the JSON configs always had
    assert ModelConfig.from_dict(data).input == InputConfig(fs=500, leads="all12")
    other = ModelConfig.from_flat({"input.fs": "250", "input.leads": "I-II"}, base=config)
    assert json.loads(other.to_json())["input"] == {"fs": 250, "leads": "I-II"}
    assert ModelConfig.from_json(other.to_json()) == other


@pytest.mark.parametrize(("flat", "message"), [
    ({"input.fs": 300}, r"input.fs: must divide the stored rate 500 Hz"),
    ({"input.fs": 20}, r"input.fs: must be >= 50"),
    ({"input.leads": "V1"}, r"input.leads: unknown lead set 'V1'; valid: all12, limb6"),
])
def test_bad_inputs_name_their_key(flat, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_flat(flat)


def test_length_check_follows_the_input_rate():
    # seven U-blocks leave 2 samples of a 1,024-sample input at 500 Hz, none at 100 Hz
    deep = {"branch.depths": "2-2-2-2-2-2-2", "stem.stride": 2}
    ModelConfig.from_flat(deep, base=get_preset("tiny"))
    with pytest.raises(ValueError, match=r"branch.depths: .*7 U-blocks.*\(100 Hz: input.fs\)"):
        ModelConfig.from_flat({**deep, "input.fs": 100}, base=get_preset("tiny"))
