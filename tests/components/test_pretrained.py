"""`branch.init`: a trunk's weights from a safetensors file the test writes itself."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ecgtune.components import (
    ModelConfig,
    build_model,
    get_preset,
    load_trunk_weights,
    save_trunk_weights,
    set_trunks_frozen,
)
from ecgtune.components.pretrained import frozen_parameters


@pytest.mark.parametrize("preset", ["tiny", "ssm-tiny"])
def test_every_branch_gets_the_file_trunk_and_stem(preset, tmp_path):
    torch.manual_seed(0)
    source = build_model(get_preset(preset), 20)
    path = tmp_path / "trunk.safetensors"
    save_trunk_weights(source, path)
    # the same trunk in a 4-branch model with its own stems, another head and fusion
    flat = {"n_branches": 4, "stem.shared": False, "fusion": "concat"}
    torch.manual_seed(1)
    target = build_model(ModelConfig.from_flat(flat, base=get_preset(preset)), 20)
    loaded = load_trunk_weights(target, path)
    assert loaded == [*(f"branch {i} trunk" for i in range(4)),
                      *(f"branch {i} stem" for i in range(4))]
    want = source.branches[0].trunk.state_dict()
    for branch in target.branches:
        got = branch.trunk.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert torch.equal(branch.stem.state_dict()["0.weight"], source.stem[0].weight)


def test_a_trunk_file_without_stem_leaves_the_stem(tmp_path):
    torch.manual_seed(0)
    source = build_model(get_preset("tiny"), 20)
    path = tmp_path / "trunk.safetensors"
    save_trunk_weights(source, path, stem=False)
    torch.manual_seed(1)
    target = build_model(get_preset("tiny"), 20)
    stem_before = target.stem[0].weight.clone()
    assert load_trunk_weights(target, path) == ["branch 0 trunk"]
    assert torch.equal(target.stem[0].weight, stem_before)


@pytest.mark.parametrize(("flat", "message"), [
    ({"branch.width": 24}, r"trunk of branch 0 \(ResUDenseTrunk\): \S+ has shape \(16,.*\), "
                           r"the model's \(24,"),
    ({"branch.kind": "ssm"}, r"trunk of branch 0 \(StateSpaceTrunk\): missing head.bias, "
                             r".*; unexpected dense"),
])
def test_a_file_that_does_not_fit_is_named(flat, message, tmp_path):
    path = tmp_path / "resu.safetensors"
    save_trunk_weights(build_model(get_preset("tiny"), 20), path)
    target = build_model(ModelConfig.from_flat(flat, base=get_preset("tiny")), 20)
    with pytest.raises(ValueError, match=rf"branch.init: {path} does not fit the .*{message}"):
        load_trunk_weights(target, path)


def test_missing_or_foreign_files_are_one_line(tmp_path):
    model = build_model(get_preset("tiny"), 20)
    with pytest.raises(ValueError, match=r"branch.init: .*nope.safetensors does not exist"):
        load_trunk_weights(model, tmp_path / "nope.safetensors")
    text = tmp_path / "weights.safetensors"
    text.write_text("not tensors")
    with pytest.raises(ValueError, match=r"is not a safetensors weights file"):
        load_trunk_weights(model, text)
    stray = tmp_path / "stray.safetensors"
    save_file({"foo": torch.zeros(2)}, str(stray))
    with pytest.raises(ValueError, match=r"unexpected foo"):
        load_trunk_weights(model, stray)


def test_frozen_trunks_keep_weights_and_statistics(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "trunk.safetensors"
    save_trunk_weights(build_model(get_preset("tiny"), 20), path)
    model = build_model(get_preset("tiny"), 20)
    load_trunk_weights(model, path)
    frozen = list(frozen_parameters(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.train()
    set_trunks_frozen(model, True)
    model(torch.randn(2, 12, 1024)).square().mean().backward()
    optimizer.step()
    after = model.state_dict()
    trunk_keys = [k for k in before if k.startswith(("branches.0.trunk.", "stem."))]
    assert trunk_keys and all(torch.equal(before[k], after[k]) for k in trunk_keys)
    assert not torch.equal(before["fusion.heads.0.weight"], after["fusion.heads.0.weight"])
    assert all(p.grad is None for p in frozen)
    set_trunks_frozen(model, False)
    model.train()
    model(torch.randn(2, 12, 1024)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(before["branches.0.trunk.ublocks.0.conv_in.0.weight"],
                           model.state_dict()["branches.0.trunk.ublocks.0.conv_in.0.weight"])
