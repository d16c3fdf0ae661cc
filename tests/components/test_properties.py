"""Property tests: any valid small flat config builds, runs and round-trips."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgtune.components import FUSIONS, ModelConfig, build_model

GROUPS = [[0, 1, 2], [3, 4], [5, 6, 7]]


@st.composite
def small_flat_configs(draw) -> dict:
    heads = draw(st.sampled_from([1, 2, 4]))
    n_dense = draw(st.integers(1, 2))
    return {
        "stem.channels": draw(st.integers(2, 12)),
        "stem.kernel": draw(st.sampled_from([1, 3, 7, 15])),
        "stem.stride": draw(st.integers(1, 4)),
        "stem.shared": draw(st.booleans()),
        # MLflow-style strings half the time
        "branch.depths": draw(
            st.lists(st.integers(1, 6), min_size=1, max_size=4).map(
                lambda d: "-".join(map(str, d)) if len(d) % 2 else d
            )
        ),
        "branch.width": draw(st.integers(2, 12)),
        "branch.mid": draw(st.integers(1, 8)),
        "branch.kernel": draw(st.sampled_from([1, 3, 5, 9])),
        "branch.dense_layers": draw(
            st.lists(st.integers(1, 3), min_size=n_dense, max_size=n_dense)
        ),
        "branch.growth": draw(st.integers(1, 6)),
        "branch.bottleneck": draw(st.integers(1, 4)),
        "branch.compression": draw(st.sampled_from([0.5, 0.75, 1.0])),
        "branch.out_channels": heads * draw(st.integers(1, 4)),
        "branch.attention": draw(st.sampled_from([True, False, "true", "false"])),
        "branch.heads": heads,
        "branch.dropout": draw(st.sampled_from([0.0, 0.3, "0.5"])),
        "n_branches": draw(st.sampled_from([0, 1, 2, 3])),
        "fusion": draw(st.sampled_from(list(FUSIONS))),
        "fusion.hidden": draw(st.integers(1, 16)),
        "fusion.dropout": draw(st.sampled_from([0.0, 0.2])),
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flat=small_flat_configs())
def test_valid_flat_configs_build_and_run(flat):
    config = ModelConfig.from_flat(flat)
    assert ModelConfig.from_flat(config.to_flat()) == config
    assert ModelConfig.from_json(config.to_json()) == config
    if config.fusion == "independent" and config.n_branches not in (0, 1, len(GROUPS)):
        return  # rejected layout; covered by the validation tests
    model = build_model(config, num_labels=8, label_groups=GROUPS).eval()
    with torch.no_grad():
        for length in (1024, 1031):
            out = model(torch.randn(2, 12, length))
            assert out.shape == (2, 8) and torch.isfinite(out).all()
