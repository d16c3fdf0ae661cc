"""`ecgtune evaluate`: run an exported bundle on prepared, labelled data and write the report
the ensemble build writes (per-label metrics with BCa CIs at the bundle's thresholds,
calibration, operating points), optionally broken down by source database, and log it to
MLflow as an evaluation run linked to a registered model version.

Which records: ``--folds``, or ``--all`` (external data), else the data's test-role folds.
Labels with fewer than ``--min-positives`` positives (or no negative) in those records are
*not assessable*: named as such, left out of the macro means, never reported as 0 or NaN.

Source database of a record (``--by source``), first rule that applies:
1. the shard's ``source`` column when it holds a database name rather than a header path
   (a path has a ``/`` or ends in ``.hea``);
2. the manifest's ``databases`` when it counts only one (synthetic data, one-database preps);
3. the CinC record-name prefix (`data_prep.provenance.record_database`: JS ecg-arrhythmia,
   E georgia, HR ptb-xl, A/Q cpsc, I incart, S ptb) when the manifest counts that database;
4. else the one database the manifest counts that no record's prefix names (e.g.
   ``synthetic`` beside ``georgia``: synthetic records are named JS but counted apart), else
   ``unknown``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.data_prep.heartbeat import stage
from ecgtune.data_prep.shards import manifest_sha256
from ecgtune.ensembles.errors import EvaluationError
from ecgtune.ensembles.options import EvaluateOptions

__all__ = ["EvaluationError", "EvaluationResult", "evaluate_bundle", "format_evaluation",
           "record_sources"]

log = logging.getLogger(__name__)

ROW = "ensemble"
ROLE = "evaluation"


@dataclass
class EvaluationResult:
    report_dir: Path
    row: dict[str, Any]  # `evaluate_assessable` result of the whole evaluated set
    by_source: dict[str, dict[str, Any] | None]  # source -> its result (None: nothing assessable)
    sources: np.ndarray  # (N,) source database per record
    folds: list[int]
    label_names: list[str]
    records: np.ndarray
    probabilities: np.ndarray = field(repr=False)
    operating_points: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    refit_bundle: Path | None = None  # the new bundle of --refit-thresholds
    challenge_score: float | None = None  # None where undefined (no record has a label)
    model_name: str | None = None
    model_version: str | None = None
    data_manifest_sha256: str = ""

    @property
    def not_assessable(self) -> list[str]:
        return list(self.row.get("not_assessable", []))


# ---------------------------------------------------------------------------------------------
# Records and their sources


def record_sources(records: Sequence[str] | np.ndarray, source_column: Sequence[str],
                   databases: dict[str, int] | None) -> np.ndarray:
    """The source database of each record (see the module docstring for the rules)."""
    from ecgtune.data_prep.provenance import record_sources as sources

    return sources(records, source_column, databases)


def _source_column(data_dir: Path, manifest: dict[str, Any], records: np.ndarray) -> list[str]:
    """Each record's shard ``source`` value (the shards' row order is not the dataset's)."""
    import pyarrow.parquet as pq

    wanted = set(records.tolist())
    by_record: dict[str, str] = {}
    for shard in manifest.get("shards", []):
        table = pq.read_table(data_dir / shard["file"], columns=["record", "source"])
        for record, source in zip(table.column("record").to_pylist(),
                                  table.column("source").to_pylist(), strict=True):
            if record in wanted:
                by_record[record] = source or ""
    return [by_record.get(r, "") for r in records.tolist()]


# ---------------------------------------------------------------------------------------------
# Checks before any work


def _folds(opts: EvaluateOptions, manifest: dict[str, Any]) -> list[int]:
    from ecgtune.data_prep import fold_roles

    n = int((manifest.get("folds") or {}).get("n", 10))
    if opts.all_folds:
        return list(range(n))
    if opts.folds:
        bad = [f for f in opts.folds if not 0 <= f < n]
        if bad:
            raise EvaluationError(f"--folds {bad}: the data has folds 0..{n - 1}")
        return sorted(set(opts.folds))
    if (manifest.get("folds") or {}).get("roles") is None:
        raise EvaluationError(f"{opts.data} records no fold roles; pass --all (external data) "
                              "or --folds")
    return list(fold_roles(manifest)["test"])


@dataclass(frozen=True)
class _Tracking:
    uri: str
    client: Any
    name: str
    version: str
    run_id: str  # the run that logged the model version (the ensemble run)
    experiment_id: str


def _tracking(opts: EvaluateOptions) -> _Tracking | None:
    """The registered model version to link the evaluation run to, resolved up front."""
    model = opts.model
    if model is None and opts.bundle.startswith("models:/") and "@" in opts.bundle:
        model = opts.bundle.removeprefix("models:/")
    if model is None:
        if opts.tracking_uri:
            raise EvaluationError("--tracking-uri needs --model NAME@ALIAS: the evaluation run "
                                  "is linked to a registered model version")
        return None
    from ecgtune.search import tracking

    # The model is read from the store: one that is not there is a wrong --tracking-uri (or
    # MLFLOW_TRACKING_URI), never a new empty store.
    uri = tracking.resolve_tracking_uri(opts.tracking_uri)
    tracking.check_tracking_uri(uri, must_exist=True)
    client = tracking.client(uri)
    name, alias = model.split("@", 1)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # MLflow raises its own exception types
        raise EvaluationError(f"--model {model}: not found at {uri} "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from None
    run = client.get_run(version.run_id) if version.run_id else None
    experiment_id = run.info.experiment_id if run else "0"  # MLflow's Default experiment
    return _Tracking(uri, client, name, str(version.version), version.run_id or "",
                     experiment_id)


# ---------------------------------------------------------------------------------------------
# The evaluation


def evaluate_bundle(options: EvaluateOptions | None = None, **kwargs: Any) -> EvaluationResult:
    """Evaluate a bundle on prepared data and write the report. Pass an `EvaluateOptions` or
    its fields as keywords: ``evaluate_bundle(bundle="b", data="d", all_folds=True)``."""
    from ecgtune.data_prep import read_manifest
    from ecgtune.ensembles.build.policies import policies_from_record

    opts = options or EvaluateOptions(**kwargs)
    started_ms = int(time.time() * 1000)  # the evaluation run's start: its Duration is the work
    data = Path(opts.data)
    if not (data / "manifest.json").is_file():
        raise EvaluationError(f"{data} is not a prepared data directory (no manifest.json); "
                              "run `ecgtune prep` on the records first")
    manifest = read_manifest(data)
    folds = _folds(opts, manifest)
    if opts.refit_thresholds:
        from ecgtune.ensembles.evaluate.refit import check_refit

        check_refit(opts, folds)
    stage("finding the model" if opts.bundle.startswith("models:/") or opts.model else
          "loading the bundle")
    track = _tracking(opts)
    bundle = _load(opts, track)
    # Rate, length, gain, leads and label map of the data against the bundle's, before any
    # record is read: data prepared for another input is refused in one line.
    bundle.inputs.check_data(manifest, data=str(data), model=opts.bundle,
                             label_names=bundle.label_names, label_map=bundle.label_map)
    sha = manifest_sha256(data)
    fit = dict(bundle.metadata.get("fit") or {})
    policies = policies_from_record(fit.get("thresholds"), bundle.label_names)
    predictor = bundle
    if opts.refit_thresholds:
        from ecgtune.ensembles.evaluate.refit import refit_thresholds

        predictor, policies, fit = refit_thresholds(opts, bundle, folds, sha)
    result = _evaluate(opts, predictor, fit, policies, manifest, folds, sha)
    if opts.refit_thresholds:
        from ecgtune.ensembles.evaluate.refit import save_refit

        result.refit_bundle = save_refit(opts, bundle, predictor, fit, result.report_dir)
    if track is not None:
        result.run_id = _log_run(track, opts, result, started_ms)
        result.model_name, result.model_version = track.name, track.version
    return result


def _load(opts: EvaluateOptions, track: _Tracking | None) -> Any:
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.inference import resolve_device
    from ecgtune.ensembles.ship.onnx_export import resolve_bundle

    try:
        device = resolve_device(opts.device)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    uri = track.uri if track else opts.tracking_uri
    with tempfile.TemporaryDirectory(prefix="ecgtune-evaluate-") as tmp:
        return load_bundle(resolve_bundle(opts.bundle, uri, tmp), device=device,
                           precision=opts.precision)


def _folds_text(folds: list[int], n_folds: int) -> str:
    if len(folds) == n_folds:
        return "all folds"
    return f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"


def _evaluate(opts: EvaluateOptions, bundle: Any, fit: dict[str, Any], policies: list[Any],
              manifest: dict[str, Any], folds: list[int], sha: str) -> EvaluationResult:
    """The report of ``bundle`` (a loaded or refitted predictor; ``fit``: its bundle.json
    ``fit`` record) on the records of ``folds``."""
    from ecgtune.data_prep import load_shards
    from ecgtune.ensembles.evaluate.report import (
        ReportRow,
        calibration_summary,
        jsonable,
        write_ensemble_report,
    )

    data = Path(opts.data)
    stage(f"loading folds {', '.join(map(str, folds))} of {data}")
    ds = load_shards(data, folds=folds)
    if len(ds) == 0:
        raise EvaluationError(f"{data}: no records in folds {folds}")
    names = list(bundle.label_names)
    y = ds.labels.astype(bool)
    stage(f"predicting {len(ds)} records with the bundle's {len(bundle.members)} members")
    uncal = bundle.predict_uncalibrated(ds.signals, opts.batch_size, ds.lengths)
    probs = bundle.calibrator.predict(uncal)
    sources = record_sources(ds.records, _source_column(data, manifest, ds.records),
                             manifest.get("databases"))
    by_source = _by_source(opts, y, probs, bundle.thresholds, names, sources) if opts.by else {}
    where = _folds_text(folds, int((manifest.get("folds") or {}).get("n", 10)))
    challenge = _challenge(bundle, y, probs)
    extra = [_source_section(by_source, sources)] if opts.by else []
    out = Path(opts.output)
    stage(f"writing the report ({opts.n_boot} bootstrap resamples)")
    try:
        results, _ = write_ensemble_report(
            out, y, [ReportRow(ROW, "eval", probs, bundle.thresholds,
                               "the bundle's calibrated ensemble at its thresholds",
                               thresholds_by=_policy_words(fit))],
            uncal, names, [calibration_summary(ROLE, where, y, uncal, probs)],
            bundle.calibrator.methods_,
            title=f"Evaluation of {opts.bundle} on {data.name} ({where}, {len(ds)} records)",
            notes=[*_notes(opts, len(ds), y, names), *_challenge_note(challenge)],
            summary={**_summary(opts, fit, folds, sha, sources, by_source),
                     "challenge_score": challenge},
            n_boot=opts.n_boot, seed=opts.seed, calibrated_row=ROW, policies=policies,
            min_positives=opts.min_positives, extra_sections=extra,
            bounds=(fit.get("thresholds") or {}).get("confidence_bounds"))
    except ValueError as exc:  # nothing assessable
        raise EvaluationError(f"{data} ({where}): {exc}") from None
    (out / "by_source.json").write_text(json.dumps(jsonable(by_source), indent=2) + "\n")
    points = json.loads((out / "summary.json").read_text()).get("operating_points", [])
    return EvaluationResult(out, results[ROW], by_source, sources, folds, names, ds.records,
                            probs, points, data_manifest_sha256=sha, challenge_score=challenge)


def _policy_words(fit: dict[str, Any]) -> str:
    """How the bundle's thresholds were chosen, from bundle.json's ``fit``: "sensitivity:0.95
    (+1 per label), refit" / "f1"."""
    record = fit.get("thresholds") or {}
    default = record.get("policy") or record.get("objective") or "f1"
    others = sum(1 for p in (record.get("policies") or {}).values() if p != default)
    text = str(default) + (f" (+{others} per label)" if others else "")
    return text + (", refit" if fit.get("refit") else "")


def _challenge(bundle: Any, y: np.ndarray, probs: np.ndarray) -> float | None:
    """The challenge-style score (`search.metrics.challenge_score`: partial credit within a
    label group, SR as the normal class when the map has it) of the bundle's decisions;
    undefined (None) when no record has a label."""
    from ecgtune.search.metrics import challenge_score

    names = list(bundle.label_names)
    if not y.any():
        return None
    groups = np.zeros(len(names), dtype=np.int64)
    for g, members in enumerate(bundle.label_groups):
        groups[list(members)] = g + 1  # labels outside every group share group 0
    normal = names.index("SR") if "SR" in names else None
    return float(challenge_score(y, probs >= bundle.thresholds, groups=groups.tolist(),
                                 normal_index=normal))


def _challenge_note(score: float | None) -> list[str]:
    if score is None:
        return []
    return [f"Challenge-style score at the bundle's thresholds: {score:.3f} (1: every label "
            "right; 0: predicting only the normal class; partial credit within a label group)"]


def _notes(opts: EvaluateOptions, n: int, y: np.ndarray, names: list[str]) -> list[str]:
    support = y.sum(axis=0)
    few = [f"{name} ({int(k)})" for name, k in zip(names, support, strict=True)
           if k < opts.min_positives or k >= n]
    notes = [f"Thresholds, calibration and members are the bundle's; nothing was fitted on "
             f"these {n} records."]
    if few:
        notes.append(f"Not assessable (fewer than {opts.min_positives} positives, or no "
                     f"negative; left out of the macro means): {', '.join(few)}")
    return notes


def _summary(opts: EvaluateOptions, fit: dict[str, Any], folds: list[int], sha: str,
             sources: np.ndarray, by_source: dict[str, Any]) -> dict[str, Any]:
    names, counts = np.unique(sources, return_counts=True)
    return {"bundle": opts.bundle, "data": str(Path(opts.data).resolve()), "folds": folds,
            "data_manifest_sha256": sha, "bundle_data_manifest_sha256":
            fit.get("data_manifest_sha256"), "trained_on": fit.get("trained_on"),
            "min_positives": opts.min_positives,
            "sources": {str(k): int(v) for k, v in zip(names, counts, strict=True)},
            "by": opts.by, "refit": fit.get("refit")}


def _by_source(opts: EvaluateOptions, y: np.ndarray, probs: np.ndarray, thresholds: Any,
               names: list[str], sources: np.ndarray) -> dict[str, dict[str, Any] | None]:
    from ecgtune.ensembles.evaluate.metrics import evaluate_assessable

    out: dict[str, dict[str, Any] | None] = {}
    values, counts = np.unique(sources, return_counts=True)
    for source in values[np.argsort(-counts, kind="stable")]:
        mask = sources == source
        out[str(source)] = evaluate_assessable(y[mask], probs[mask], thresholds, names,
                                               opts.min_positives, n_boot=opts.n_boot,
                                               seed=opts.seed)
    return out


def _source_section(by_source: dict[str, dict[str, Any] | None], sources: np.ndarray) -> Any:
    from ecgtune.ensembles.evaluate.report import source_section

    counts = {str(k): int(np.sum(sources == k)) for k in by_source}
    return source_section(by_source, counts)


# ---------------------------------------------------------------------------------------------
# MLflow and the console


def _log_run(track: _Tracking, opts: EvaluateOptions, result: EvaluationResult,
             started_ms: int | None = None) -> str:
    """One FINISHED (or FAILED) run beside the model's ensemble run, tagged with the model
    name, version and data manifest sha256: the UI lists a version's evaluations together."""
    from ecgtune.ensembles.evaluate.metrics import flatten_metrics
    from ecgtune.ensembles.ship.registry import finish_run, log_batch
    from ecgtune.search import metric_keys as K
    from ecgtune.search import tracking

    data = Path(opts.data)
    tags = {tracking.TAG_ROLE: ROLE, TAG_MODEL_NAME: track.name,
            TAG_MODEL_VERSION: track.version,
            TAG_DATA_SHA256: result.data_manifest_sha256,
            "ecgtune.model_run_id": track.run_id}
    folds = result.folds
    where = (f"fold{'s' if len(folds) > 1 else ''} {','.join(map(str, folds))}"
             if len(folds) <= 3 else f"{len(folds)} folds")
    # Re-evaluations of one version on the same data get #2, #3...: each run reads apart.
    # The data by its last two folders: "data/georgia", "ecgtune-demo/data".
    on = "/".join(data.resolve().parts[-2:])
    name = tracking.unique_run_name(
        track.client, track.experiment_id,
        f"evaluate {track.name} v{track.version} on {on} ({where})", ROLE)
    run = track.client.create_run(track.experiment_id, tags=tags, run_name=name,
                                  start_time=started_ms)
    run_id = str(run.info.run_id)
    try:
        metrics = flatten_metrics(result.row, split=ROLE)
        for source, row in result.by_source.items():
            if row is not None:
                metrics.update({k: v for k, v in flatten_metrics(
                    row, split=f"{ROLE}_{source}").items() if k.count("/") == 1})
        metrics[K.metric_key(ROLE, "records")] = float(len(result.records))
        if result.challenge_score is not None:
            metrics[f"{ROLE}/challenge_score"] = result.challenge_score
        params = {"bundle": opts.bundle, "data": str(data.resolve()),
                  "folds": ",".join(map(str, result.folds)), "min_positives": opts.min_positives,
                  "n_boot": opts.n_boot, "seed": opts.seed,
                  "not_assessable": ",".join(result.not_assessable) or "-"}
        log_batch(track.client, run_id, params, metrics)
        track.client.log_artifacts(run_id, str(result.report_dir), "report")
    except BaseException as exc:
        finish_run(track.client, run_id, exc)
        raise
    finish_run(track.client, run_id)
    return run_id


TAG_MODEL_NAME = "ecgtune.model_name"
TAG_MODEL_VERSION = "ecgtune.model_version"
TAG_DATA_SHA256 = "ecgtune.data_manifest_sha256"


def _fmt(x: Any) -> str:
    return "     -" if x is None else f"{x:6.3f}"


def format_evaluation(result: EvaluationResult) -> str:
    """What `ecgtune evaluate` prints."""
    from ecgtune.ensembles.evaluate.report import BELOW
    from ecgtune.search import metric_keys as K

    macro = result.row["macro"]
    assessed = result.row["n_labels"] - len(result.not_assessable)
    lines = [f"Evaluated {len(result.records)} records (folds {result.folds}): macro AUROC "
             f"{_fmt(macro[K.AUROC]).strip()}, AUPRC {_fmt(macro[K.AUPRC]).strip()}, F1 "
             f"{_fmt(macro[K.F1]).strip()} over {assessed} assessable labels"]
    if result.not_assessable:
        lines.append(f"  not assessable: {', '.join(result.not_assessable)}")
    below = [p["label"] for p in result.operating_points if p["status"] == BELOW]
    if below:
        lines.append(f"  below their operating-point target (whole CI): {', '.join(below)}")
    if result.by_source:
        lines.append(f"  {'source':<20} {'records':>7} {'AUROC':>6} {'AUPRC':>6} {'F1':>6}")
        for source, row in result.by_source.items():
            n = int(np.sum(result.sources == source))
            m = (row or {}).get("macro", {})
            lines.append(f"  {source:<20} {n:7d} {_fmt(m.get(K.AUROC))} {_fmt(m.get(K.AUPRC))} "
                         f"{_fmt(m.get(K.F1))}{'' if row else '  (nothing assessable)'}")
    lines.append(f"Report: {result.report_dir / 'report.html'}")
    if result.refit_bundle:
        lines.append(f"Refitted bundle (thresholds only; members and calibration unchanged): "
                     f"{result.refit_bundle}")
    if result.run_id:
        lines.append(f"MLflow: evaluation run {result.run_id} of {result.model_name} version "
                     f"{result.model_version}")
    return "\n".join(lines)
