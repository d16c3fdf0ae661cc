"""`ecgtune demo`: the whole pipeline on embedded defaults, on a laptop CPU.

synthetic records -> prep -> local search (Ray, SQLite MLflow) -> calibrated ensemble
(registered as `champion`) -> export -> predict held-back synthetic records and, when present,
the real sample records. Every step keeps its output in --workdir and is safe to re-run:
records and shards are reused, an interrupted search resumes, a finished one is reused, and
the ensemble, bundle and predictions are rebuilt (the registered model gets a new version).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_RECORDS = 3000
DEMO_SEED = 0
HELDOUT_RECORDS = 24
HELDOUT_SEED = 20_000  # other seed: records the search and the ensemble never saw
DEMO_TRIALS = 8
SEARCH_NAME = "demo"
MODEL_NAME = "ecgtune-demo"
# The repository's sibling `shared/` folder holds 20 real records (never copied here); this
# file is REPO/ensembles/cli/demo.py.
SAMPLE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "ecg-arrhythmia-sample"


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("ecgtune-demo")
    records: int = DEMO_RECORDS
    trials: int = DEMO_TRIALS
    sample_dir: Path | None = SAMPLE_DIR
    num_cpus: int | None = None


def _step(index: int, text: str) -> float:
    from ecgtune.data_prep.heartbeat import stage

    print(f"\n[{index}/6] {text}", flush=True)
    stage(text.split(":", 1)[0])
    return time.perf_counter()


def _bars() -> bool:
    """Progress bars on a terminal only: in a log file their redraws are one endless line."""
    return sys.stderr.isatty()


def _done(start: float) -> None:
    print(f"      done in {time.perf_counter() - start:.0f} s", flush=True)


def _synth_once(out: Path, n: int, seed: int, workers: int) -> None:
    """Synthetic records, reused when a previous run wrote the same ones."""
    from ecgtune.data_prep import synthesize

    stamp = out / "synth.json"
    want = {"n": n, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        print(f"      reusing {n} records in {out}")
        return
    shutil.rmtree(out, ignore_errors=True)
    synthesize(out, n, seed=seed, workers=workers, progress=_bars())
    stamp.write_text(json.dumps(want))


def _prep_sentence(prep: Any) -> str:
    """What prep did, in words: a re-run that rewrote nothing says "reused"."""
    m = prep.manifest
    records = f"{m['records_written']} records"
    if prep.shards_written == 0:
        done = f"{records} reused ({prep.shards_kept} shards)"
    elif prep.shards_kept == 0:
        done = f"{records} written ({prep.shards_written} shards)"
    else:
        done = (f"{records} in {prep.shards_written} new shards and {prep.shards_kept} reused "
                "ones")
    return f"{done}, {m['records_quarantined']} quarantined"


def run_demo(opts: DemoOptions) -> int:
    """The six steps; each keeps its output in the workdir (see the module docstring)."""
    from ecgtune.data_prep import is_synthetic

    began = time.perf_counter()
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"ecgtune demo in {work}")
    prep = _synth_and_prep(opts, work)
    search = _search(opts, work)
    if search is None:
        return 130
    result = _ensemble(work)
    predicted = _predict(opts, work, result.bundle_dir)
    _step(6, "summary")
    _print_summary(search, result, predicted, search.tracking_uri, time.perf_counter() - began,
                   synthetic=is_synthetic(prep.manifest.get("databases")))
    return 0


def _synth_and_prep(opts: DemoOptions, work: Path) -> Any:
    from ecgtune.data_prep import prepare

    t = _step(1, f"synthesising {opts.records} training records and {HELDOUT_RECORDS} "
                 "held-back ones")
    _synth_once(work / "records", opts.records, DEMO_SEED, workers=2)
    _synth_once(work / "heldout", HELDOUT_RECORDS, HELDOUT_SEED, workers=1)
    _done(t)
    t = _step(2, "preparing shards (quality gates, folds, Parquet)")
    prep = prepare(work / "records", work / "data", workers=2, shard_size=1000,
                   progress=_bars())
    print(f"      {_prep_sentence(prep)}")
    _done(t)
    return prep


def _search(opts: DemoOptions, work: Path) -> Any:
    """The search, resumed when a previous demo left one; None when it was interrupted."""
    # The step's line first: importing Ray and torch takes a while on a busy machine.
    t = _step(3, f"searching: {opts.trials} trials of the `demo` space, TPE + ASHA on a local "
                 "Ray instance, tracked in SQLite MLflow")
    from ecgtune.search.report import print_search_summary
    from ecgtune.search.run import SearchOptions, run_search
    from ecgtune.search.tracking import default_tracking_uri

    storage = work / "ray_results"
    if (storage / SEARCH_NAME).exists() and not (work / "mlflow.db").exists():
        # Ray state without its tracking store cannot be resumed cleanly: start over.
        shutil.rmtree(storage / SEARCH_NAME)
    resume = (storage / SEARCH_NAME).exists()
    if resume:
        print("      a previous demo search exists: resuming it (finished trials are kept)")
    search = run_search(SearchOptions(
        data=work / "data", space="demo", name=SEARCH_NAME, num_samples=opts.trials,
        tracking_uri=default_tracking_uri(work), storage=str(storage), resume=resume,
        num_cpus=opts.num_cpus, seed=DEMO_SEED, verbose=1,
    ))
    print_search_summary(search)
    if not search.complete:
        print("the search was interrupted; run the demo again to resume it")
        return None
    _done(t)
    return search


def _ensemble(work: Path) -> Any:
    t = _step(4, "ensemble: selecting, calibrating and thresholding the top 5 trials, writing "
                 "the bundle and its report, registering it")
    from ecgtune.ensembles.build.ensemble import build_ensemble, format_summary
    from ecgtune.search.tracking import default_tracking_uri

    result = build_ensemble(
        data=work / "data", name=SEARCH_NAME, output=work / "bundle", top_k=5,
        register=MODEL_NAME, tracking_uri=default_tracking_uri(work),
        storage=str(work / "ray_results"), seed=DEMO_SEED, progress=_bars(),
        # The ONNX export (~20 s on two cores) is left to `ecgtune export`, whose command the
        # summary prints: the demo stays within three minutes.
        onnx=False,
    )
    print(format_summary(result))
    _done(t)
    return result


def _predict(opts: DemoOptions, work: Path, bundle_dir: Path) -> dict[str, Any]:
    """Held-back synthetic records and, when present, the real sample records -> CSVs."""
    from ecgtune.ensembles.ship.predict import predict_records, write_predictions_csv

    t = _step(5, "predicting raw records with the bundle")
    predictions = work / "predictions"
    predictions.mkdir(exist_ok=True)
    inputs = {"held-back synthetic records": (work / "heldout", predictions / "heldout.csv")}
    if opts.sample_dir is not None and Path(opts.sample_dir).is_dir():
        inputs["real sample records"] = (Path(opts.sample_dir), predictions / "sample.csv")
    else:
        print(f"      (no real sample records at {opts.sample_dir}; skipping them)")
    predicted: dict[str, Any] = {}
    for label, (source, csv) in inputs.items():
        pr = predict_records(bundle_dir, [source], progress=_bars())
        write_predictions_csv(pr, csv)
        for issue in pr.warnings:
            print(f"      {issue.message(warning=True)}")
        for issue in pr.rejected:
            print(f"      {issue.message()}")
        predicted[label] = (pr, csv)
        print(f"      {label}: {len(pr.records)} predicted, {len(pr.rejected)} rejected -> {csv}")
    _done(t)
    return predicted


def _here(path: Path) -> str:
    """``path`` as typed from this folder: relative below it (``ecgtune-demo/bundle``)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _print_summary(search: Any, result: Any, predicted: dict[str, Any], uri: str,
                   seconds: float, synthetic: bool) -> None:
    from ecgtune.search import metric_keys as K
    from ecgtune.search.tracking import browse_hint, venv_command

    best = search.best
    print(f"best trial:        {best.trial_id} (t{best.index:03d}, {best.config.get('fusion')} "
          f"fusion), val macro AUPRC {best.best_score:.4f}")
    weights = ", ".join(f"{name} {w:.2f}" for name, w in result.weights.items())
    print(f"ensemble members:  {weights}")
    test_fold = f"test fold ({result.folds['test']})"
    print(f"{test_fold:<30} {'AUROC':>6} {'AUPRC':>6} {'F1':>6}")
    for name, row in result.rows.items():
        macro = row["macro"]
        print(f"  {name:<28} {macro[K.AUROC]:6.3f} {macro[K.AUPRC]:6.3f} {macro[K.F1]:6.3f}")
    print(f"calibration on the {test_fold}: ECE {result.ece_before:.4f} -> {result.ece_after:.4f}")
    print(f"bundle:            {result.bundle_dir}")
    print(f"ONNX graph:        {venv_command('ecgtune')} export --bundle "
          f"{_here(result.bundle_dir)} --output {_here(result.bundle_dir.parent / 'model.onnx')}")
    print(f"report:            {result.report_dir / 'report.html'}")
    if result.registered_model:
        print(f"registered model:  models:/{result.registered_model}@champion "
              f"(version {result.model_version})")
    if synthetic and predicted:
        print("predictions below come from a model trained on synthetic records only: they "
              "show the pipeline working, they are not diagnoses")
    for label, (pr, csv) in predicted.items():
        print(f"predictions:       {csv} ({label}, {len(pr.records)} rows)")
        for record, labels in list(zip(pr.records, pr.predicted, strict=True))[:3]:
            print(f"                     {record}: {';'.join(labels) or '(none)'}")
    hint = browse_hint(uri, search.experiment_id).replace(", then ", "\n    then ")
    print(f"\nBrowse the runs:\n    {hint}")
    print(f"demo finished in {seconds / 60:.1f} min")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on synthetic records (embedded defaults, CPU, ~3 min)",
        description=(
            "Synthesise records, prepare shards, run a small local search (Ray + SQLite "
            "MLflow), build, calibrate, export and register an ensemble, and predict "
            "held-back synthetic records and the real sample records when present. Safe to "
            "re-run: finished steps are reused, an interrupted search resumes."
        ),
    )
    p.add_argument("--workdir", type=Path, default=Path("ecgtune-demo"), metavar="DIR",
                   help="where everything is written (default: ./ecgtune-demo)")
    p.add_argument("--records", type=int, default=DEMO_RECORDS, metavar="N",
                   help="synthetic training records")
    p.add_argument("--trials", type=int, default=DEMO_TRIALS, metavar="N",
                   help="search trials")
    p.add_argument("--sample-dir", type=Path, default=SAMPLE_DIR, metavar="DIR",
                   help="real WFDB records to predict at the end (default: the repository's "
                   "../shared/data/ecg-arrhythmia-sample, skipped when absent)")
    p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs for the local Ray instance (default: all)")
    p.set_defaults(func=lambda args: run_demo(DemoOptions(
        workdir=args.workdir, records=args.records, trials=args.trials,
        sample_dir=args.sample_dir, num_cpus=args.num_cpus,
    )))
