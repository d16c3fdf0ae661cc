"""The conventions a user brings from MLflow and from other command-line tools: MLflow's
variables name the store, a command reads a store it is pointed at and creates none it was not
(the folder it runs in stays empty), run names read apart in the runs table, a finished search
resumed keeps its Duration, and usage errors exit 2 before anything heavy is imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecgtune.ensembles.cli.main import main
from ecgtune.search import tracking


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and no MLflow variables: what `ecgtune` does by default."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for key in (tracking.TRACKING_URI_ENV, tracking.REGISTRY_URI_ENV):
        monkeypatch.delenv(key, raising=False)
    return cwd


def _label_only_data(folder: Path) -> Path:
    """A data folder whose manifest holds the label map only: enough for the checks that run
    before the store is opened."""
    from ecgtune.data_prep import get_label_map

    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(
        {"labels": get_label_map("seed20").to_manifest()}))
    return folder


@pytest.mark.parametrize("command", ["export", "evaluate", "ensemble"])
def test_reading_commands_refuse_a_missing_store_and_create_none(command, empty_cwd, tmp_path,
                                                                 capsys, monkeypatch):
    data = _label_only_data(tmp_path / "data")
    argv = {
        "export": ["export", "--bundle", "models:/ecgtune-demo@champion",
                   "--output", str(tmp_path / "model.onnx")],
        "evaluate": ["evaluate", "--bundle", "models:/ecgtune-demo@champion", "--data",
                     str(data), "--all", "--output", str(tmp_path / "eval")],
        "ensemble": ["ensemble", "--data", str(data), "--name", "demo", "--output",
                     str(tmp_path / "bundle")],
    }[command]
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"ecgtune {command}: error: ")
    assert f"no MLflow store at sqlite:///{empty_cwd / 'mlflow.db'}" in line
    assert list(empty_cwd.iterdir()) == []  # no empty mlflow.db left behind
    # MLFLOW_TRACKING_URI names the store when --tracking-uri does not.
    elsewhere = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    assert main(argv) == 1
    assert f"no MLflow store at sqlite:///{elsewhere}" in capsys.readouterr().err
    # --tracking-uri wins over it.
    flag = tmp_path / "flag" / "mlflow.db"
    assert main([*argv, "--tracking-uri", f"sqlite:///{flag}",
                 *(["--model", "ecgtune-demo@champion"] if command == "evaluate" else [])]) == 1
    assert f"no MLflow store at sqlite:///{flag}" in capsys.readouterr().err
    assert list(empty_cwd.iterdir()) == [] and not elsewhere.parent.exists()


def test_export_of_a_bundle_directory_touches_no_store(empty_cwd, tmp_path, monkeypatch,
                                                       tiny_bundle):
    from ecgtune.ensembles.ship.onnx_export import resolve_bundle

    # A store that cannot even be created: any use of MLflow would fail here.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'no' / 'mlflow.db'}")
    assert resolve_bundle(str(tiny_bundle), None, tmp_path) == tiny_bundle
    assert list(empty_cwd.iterdir()) == [] and not (tmp_path / "no").exists()


def test_an_unknown_label_in_a_policy_override_is_a_usage_error(empty_cwd, tmp_path, capsys):
    data = _label_only_data(tmp_path / "data")
    status = main(["ensemble", "--data", str(data), "--name", "demo", "--output",
                   str(tmp_path / "bundle"), "--threshold-policy-for", "AFLT=f1"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and "unknown label" in line and "AFLT" in line
    assert list(empty_cwd.iterdir()) == []


def test_a_bad_range_is_refused_before_ray_and_torch_are_imported(tmp_path):
    """`--num-samples 0` answers in about a second: before the heavy imports."""
    code = ("import sys\nfrom ecgtune.ensembles.cli.main import main\n"
            "status = main(['search', '--data', 'd', '--num-samples', '0'])\n"
            "print(status, 'ray' in sys.modules, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr
    assert proc.stderr.strip() == "ecgtune search: error: --num-samples must be >= 1, got 0"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# End to end on the session's tiny search, through the console script as a user runs it.


def _copy_store(uri: str, folder: Path) -> str:
    """A copy of a SQLite store (its runs and registered models; artifacts stay where the
    original's runs recorded them): this test's runs and models do not reach the session's."""
    folder.mkdir(parents=True)
    shutil.copy(uri.removeprefix("sqlite:///"), folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgtune.ensembles.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_mlflow_tracking_uri_alone_drives_ensemble_evaluate_and_export(tiny_search,
                                                                       prepared_data, tmp_path):
    uri = _copy_store(tiny_search.tracking_uri, tmp_path / "store")
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    ensemble = _cli(cwd, env, "ensemble", "--data", str(prepared_data), "--name", "tiny",
                    "--top-k", "2", "--output", str(out / "bundle"), "--register", "ecg-env",
                    "--storage", str(tiny_search.storage), "--n-boot", "50", "--no-onnx")
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    assert "Registered: ecg-env version 1" in ensemble.stdout
    assert f"--backend-store-uri {uri} " in ensemble.stdout
    evaluate = _cli(cwd, env, "evaluate", "--bundle", "models:/ecg-env@champion", "--data",
                    str(prepared_data), "--output", str(out / "eval"), "--n-boot", "50")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "MLflow: evaluation run" in evaluate.stdout and "of ecg-env version 1" in evaluate.stdout
    export = _cli(cwd, env, "export", "--bundle", "models:/ecg-env@champion", "--output",
                  str(out / "model.onnx"))
    assert export.returncode == 0, export.stderr[-3000:]
    assert (out / "model.onnx").is_file()
    assert list(cwd.iterdir()) == [], "a command wrote into the folder it ran in"

    client = tracking.client(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get(tracking.TAG_ROLE, ""), []).append(run)
    (ours,) = [r for r in by_role["ensemble"] if "ecg-env v1" in r.info.run_name]
    assert ours.info.run_name.startswith("tiny ensemble #")
    assert ": 2 of top-2" in ours.info.run_name or ": 1 of top-2" in ours.info.run_name
    assert "f1 thresholds" in ours.info.run_name
    assert "cost/gflops" in ours.data.metrics  # the key-metrics view's cost column
    (evaluation,) = by_role["evaluation"]
    assert evaluation.data.tags["ecgtune.model_name"] == "ecg-env"
    assert evaluation.info.run_name.startswith("evaluate ecg-env v1 on ")
    # The session's own store never heard of it: the variable, not a default, was used.
    original = tracking.client(tiny_search.tracking_uri)
    assert original.search_registered_models("name='ecg-env'") == []

    # A second build of the same search: its run reads apart from the first.
    from ecgtune.ensembles import build_ensemble

    here = Path.cwd()
    os.chdir(cwd)
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        again = build_ensemble(data=prepared_data, name="tiny", output=out / "bundle2",
                               top_k=2, storage=str(tiny_search.storage), n_boot=50,
                               onnx=False, progress=False)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.chdir(here)
    assert again.tracking_uri == uri and list(cwd.iterdir()) == []
    names = [r.info.run_name for r in client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'ensemble'")]
    assert len(names) == len(set(names)), names
    assert client.get_run(again.run_id).info.run_name not in (ours.info.run_name,)


@pytest.mark.slow
def test_a_finished_search_resumed_is_reused_as_it_was(tiny_search, prepared_data):
    """`--resume` of a finished search (a re-run demo): no Ray, no reopened run, the search
    run's Duration stays the search's own."""
    import ray

    from ecgtune.search.run import SearchOptions, run_search

    client = tracking.client(tiny_search.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    parent = tracking.find_search_run(client, experiment.experiment_id,
                                      tiny_search.result.experiment_path)
    assert parent.info.status == "FINISHED"
    result = run_search(SearchOptions(
        data=prepared_data, space="tiny", name="tiny", num_samples=4,
        tracking_uri=tiny_search.tracking_uri, storage=str(tiny_search.storage), resume=True,
        verbose=0))
    assert not ray.is_initialized()
    assert result.complete and result.parent_run_id == parent.info.run_id
    assert [t.trial_id for t in result.trials] == [t.trial_id for t in tiny_search.result.trials]
    after = client.get_run(parent.info.run_id)
    assert after.info.status == "FINISHED"
    assert (after.info.start_time, after.info.end_time) == (parent.info.start_time,
                                                            parent.info.end_time)
