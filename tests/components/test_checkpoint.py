"""Checkpoint helpers: weights-only files, strict loading, metadata, misuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgtune.components import (
    build_model,
    checkpoint_state,
    get_preset,
    load_checkpoint,
    model_from_state,
    save_checkpoint,
)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_model(get_preset("tiny"), 20).eval()


def test_none_groups_are_stored_resolved(tiny, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny, tiny.config, num_labels=20, label_groups=None)
    _, meta = load_checkpoint(path)
    assert meta.label_groups == [list(range(20))] and meta.extra == {}


def test_extra_may_hold_tensors_and_nested_plain_values(tiny, tmp_path):
    path = tmp_path / "m.pt"
    extra = {"epoch": 4, "history": [{"loss": 0.5}], "opt": {0: torch.ones(2)}, "note": None}
    save_checkpoint(path, tiny, tiny.config, num_labels=20, label_groups=None, extra=extra)
    _, meta = load_checkpoint(path)
    assert meta.extra["history"] == [{"loss": 0.5}] and torch.equal(
        meta.extra["opt"][0], torch.ones(2)
    )


def test_extra_with_non_plain_values_fails_at_save(tiny, tmp_path):
    with pytest.raises(TypeError, match=r"extra\['step'\]: int64 cannot be stored"):
        save_checkpoint(
            tmp_path / "m.pt", tiny, tiny.config, num_labels=20, label_groups=None,
            extra={"step": np.int64(3)},
        )  # fmt: skip
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_metadata_must_match_the_model(tiny, tmp_path):
    with pytest.raises(ValueError, match="differ from those the model was built with"):
        save_checkpoint(
            tmp_path / "m.pt", tiny, get_preset("small"), num_labels=20, label_groups=None
        )


def test_loading_is_strict(tiny):
    state = checkpoint_state(tiny, tiny.config, num_labels=20, label_groups=None)
    del state["state_dict"]["fusion.heads.0.bias"]
    with pytest.raises(RuntimeError, match="Missing key"):
        model_from_state(state)
    with pytest.raises(ValueError, match="not a components checkpoint"):
        model_from_state({"format": "other"})


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_model_saves_like_the_original(tiny, tmp_path):
    compiled = torch.compile(tiny)  # compiles lazily; never run here
    assert compiled is not tiny
    path = tmp_path / "m.pt"
    save_checkpoint(path, compiled, tiny.config, num_labels=20, label_groups=None)
    loaded, _ = load_checkpoint(path)
    assert loaded.state_dict().keys() == tiny.state_dict().keys()


def test_model_from_state_in_memory(tiny):
    x = torch.randn(2, 12, 1024)
    state = checkpoint_state(tiny, tiny.config, num_labels=20, label_groups=None, extra={"a": 1})
    model, meta = model_from_state(state)
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))
    assert meta.extra == {"a": 1}
