"""`--set` on a conditional key of a shipped space: with its condition it pins both; alone it
pins (or limits) its condition too, which the start-up line says, or it is refused in one line.

Fast tier: parsing, sampling and the model's layout checks only; no Ray, no data.
"""

from __future__ import annotations

from typing import Any

import pytest

from ecgtune.data_prep import get_label_map
from ecgtune.search.errors import SearchOptionError
from ecgtune.search.run import SearchOptions, startup_line
from ecgtune.search.space import (
    Param,
    SearchSpace,
    builtin_spaces,
    load_space,
    parse_space,
    validate_point,
)
from ecgtune.search.validation import condition_pins, typed_pins, validate_options

LABELS = get_label_map("seed20")
GROUPS = LABELS.group_indices()
GROUP_NAMES = [n.lower() for n in LABELS.group_names]

CONDITIONAL = [(name, p.name) for name in builtin_spaces() for p in load_space(name).params
               if p.when]


def test_every_shipped_space_has_conditional_keys_to_check():
    # The parametrised tests below walk these; an empty list would pass them vacuously.
    assert {name for name, _ in CONDITIONAL} == set(builtin_spaces())


def _param(space: SearchSpace, key: str) -> Param:
    return next(p for p in space.params if p.name == key)


def _value(param: Param) -> Any:
    if param.kind == "choice":
        return param.args[-1]
    low, high = param.args
    return (low + high) / 2 if param.kind in ("uniform", "loguniform") else low


def _conditions(space: SearchSpace, key: str) -> dict[str, Any]:
    """A value for the key's condition (and that condition's own), as `--set` text."""
    out: dict[str, Any] = {}
    for cond, allowed in _param(space, key).when:
        out[cond] = allowed[0]
        out.update(_conditions(space, cond))
    return out


def _opts(tmp_path, space: str, overrides: dict[str, Any]) -> SearchOptions:
    return SearchOptions(data=tmp_path, space=space, storage=str(tmp_path / "ray"),
                         overrides={k: str(v) for k, v in overrides.items()})


def _valid_trials(space: SearchSpace, seeds: int = 8) -> list[dict[str, Any]]:
    """The flat configs of those sampled points the seed20 label map can build."""
    out = []
    for seed in range(seeds):
        sampled = space.sample(seed)
        try:
            validate_point(space, sampled, len(LABELS), GROUPS, GROUP_NAMES)
        except ValueError:
            continue
        out.append(space.trial_flat(sampled))
    return out


def _same(a: Any, b: Any) -> bool:
    text = "-".join(map(str, a)) if isinstance(a, list | tuple) else a
    return text == b or str(text) == str(b)


@pytest.mark.parametrize(("space_name", "key"), CONDITIONAL,
                         ids=[f"{s}:{k}" for s, k in CONDITIONAL])
def test_a_conditional_key_pinned_with_its_condition(tmp_path, space_name, key):
    space = load_space(space_name)
    value = _value(_param(space, key))
    conditions = _conditions(space, key)
    validated = validate_options(_opts(tmp_path, space_name, {key: value, **conditions}))
    assert validated.implied == () and dict(validated.unused) == {}
    trials = _valid_trials(validated.space)
    assert trials, "no sampled point builds a model"
    for flat in trials:
        assert _same(flat[key], value)
        for cond, cond_value in conditions.items():
            assert _same(flat[cond], cond_value)


@pytest.mark.parametrize(("space_name", "key"), CONDITIONAL,
                         ids=[f"{s}:{k}" for s, k in CONDITIONAL])
def test_a_conditional_key_pinned_alone_brings_its_condition(tmp_path, space_name, key):
    space = load_space(space_name)
    param = _param(space, key)
    value = _value(param)
    opts = _opts(tmp_path, space_name, {key: value})
    # Every shipped condition has a value under which its key applies, so none is refused
    # (a refusal is one line: see the test with a space that never samples it).
    validated = validate_options(opts)
    implied = {i.key: i for i in validated.implied}
    assert set(implied) == {cond for cond, _ in param.when}
    line = startup_line(opts, validated, 4)
    trials = _valid_trials(validated.space)
    assert trials, "no sampled point builds a model"
    for cond, allowed in param.when:
        assert f"implied: the space samples {key} only then" in line
        assert cond in line
        for flat in trials:
            assert any(_same(flat[cond], v) for v in allowed), (cond, flat[cond], allowed)
    for flat in trials:
        assert _same(flat[key], value)


def test_the_tiny_per_branch_key_pins_one_branch_per_group(tmp_path):
    # With one branch a per-branch key cannot apply: pinned alone, it brings n_branches=0.
    opts = _opts(tmp_path, "tiny", {"branches.rhythm.depths": "3-2"})
    validated = validate_options(opts)
    assert validated.pins == {"branches.rhythm.depths": [3, 2]}
    assert [(i.key, i.pinned) for i in validated.implied] == [("n_branches", 0)]
    assert "n_branches=0 (implied: the space samples branches.rhythm.depths only then)" in \
        startup_line(opts, validated, 4)
    for flat in _valid_trials(validated.space, seeds=4):
        assert flat["n_branches"] == 0
    # A per-branch value equal to the shared depths is a pin like any other, not a KeyError.
    both = validate_options(_opts(tmp_path, "tiny", {"branches.rhythm.depths": "3-2",
                                                     "n_branches": "0"}))
    assert both.pins == {"branches.rhythm.depths": [3, 2], "n_branches": 0}


def test_a_condition_with_several_values_is_limited_not_pinned(tmp_path):
    opts = _opts(tmp_path, "tiny", {"fusion.hidden": "16"})
    validated = validate_options(opts)
    assert validated.space.fixed["fusion.hidden"] == 16
    assert _param(validated.space, "fusion").args == ("concat", "attention")
    assert "fusion limited to concat, attention (implied" in startup_line(opts, validated, 4)
    for seed in range(6):
        assert validated.space.sample(seed)["fusion"] in ("concat", "attention")


def test_a_pin_that_rules_out_another_pins_condition_is_marked_unused(tmp_path):
    opts = _opts(tmp_path, "tiny", {"fusion.hidden": "16", "fusion": "independent"})
    validated = validate_options(opts)
    assert validated.implied == ()
    assert "fusion.hidden=16 (not searched; the space samples choice [16, 32]) (unused: the " \
        "space samples fusion.hidden only when fusion is one of concat, attention)" in \
        startup_line(opts, validated, 4)


def test_a_condition_no_value_of_which_qualifies_is_refused_in_one_line():
    space = parse_space(
        "base: tiny\nparams:\n"
        "  fusion: {choice: [independent, late]}\n"
        "  fusion.hidden: {choice: [16, 32], when: {fusion: [concat]}}\n",
        name="never.yaml",
    )
    with pytest.raises(SearchOptionError) as info:
        condition_pins(space, typed_pins(space, {"fusion.hidden": "16"}))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--set fusion.hidden=16: the space samples fusion.hidden only "
                              "when fusion is concat")
    assert "pin fusion too" in message


def test_conditions_are_made_to_hold_down_a_chain():
    space = parse_space(
        "base: tiny\nparams:\n"
        "  fusion: {choice: [independent, concat, attention]}\n"
        "  fusion.hidden: {choice: [16, 32], when: {fusion: [concat, attention]}}\n"
        "  fusion.dropout: {uniform: [0.0, 0.5], when: {fusion.hidden: [32]}}\n"
        "points_to_evaluate: [{fusion: independent}, {fusion: concat, fusion.hidden: 32}]\n",
        name="chain.yaml",
    )
    limited, implied, _ = condition_pins(space, typed_pins(space, {"fusion.dropout": "0.1"}))
    assert [(i.key, i.values) for i in implied] == [
        ("fusion.hidden", (32,)), ("fusion", ("concat", "attention"))]
    assert _param(limited, "fusion").args == ("concat", "attention")
    # The warm-start point outside the limit is dropped; the other stays.
    assert limited.points_to_evaluate == ({"fusion": "concat", "fusion.hidden": 32},)
