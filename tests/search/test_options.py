"""A bad `ecgtune search` invocation fails at once, with one line and exit 2, and leaves
nothing behind: no Ray instance, no MLflow run, no Ray experiment folder.

Fast tier: none of these may start Ray, which is the point of validating first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecgtune.search import tracking
from ecgtune.search.errors import NonRetryableTrialError, SearchOptionError
from ecgtune.search.faults import install_no_retry_policy, is_non_retryable
from ecgtune.search.report import print_search_summary
from ecgtune.search.run import SearchOptions, SearchResult, TrialSummary, startup_line
from ecgtune.search.space import load_space, parse_space
from ecgtune.search.training import NonFiniteLossError
from ecgtune.search.validation import pin_space, probe_storage, typed_pins, validate_options

NAME = "bad-invocation"


def _mlflow_runs(uri: str) -> list:
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.exists():
        return []  # never opened: no experiment, no run
    client = tracking.client(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids)) if ids else []


def _invoke(data: Path, tmp_path: Path, capsys, *args: str) -> tuple[int, str, float]:
    import ray

    from ecgtune.ensembles.cli import main

    start = time.monotonic()
    code = main(["search", "--data", str(data), "--space", "tiny", "--name", NAME,
                 "--storage", str(tmp_path / "ray"), "--num-cpus", "1",
                 "--tracking-uri", tracking.default_tracking_uri(tmp_path), *args])
    elapsed = time.monotonic() - start
    assert not ray.is_initialized(), "a bad invocation must not start Ray"
    return code, capsys.readouterr().err, elapsed


def _assert_rejected(code: int, err: str, elapsed: float, tmp_path: Path, *fragments: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ecgtune search: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert _mlflow_runs(tracking.default_tracking_uri(tmp_path)) == []
    # The name stays usable: `run_search` refuses a --name only when this folder exists.
    assert not (tmp_path / "ray" / NAME).exists()


BAD_INVOCATIONS = [
    (["--set", "train.lr=abc"], ["--set train.lr=abc", "must be a number"]),
    (["--set", "train.bogus=1"], ["unknown config key 'train.bogus'", "train.lr"]),
    (["--set", "branch.depth=3-2"], ["unknown config key 'branch.depth'", "branch.depths"]),
    # Fault injection is a test-only trial hook, not config: no `debug.*` key exists.
    (["--set", "debug.nan_at_epoch=1"], ["unknown config key 'debug.nan_at_epoch'"]),
    (["--set", "fusion=nope"], ["--set fusion=nope", "unknown fusion 'nope'"]),
    (["--set", "train.lr=inf"], ["train.lr must be a finite number"]),
    (["--set", "train.lr=nan"], ["train.lr must be > 0"]),
    (["--set", "branch.depths=3-x"], ["branch.depths"]),
    (["--set", "train.augment=maybe"], ["train.augment must be a boolean"]),
    (["--set", "train.lr=0.01", "--set", "train.lr=0.02"], ["contradicts"]),
    (["--set", "train.epochs=2", "--epochs", "3"], ["contradicts"]),
    (["--epochs", "0"], ["--epochs must be >= 1, got 0"]),
    (["--num-samples", "-3"], ["--num-samples must be >= 1, got -3"]),
    (["--num-samples", "0"], ["--num-samples must be >= 1, got 0"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial must be > 0"]),
    (["--cpus-per-trial", "nan"], ["--cpus-per-trial must be > 0"]),
    (["--cpus-per-trial", "3"], ["exceeds the 1 CPUs", "--num-cpus"]),
    (["--gpus-per-trial", "-1"], ["--gpus-per-trial must be >= 0"]),
    (["--max-failures", "-1"], ["--max-failures must be >= 0"]),
    (["--max-concurrent", "0"], ["--max-concurrent must be >= 1"]),
    (["--num-cpus", "0"], ["--num-cpus must be >= 1"]),
    (["--name", "a/b"], ["--name must be a plain folder name"]),
    (["--resume", "--set", "train.lr=0.01"], ["--resume", "--set train.lr=0.01"]),
    (["--storage", "nosuchscheme://bucket/prefix"], ["--storage nosuchscheme://", "not reachable"]),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_INVOCATIONS,
                         ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_bad_invocation_fails_fast_with_one_line_and_leaves_nothing(
        small_data, tmp_path, capsys, args, fragments):
    code, err, elapsed = _invoke(small_data, tmp_path, capsys, *args)
    _assert_rejected(code, err, elapsed, tmp_path, *fragments)


def test_pins_that_leave_no_valid_model_fail_before_ray(small_data, tmp_path, capsys):
    # Each value builds a model config; none fits the 4-group label map (independent fusion
    # needs one branch per group), which only the data's label map can tell.
    code, err, elapsed = _invoke(small_data, tmp_path, capsys, "--set", "fusion=independent",
                                 "--set", "n_branches=3")
    _assert_rejected(code, err, elapsed, tmp_path, "none of 50 random points is a valid trial",
                     "n_branches=3")


def test_storage_under_a_file_is_rejected(small_data, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code, err, elapsed = _invoke(small_data, tmp_path, capsys,
                                 "--storage", str(blocker / "ray"))
    _assert_rejected(code, err, elapsed, tmp_path, "is a file, not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_storage_is_rejected(small_data, tmp_path, capsys):
    # /proc takes no new files even for root, so this holds wherever the tests run; chmod
    # would not stop root.
    code, err, elapsed = _invoke(small_data, tmp_path, capsys,
                                 "--storage", "/proc/ecgtune-results")
    _assert_rejected(code, err, elapsed, tmp_path, "cannot write in /proc")


def test_console_script_exits_2_in_seconds(small_data, tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ecgtune.ensembles.cli", "search", "--data", str(small_data),
         "--space", "tiny", "--name", NAME, "--storage", str(tmp_path / "ray"),
         "--tracking-uri", tracking.default_tracking_uri(tmp_path),
         "--set", "train.lr=abc"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    elapsed = time.monotonic() - start
    _assert_rejected(proc.returncode, proc.stderr, elapsed, tmp_path, "train.lr=abc")
    assert proc.stdout == ""


def _opts(tmp_path: Path, **kw) -> SearchOptions:
    return SearchOptions(data=tmp_path / "data", space="tiny", name=NAME,
                         storage=str(tmp_path / "ray"), num_cpus=1, **kw)


def test_python_api_raises_search_option_error(tmp_path):
    with pytest.raises(SearchOptionError, match=r"--num-samples must be >= 1, got 0"):
        validate_options(_opts(tmp_path, num_samples=0))
    with pytest.raises(SearchOptionError, match="--epochs"):
        validate_options(_opts(tmp_path, epochs=0))
    with pytest.raises(SearchOptionError, match="unknown --scheduler 'nope'"):
        validate_options(_opts(tmp_path, scheduler="nope"))
    with pytest.raises(SearchOptionError, match="drop --num-cpus"):
        validate_options(SearchOptions(data=tmp_path, space="tiny", address="auto", num_cpus=2))


def test_set_on_a_searched_key_pins_it(tmp_path):
    validated = validate_options(_opts(tmp_path, overrides={"train.lr": "10"}))
    space = validated.space
    assert "train.lr" not in space.param_names
    assert validated.pins == {"train.lr": 10.0} and space.fixed["train.lr"] == 10.0
    assert set(validated.unsearched) == {"train.lr"}
    for seed in range(10):
        sampled = space.sample(seed)
        assert "train.lr" not in sampled
        assert space.trial_config(sampled).train.lr == 10.0
    line = startup_line(_opts(tmp_path), validated, 4)
    assert "pinned: train.lr=10.0 (not searched; the space samples loguniform" in line
    # Unpinned, the same space still samples it.
    assert "train.lr" in validate_options(_opts(tmp_path)).space.param_names


def test_pins_are_typed_like_the_trial_config():
    space = load_space("tiny")
    pins = typed_pins(space, {"branch.depths": "3-2", "train.augment": "true",
                              "train.batch_size": "16", "train.seed": "2"}, epochs=4)
    assert pins == {"branch.depths": [3, 2], "train.augment": True, "train.batch_size": 16,
                    "train.seed": 2, "train.epochs": 4}
    pinned, _ = pin_space(space, pins)
    # The categorical '3-2' of the space and the pinned list are the same depths.
    assert pinned.trial_config(pinned.sample(0)).model.branch.depths == (3, 2)


def test_conditional_params_follow_a_pinned_key():
    space = load_space("default")
    focal, unsearched = pin_space(space, typed_pins(space, {"train.loss": "focal"}))
    assert set(unsearched) == {"train.loss"}
    by_name = {p.name: p for p in focal.params}
    assert "train.asl_gamma_neg" not in by_name  # needs asymmetric: can never apply
    assert by_name["train.focal_gamma"].when == ()  # always applies now
    assert by_name["fusion.hidden"].when == space_when(space, "fusion.hidden")  # untouched
    for seed in range(20):
        sampled = focal.sample(seed)
        assert "train.focal_gamma" in sampled and "train.asl_gamma_neg" not in sampled
        assert focal.trial_flat(sampled)["train.loss"] == "focal"
    # Warm-start points keep their other keys, never the pinned one.
    assert focal.points_to_evaluate
    assert all("train.loss" not in p for p in focal.points_to_evaluate)

    bce, _ = pin_space(space, typed_pins(space, {"train.loss": "bce"}))
    names = set(bce.param_names)
    assert not names & {"train.loss", "train.focal_gamma", "train.asl_gamma_neg"}


def space_when(space, name):
    return next(p.when for p in space.params if p.name == name)


def test_a_pin_cascades_through_chained_conditions():
    space = parse_space(
        "base: tiny\nparams:\n"
        "  fusion: {choice: [independent, concat]}\n"
        "  fusion.hidden: {choice: [16, 32], when: {fusion: [concat]}}\n"
        "  fusion.dropout: {uniform: [0.0, 0.5], when: {fusion.hidden: [32]}}\n"
        "points_to_evaluate: [{fusion: concat, fusion.hidden: 32}]\n",
        name="chain.yaml",
    )
    pinned, _ = pin_space(space, typed_pins(space, {"fusion": "independent"}))
    assert pinned.params == ()
    assert pinned.points_to_evaluate == ()
    concat, _ = pin_space(space, typed_pins(space, {"fusion": "concat"}))
    assert concat.param_names == ("fusion.hidden", "fusion.dropout")
    assert concat.points_to_evaluate == ({"fusion.hidden": 32},)


def test_pins_that_cannot_build_together_are_rejected(tmp_path):
    # Each value is valid alone; no trial config has both (six halvings of a 64-strided
    # 1,024-sample input leave nothing of a ResU-Dense trunk; a state-space one halves none).
    overrides = {"stem.stride": "64", "branch.depths": "3-3-3-3-3-3", "branch.kind": "resu"}
    for key, value in overrides.items():
        validate_options(_opts(tmp_path, overrides={key: value}))
    with pytest.raises(SearchOptionError, match=r"do not fit together.*branch\.depths"):
        validate_options(_opts(tmp_path, overrides=overrides))


def test_storage_probe_leaves_nothing_behind(tmp_path):
    target = tmp_path / "a" / "b"
    probe_storage(str(target))
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    probe_storage(f"file://{tmp_path}")
    assert list(tmp_path.iterdir()) == []


def _summary(status: str, epochs: int, early: bool = False, error: str | None = None):
    return TrialSummary(index=len(status), trial_id=f"id-{status}", status=status,
                        epochs=epochs, best_score=0.5 if epochs else None,
                        early_stopped=early, config={"fusion": status.lower()}, error=error)


def test_interrupted_summary_shows_each_trials_real_status(capsys):
    trials = [_summary("RUNNING", 1), _summary("PENDING", 0), _summary("PAUSED", 1),
              _summary("TERMINATED", 3), _summary("ERROR", 1, error="NonFiniteLossError: nan")]
    trials.append(TrialSummary(index=9, trial_id="id-early", status="TERMINATED", epochs=1,
                               best_score=0.4, early_stopped=True, config={"fusion": "early"}))
    print_search_summary(SearchResult("s", "/x", "sqlite:///y", "1", "p", trials, False))
    rows = {line.split()[1]: line.split()[2] for line in capsys.readouterr().out.splitlines()
            if line.startswith("t0")}
    assert rows == {"running": "running", "pending": "pending", "paused": "paused",
                    "terminated": "done", "error": "error", "early": "early"}


class _FakeTrial:
    """Ray Tune's `Trial` retry contract: handle_error counts, should_recover compares."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.num_failures = 0
        self.temporary_state = type("State", (), {})()

    def handle_error(self, exc=None):
        self.num_failures += 1

    def should_recover(self):
        return self.num_failures <= self.max_failures


class _TaskError(RuntimeError):
    """Like ray.exceptions.RayTaskError: the trainable's exception is its `cause`."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def test_no_retry_policy_fails_a_nan_trial_once_and_retries_anything_else():
    trial_cls = type("Trial", (_FakeTrial,), {})
    assert install_no_retry_policy(trial_cls)
    assert install_no_retry_policy(trial_cls)  # idempotent: wrapped once
    crashed = trial_cls(max_failures=2)
    crashed.handle_error(_TaskError(RuntimeError("worker died")))
    assert crashed.should_recover() and crashed.num_failures == 1
    diverged = trial_cls(max_failures=2)
    diverged.handle_error(_TaskError(NonFiniteLossError("training loss became nan")))
    assert not diverged.should_recover()
    assert diverged.num_failures == 1


def test_nan_loss_error_is_non_retryable():
    assert issubclass(NonFiniteLossError, NonRetryableTrialError)
    assert is_non_retryable(_TaskError(_TaskError(NonFiniteLossError("nan"))))
    assert not is_non_retryable(_TaskError(RuntimeError("crash")))
    assert not is_non_retryable(None)
