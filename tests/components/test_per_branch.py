"""Per-branch architectures: `branches.<group>.<field>` overrides of the shared branch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ecgtune.components import (
    BRANCH_FIELDS,
    FUSIONS,
    PRESETS,
    BranchConfig,
    BranchOverride,
    ModelConfig,
    build_model,
    count_parameters,
    get_preset,
    load_checkpoint,
    save_checkpoint,
    validate,
)

GROUPS = [list(range(0, 5)), list(range(5, 10)), list(range(10, 16)), list(range(16, 20))]
NAMES = ["Rhythm", "Duration", "Amplitude", "Morphology"]  # as the label map spells them


def _hetero(**extra) -> ModelConfig:
    """tiny-multi with a deeper rhythm trunk and a narrower morphology one."""
    return ModelConfig.from_flat(
        {"branches.rhythm.depths": "3-2-2", "branches.morphology.width": 8, **extra},
        base=get_preset("tiny-multi"),
    )


def test_override_fields_mirror_branch_config():
    assert tuple(f.name for f in dataclasses.fields(BranchOverride)) == BRANCH_FIELDS
    assert BRANCH_FIELDS == tuple(f.name for f in dataclasses.fields(BranchConfig))


def test_presets_have_no_per_branch_settings():
    assert all(p.branches == () for p in PRESETS.values())
    assert "branches" not in get_preset("seed-multi").to_dict()
    assert count_parameters(build_model(get_preset("seed"), 20)) == 7_205_204


def test_flat_and_json_round_trips_carry_per_branch_values():
    config = _hetero()
    flat = config.to_flat()
    assert flat["branches.rhythm.depths"] == [3, 2, 2]
    assert flat["branches.morphology.width"] == 8
    assert ModelConfig.from_flat(flat) == config
    assert ModelConfig.from_json(config.to_json()) == config
    assert config.branch_for("rhythm").depths == (3, 2, 2)
    assert config.branch_for("rhythm").width == config.branch.width  # unset: inherited
    assert config.branch_for("duration") == config.branch
    # A later change of the shared branch reaches every field a group did not set.
    wider = ModelConfig.from_flat({"branch.width": 24}, base=config)
    assert wider.branch_for("rhythm").width == 24
    assert wider.branch_for("morphology").width == 8


def test_an_override_equal_to_the_shared_value_is_no_override():
    base = get_preset("seed-multi")
    same = ModelConfig.from_flat({"branches.rhythm.depths": "6-5-4-3"}, base=base)
    assert same == base and same.branches == ()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("branches.rhythm.nope", 1, "unknown branch field 'nope'"),
        ("branches.Rhythm.depths", "3-2", "lower-case group name"),
        ("branches.rhythm", 1, "branches.<group>.<field>"),
        ("branches.rhythm.depths", "3-x", "branches.rhythm.depths"),
        ("branches.rhythm.width", 0, "branches.rhythm.width: must be >= 1"),
    ],
)
def test_bad_per_branch_keys_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ModelConfig.from_flat({key: value}, base=get_preset("tiny-multi"))


def test_layout_checks_need_named_groups_one_branch_each():
    config = _hetero()
    with pytest.raises(ValueError, match="group names"):
        validate(config, 20, GROUPS)
    with pytest.raises(ValueError, match="unknown label group 'morphology'"):
        validate(config, 20, GROUPS, ["a", "b", "c", "d"])
    single = ModelConfig.from_flat({"n_branches": 1, "fusion": "concat"}, base=config)
    with pytest.raises(ValueError, match="one branch per label group"):
        validate(single, 20, GROUPS, NAMES)
    assert validate(config, 20, GROUPS, NAMES) == GROUPS


def test_each_branch_gets_its_own_architecture():
    model = build_model(_hetero(), 20, GROUPS, NAMES)
    blocks = [len(b.trunk.ublocks) for b in model.branches]
    assert blocks == [3, 2, 2, 2]
    sizes = [count_parameters(b) for b in model.branches]
    assert sizes[0] > sizes[1] == sizes[2] > sizes[3]  # deeper rhythm, narrower morphology


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_heterogeneous_model_contract(fusion, tmp_path):
    """Every fusion over branches of different depth and width: shapes, gradients, and a
    checkpoint that rebuilds the same model from itself alone."""
    config = _hetero(fusion=fusion, **{"branches.amplitude.out_channels": 12,
                                       "branches.amplitude.heads": 3})
    torch.manual_seed(0)
    model = build_model(config, 20, GROUPS, NAMES)
    x = torch.randn(3, 12, 1100)
    model.train()
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 20) and torch.isfinite(out).all()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, config, num_labels=20, label_groups=GROUPS)
    rebuilt, meta = load_checkpoint(path)
    assert meta.config == config and meta.group_names == [n.lower() for n in NAMES]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
