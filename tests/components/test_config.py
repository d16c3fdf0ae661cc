"""ModelConfig: flat keys, string forms, round trips, validation messages."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from ecgtune.components import (
    FLAT_KEYS,
    FUSIONS,
    PRESETS,
    BranchConfig,
    ModelConfig,
    StemConfig,
    build_model,
    split_label_groups,
    validate,
)

EXPECTED_KEYS = [
    "stem.channels", "stem.kernel", "stem.stride", "stem.shared",
    "branch.depths", "branch.width", "branch.mid", "branch.kernel", "branch.dense_layers",
    "branch.growth", "branch.bottleneck", "branch.compression", "branch.out_channels",
    "branch.attention", "branch.heads", "branch.dropout",
    "branch.kind", "branch.ssm_state", "branch.ssm_layers",
    "input.fs", "input.leads",
    "n_branches", "fusion", "fusion.hidden", "fusion.dropout",
]  # fmt: skip


def test_flat_keys_are_the_search_space_names():
    assert list(FLAT_KEYS) == EXPECTED_KEYS
    assert list(ModelConfig().to_flat()) == EXPECTED_KEYS


def test_defaults_are_the_seed_network():
    flat = ModelConfig().to_flat()
    assert flat["branch.depths"] == [6, 5, 4, 3] and flat["branch.dense_layers"] == [16, 16]
    assert flat["stem.channels"] == 256 and flat["stem.kernel"] == 15 and flat["stem.stride"] == 2
    assert flat["n_branches"] == 0 and flat["fusion"] == "independent"
    assert json.loads(json.dumps(flat)) == flat  # JSON-friendly values


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json_and_flat(name):
    config = PRESETS[name]
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig.from_flat(config.to_flat()) == config
    assert ModelConfig.from_flat({k: str(v) for k, v in config.to_flat().items()}) == config
    assert hash(config) == hash(ModelConfig.from_json(config.to_json()))


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("branch.depths", "6-5-4-3", (6, 5, 4, 3)),
        ("branch.depths", "[6, 5, 4, 3]", (6, 5, 4, 3)),
        ("branch.depths", "(4, 3)", (4, 3)),
        ("branch.dense_layers", "16", (16,)),
        ("branch.dense_layers", [12, 12], (12, 12)),
        ("branch.attention", "true", True),
        ("branch.attention", "False", False),
        ("stem.shared", "TRUE", True),
        ("branch.width", "128", 128),
        ("branch.dropout", "0.25", 0.25),
        ("branch.compression", 1, 1.0),
        ("fusion.hidden", "512", 512),
        ("n_branches", "0", 0),
    ],
)
def test_from_flat_accepts_mlflow_and_yaml_forms(key, text, value):
    config = ModelConfig.from_flat({key: text})
    assert config.to_flat()[key] == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("branch.depths", "6-x-4", "branch.depths: expected ints like"),
        ("branch.depths", 6, "branch.depths: expected a list of ints"),
        ("branch.depths", [6, 0], "branch.depths: must be >= 1, got 0"),
        ("branch.depths", [], "branch.depths: must not be empty"),
        ("branch.depths", [6.0, 5.0], "branch.depths: expected an int"),
        ("branch.dense_layers", "[]", "branch.dense_layers: expected ints like"),
        ("branch.attention", "yes", "branch.attention: expected true/false"),
        ("branch.attention", 1, "branch.attention: expected a bool"),
        ("branch.width", "1.5", "branch.width: expected an int"),
        ("branch.width", 0, "branch.width: must be >= 1"),
        ("branch.width", True, "branch.width: expected an int"),
        ("branch.width", 128.0, "branch.width: expected an int"),
        ("branch.kernel", 8, "branch.kernel: must be odd"),
        ("stem.kernel", 14, "stem.kernel: must be odd"),
        ("branch.heads", 7, "not divisible by branch.heads=7"),
        ("branch.dropout", 1.0, r"branch.dropout: must be in \[0.0, 1.0\)"),
        ("branch.dropout", "abc", "branch.dropout: expected a number"),
        ("branch.compression", 0, "branch.compression: must be > 0"),
        ("fusion", "sum", "unknown fusion 'sum'; valid: independent, concat, attention, late"),
        ("fusion.dropout", float("nan"), "fusion.dropout: expected a finite number"),
        ("n_branches", -1, "n_branches: must be >= 0"),
        ("stem.stride", 128, "leave nothing of a 1024-sample input"),
    ],
)
def test_invalid_values_are_rejected_with_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_flat({key: value})


def test_heads_only_matter_with_attention():
    ModelConfig.from_flat({"branch.attention": False, "branch.heads": 7})


def test_compression_that_empties_a_transition_is_rejected():
    with pytest.raises(ValueError, match=r"branch\.compression: leaves transition 0 with 0"):
        BranchConfig(width=4, dense_layers=(1, 1), growth=1, compression=0.1)


def test_too_many_u_blocks_for_the_minimum_length():
    with pytest.raises(ValueError, match=r"branch\.depths"):
        ModelConfig(branch=BranchConfig(depths=(1,) * 10))


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'branch.depth'; valid keys: "
                       r"stem.channels, .*fusion.dropout"):  # fmt: skip
        ModelConfig.from_flat({"branch.depth": [6]})


def test_from_flat_sets_several_sections_at_once():
    config = ModelConfig.from_flat({"branch.depths": "3-2", "fusion": "late", "fusion.hidden": 64})
    assert config.branch.depths == (3, 2) and config.fusion == "late"
    assert config.fusion_hidden == 64 and config.stem == StemConfig()


def test_from_flat_with_a_base_keeps_other_fields():
    base = PRESETS["tiny"]
    changed = ModelConfig.from_flat({"branch.mid": 4}, base=base)
    assert changed.branch.mid == 4
    assert dataclasses.replace(changed.branch, mid=base.branch.mid) == base.branch


def test_a_config_imports_no_torch():
    # Plain data: the search's validator and the CLI parse configs without loading torch.
    code = (
        "import sys\n"
        "from ecgtune.components.config import FUSION_NAMES, ModelConfig\n"
        "from ecgtune.components import PRESETS, get_preset\n"
        "configs = [ModelConfig(fusion=f) for f in FUSION_NAMES] + [get_preset('seed')]\n"
        "assert ModelConfig.from_json(configs[-1].to_json()) == PRESETS['seed']\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_exports_what_it_lists():
    import ecgtune.components as components

    assert set(components.__all__) == set(components._EXPORTS)
    assert all(getattr(components, name) is not None for name in components.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        components.Nope  # noqa: B018


def test_from_json_is_strict():
    data = json.loads(ModelConfig().to_json())
    data["branch"]["extra"] = 1
    with pytest.raises(ValueError, match="unknown config key"):
        ModelConfig.from_json(json.dumps(data))
    del data["branch"]["extra"], data["stem"]
    with pytest.raises(ValueError, match="do not match the expected"):
        ModelConfig.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{")


def test_direct_construction_normalises_and_checks():
    assert BranchConfig(depths=[3, 2]).depths == (3, 2)  # lists become tuples
    with pytest.raises(ValueError, match="stem: expected a StemConfig"):
        ModelConfig(stem={"channels": 16})  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().n_branches = 2  # type: ignore[misc]


def test_validate_resolves_groups(seed20_groups):
    single = ModelConfig(n_branches=1)
    assert validate(single, 20) == [list(range(20))]
    # a single independent branch predicts every label whatever the grouping
    assert validate(single, 20, seed20_groups) == seed20_groups
    multi = ModelConfig(n_branches=4)
    assert [len(g) for g in validate(multi, 20)] == [5, 5, 5, 5]
    assert [len(g) for g in validate(ModelConfig(n_branches=3, fusion="concat"), 20)] == [7, 7, 6]
    assert validate(ModelConfig(), 20, seed20_groups) == seed20_groups  # n_branches=0
    assert split_label_groups(5, 2) == [[0, 1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("config", "groups", "message"),
    [
        (ModelConfig(n_branches=3), "seed20", "needs one branch per label group: n_branches=3"),
        (ModelConfig(), [[0, 1], [1, 2]], "every label index 0..19 exactly once"),
        (ModelConfig(), [[0], []], "every group must hold at least one label"),
        (ModelConfig(), [[0.0]], "label indices must be ints"),
        (ModelConfig(n_branches=21, fusion="late"), None, "21 branches need at least 21 labels"),
    ],
)
def test_validate_rejects_layouts(config, groups, message, seed20_groups):
    groups = seed20_groups if groups == "seed20" else groups
    with pytest.raises(ValueError, match=message):
        validate(config, 20, groups)
    with pytest.raises(ValueError, match=message):
        build_model(config, 20, groups)


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_every_fusion_accepts_one_branch_per_group(fusion, seed20_groups):
    assert validate(ModelConfig(fusion=fusion), 20, seed20_groups) == seed20_groups
