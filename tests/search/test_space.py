"""Search spaces: YAML -> sampled point -> flat dict -> ModelConfig/TrialConfig."""

from __future__ import annotations

import optuna
import pytest

from ecgtune.components import ModelConfig, get_preset, validate
from ecgtune.search.config import TrialConfig
from ecgtune.search.errors import SpaceError
from ecgtune.search.searcher import ValidatingSearcher, build_searcher
from ecgtune.search.space import builtin_spaces, load_space, parse_space

GROUPS = [list(range(0, 5)), list(range(5, 10)), list(range(10, 16)), list(range(16, 20))]
NAMES = ["Rhythm", "Duration", "Amplitude", "Morphology"]


def test_shipped_spaces_load():
    names = builtin_spaces()
    assert {"default", "tiny"} <= set(names)
    for name in names:
        space = load_space(name)
        assert space.params, name


def test_default_space_50_seeded_samples_map_onto_model_config():
    space = load_space("default")
    seen_fusions = set()
    for seed in range(50):
        sampled = space.sample(seed)
        flat = space.trial_flat(sampled)
        trial = TrialConfig.from_flat(flat)
        validate(trial.model, 20, GROUPS, NAMES)
        # The flat dict round-trips: the same keys rebuild the same config.
        assert ModelConfig.from_flat(trial.model.to_flat()) == trial.model
        assert TrialConfig.from_flat(trial.to_flat()) == trial
        for key, value in sampled.items():
            if key.startswith("branches."):  # one group's trunk; equal to shared: no override
                _, group, name = key.split(".")
                expected = ModelConfig.from_flat({f"branch.{name}": value}).branch
                assert getattr(trial.model.branch_for(group), name) == getattr(expected, name)
            elif not key.startswith("train."):
                expected = ModelConfig.from_flat({key: value}).to_flat()[key]
                assert trial.model.to_flat()[key] == expected
        seen_fusions.add(trial.model.fusion)
    assert seen_fusions == {"independent", "concat", "attention", "late"}


def test_sampling_is_deterministic_for_a_seed():
    space = load_space("default")
    assert space.sample(3) == space.sample(3)
    assert any(space.sample(3) != space.sample(s) for s in range(4, 8))


def test_conditional_params_only_when_their_condition_holds():
    space = load_space("default")
    for seed in range(40):
        sampled = space.sample(seed)
        assert ("fusion.hidden" in sampled) == (sampled["fusion"] in ("concat", "attention"))
        assert ("train.focal_gamma" in sampled) == (sampled["train.loss"] == "focal")
        assert ("branches.rhythm.depths" in sampled) == (sampled["n_branches"] == 4)


def test_shipped_spaces_search_a_per_branch_key():
    # Not `demo`: its four-branch models would double its trials' cost, and the demo has a
    # three-minute budget; `tiny` carries the key through the test suite's searches instead.
    for name in ("default", "tiny"):
        space = load_space(name)
        keys = [k for k in space.param_names if k.startswith("branches.")]
        assert keys, name
        hits = [s for s in map(space.sample, range(30)) if set(keys) & set(s)]
        assert hits, f"{name}: no sampled point used its per-branch keys"
        for point in hits:  # sampled only where each group has its own branch
            trial = space.trial_config(point)
            validate(trial.model, 20, GROUPS, NAMES)
            assert trial.model.n_branches in (0, 4)


def test_space_rejects_a_malformed_per_branch_key():
    with pytest.raises(SpaceError, match="unknown branch field 'deep'"):
        parse_space("base: tiny-multi\nparams: {branches.rhythm.deep: {choice: [1]}}")


def test_define_by_run_returns_a_complete_config_without_overriding_samples():
    space = load_space("tiny")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    constants = space.define_by_run()(trial)
    assert not set(constants) & set(trial.params)
    full = {**trial.params, **constants}
    assert set(full) == set(space.base_flat()) | set(trial.params)
    assert {"train.weight_decay", "branch.width"} <= set(full)
    TrialConfig.from_flat(full)


def test_warm_start_presets_expand_in_the_default_space():
    space = load_space("default")
    points = space.points_to_evaluate
    assert len(points) == 2
    seed_multi = TrialConfig.from_flat(space.trial_flat(points[0])).model
    assert seed_multi == get_preset("seed-multi")
    seed = TrialConfig.from_flat(space.trial_flat(points[1])).model
    assert seed == get_preset("seed")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {nope.key: {choice: [1, 2]}}", "unknown config key 'nope.key'"),
        ("params: {debug.nan_at_epoch: {choice: [-1, 1]}}",
         "unknown config key 'debug.nan_at_epoch'"),
        ("params: {train.lr: {loguniform: [0, 1]}}", "empty or invalid range"),
        ("params: {train.lr: {uniform: [1]}}", "must be [low, high]"),
        ("params: {fusion: {choice: []}}", "non-empty list"),
        ("params: {fusion: {choice: [a], uniform: [0, 1]}}", "exactly one of"),
        (
            "params:\n  fusion.hidden: {choice: [8], when: {fusion: [concat]}}\n"
            "  fusion: {choice: [concat]}",
            "must be a param listed before it",
        ),
        ("base: nope\nparams: {}", "base"),
        ("params: [1, 2", "not valid YAML"),
        ("oops: 1\nparams: {}", "unknown top-level keys"),
        (
            "params: {fusion: {choice: [concat, late]}}\npoints_to_evaluate: [{fusion: attention}]",
            "outside its distribution",
        ),
        (
            "base: tiny\nparams: {fusion: {choice: [concat]}}\n"
            "points_to_evaluate: [{preset: seed}]",
            "preset 'seed' sets",
        ),
        ("params: {}\nsearcher: {n_startup_trial: 5}",
         "unknown searcher keys ['n_startup_trial']; valid: ['n_startup_trials']"),
        ("params: {}\nscheduler: {grace: 2}", "unknown scheduler keys ['grace']"),
        ("params: {}\nscheduler: {reduction_factor: 1}",
         "scheduler.reduction_factor must be a number > 1, got 1"),
        ("params: {}\nscheduler: {grace_period: 1.5}",
         "scheduler.grace_period must be an integer >= 1, got 1.5"),
        ("params: {}\nsearcher: {n_startup_trials: -1}", "must be an integer >= 0, got -1"),
        ("params: {}\nsearcher: {n_startup_trials: yes}", "got True"),
        ("params: {}\nsearcher: [n_startup_trials]", "searcher must be a mapping"),
    ],
)
def test_bad_spaces_are_rejected_with_the_key_named(text, message):
    with pytest.raises(SpaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_space(text, name="bad.yaml")


def test_scheduler_and_searcher_settings_parse_to_their_types():
    space = parse_space("params: {}\nscheduler: {grace_period: 2.0, reduction_factor: 3}\n"
                        "searcher: {n_startup_trials: 4}")
    assert space.scheduler == {"grace_period": 2, "reduction_factor": 3.0}
    assert type(space.scheduler["grace_period"]) is int
    assert type(space.scheduler["reduction_factor"]) is float
    assert space.searcher == {"n_startup_trials": 4}


def test_unknown_space_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(SpaceError, match="default"):
        load_space("no-such-space")
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "missing.yaml")


def test_validating_searcher_never_hands_out_an_invalid_point():
    space = parse_space(
        "base: tiny\nparams:\n  fusion: {choice: [independent, concat, attention, late]}\n"
        "  train.lr: {loguniform: [1.0e-3, 1.0e-2]}\n",
        name="t.yaml",
    )

    def check(config):
        if config["fusion"] == "late":
            raise ValueError("late is not allowed here")

    searcher = build_searcher(space, "random", seed=0, check=check)
    searcher.set_search_properties("val/macro_auprc", "max", {})
    fusions = [searcher.suggest(f"trial_{i:05d}")["fusion"] for i in range(30)]
    assert "late" not in fusions
    assert searcher.rejected, "random sampling over 4 fusions should have hit 'late' in 30 draws"
    assert isinstance(searcher, ValidatingSearcher)


def test_validating_searcher_gives_up_on_a_space_with_no_valid_point():
    space = parse_space("base: tiny\nparams: {fusion: {choice: [concat, late]}}", name="t.yaml")

    def check(config):
        raise ValueError("nothing is valid")

    searcher = build_searcher(space, "tpe", seed=0, check=check)
    searcher.set_search_properties("val/macro_auprc", "max", {})
    with pytest.raises(SpaceError, match="nothing is valid"):
        searcher.suggest("trial_00000")


def _optuna_states(objective: tuple[str, ...]) -> dict[str, str]:
    """Three trials through a TPE searcher with a 9-epoch budget: one runs it, one is stopped
    at epoch 3 (as ASHA would), one fails; returns each one's Optuna state."""
    from ecgtune.search import metric_keys as K

    space = parse_space("base: tiny\nfixed: {train.epochs: 9}\n"
                        "params:\n  train.lr: {loguniform: [1.0e-3, 1.0e-2]}\n", name="t.yaml")
    searcher = build_searcher(space, "tpe", seed=0, check=lambda c: None, objective=objective)
    for trial, last in (("full", 9), ("stopped", 3), ("failed", 2)):
        searcher.suggest(trial)
        for epoch in range(1, last + 1):
            result = {K.EPOCH: epoch, "training_iteration": epoch,
                      K.OBJECTIVE: 0.1 * epoch, K.COST_GFLOPS: 0.5}
            searcher.on_trial_result(trial, result)
        if trial == "failed":  # as Tune tells an errored trial: no result
            searcher.on_trial_complete(trial, error=True)
        else:
            searcher.on_trial_complete(trial, result)
    study = searcher.searcher._ot_study
    return {t: ot.state.name for t, ot in zip(("full", "stopped", "failed"), study.trials,
                                              strict=True)}


def test_tpe_hears_a_trial_stopped_before_its_budget_as_pruned():
    # TPE then ranks it by the epoch it reached, not its early value as if it were final.
    assert _optuna_states(("auprc",)) == {"full": "COMPLETE", "stopped": "PRUNED",
                                          "failed": "FAIL"}
    # Multi-objective studies take no per-epoch values (Optuna): every ended trial counts.
    assert _optuna_states(("auprc", "gflops")) == {"full": "COMPLETE", "stopped": "COMPLETE",
                                                   "failed": "FAIL"}


def test_a_trial_that_ran_its_own_searched_epoch_budget_is_complete():
    # The space's base has 20 epochs; this trial's budget is the 3 it was given.
    from ecgtune.search import metric_keys as K

    space = parse_space("base: tiny\nparams:\n  train.epochs: {choice: [3]}\n", name="t.yaml")
    searcher = build_searcher(space, "tpe", seed=0, check=lambda c: None)
    assert searcher.suggest("t")["train.epochs"] == 3
    searcher.on_trial_complete("t", {K.EPOCH: 3, K.OBJECTIVE: 0.5})
    restored = build_searcher(space, "tpe", seed=0, check=lambda c: None)
    restored.set_state(searcher.get_state())
    assert restored.budgets == {"t": 3}
    assert searcher.searcher._ot_study.trials[0].state.name == "COMPLETE"


def test_a_folder_named_like_a_shipped_space_does_not_hide_it(tmp_path, monkeypatch):
    # `ecgtune demo --workdir demo` run twice: the `demo/` folder is not a space file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_space("demo").name == "demo"
    (tmp_path / "mine").mkdir()
    with pytest.raises(SpaceError, match="unknown search space 'mine'"):
        load_space("mine")
