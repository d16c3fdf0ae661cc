"""`ecgtune ensemble`: top-K trials -> selected, calibrated, thresholded ensemble -> fold-9
report -> exported bundle -> MLflow run + registered pyfunc model.

Steps (each in its own module): `members` (find and load the trials), `inference` (member
probabilities on folds 8 and 9), `fitting` (selection, calibration and thresholds on fold 8),
`report` (fold 9 only), `bundle` (export), `registry` (MLflow). Everything that can fail
before the work starts (data directory, tracking store, search name, output directory) is
checked first. The ensemble run ends FINISHED, or FAILED with the error as a tag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.ensembles.errors import EnsembleError
from ecgtune.ensembles.fitting import FitOptions
from ecgtune.ensembles.inference import DEFAULT_BATCH_SIZE, DEFAULT_WINDOWS

__all__ = ["EnsembleOptions", "EnsembleResult", "MemberSummary", "build_ensemble",
           "format_summary"]

log = logging.getLogger(__name__)

ENSEMBLE_FOLD = 8
TEST_FOLD = 9
ROW_ENSEMBLE = "ensemble"
ROW_BEST = "best single trial"
ROW_UNIFORM = "uniform average"
ROW_SEED = "seed-style baseline (0.5)"


@dataclass(frozen=True)
class EnsembleOptions:
    """Options of `build_ensemble` (the `ecgtune ensemble` flags)."""

    data: str | Path
    name: str
    output: str | Path
    top_k: int = 5
    register: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    search_run_id: str | None = None
    metric: str = "macro_auprc"
    init_size: int = 3
    bags: int = 0
    seed: int = 0
    threshold_objective: str = "f1"
    beta: float = 1.0
    min_positives: int = 5
    n_windows: int = DEFAULT_WINDOWS
    batch_size: int = DEFAULT_BATCH_SIZE
    n_boot: int = 1000
    progress: bool = True
    device: str = "auto"  # member predictions: auto (GPU when present) | cpu | cuda
    precision: str = "fp32"  # fp32 (no TF32: matches the CPU) | bf16 (autocast, faster)

    def fit_options(self) -> FitOptions:
        return FitOptions(metric=self.metric, init_size=self.init_size, bags=self.bags,
                          seed=self.seed, threshold_objective=self.threshold_objective,
                          beta=self.beta, min_positives=self.min_positives)

    def validate(self) -> None:
        from ecgtune.ensembles.selection import SELECTION_METRICS
        from ecgtune.search.thresholds import THRESHOLD_OBJECTIVES

        problems = []
        if self.top_k < 1:
            problems.append(f"--top-k must be >= 1, got {self.top_k}")
        if self.metric not in SELECTION_METRICS:
            problems.append(f"unknown metric {self.metric!r}; valid: {sorted(SELECTION_METRICS)}")
        if self.threshold_objective not in THRESHOLD_OBJECTIVES:
            problems.append(f"unknown threshold objective {self.threshold_objective!r}; "
                            f"valid: {sorted(THRESHOLD_OBJECTIVES)}")
        for flag, value in (("--windows", self.n_windows), ("--batch-size", self.batch_size),
                            ("--n-boot", self.n_boot), ("--init-size", self.init_size)):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if self.bags < 0:
            problems.append(f"--bags must be >= 0, got {self.bags}")
        problems += _device_problems(self.device, self.precision)
        if problems:
            raise EnsembleError("; ".join(problems))


def _device_problems(device: str, precision: str) -> list[str]:
    from ecgtune.ensembles.inference import PRECISIONS, resolve_device

    problems = []
    try:
        resolve_device(device)
    except ValueError as exc:
        problems.append(str(exc))
    if precision not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return problems


@dataclass(frozen=True)
class MemberSummary:
    name: str
    run_id: str
    run_name: str
    val_score: float  # the search objective (fold 7)
    fold8_score: float  # the selection metric on fold 8
    count: int  # times picked by the selection
    weight: float
    seed_style: bool


@dataclass
class EnsembleResult:
    """What `build_ensemble` produced; ``rows`` are `evaluate_with_ci` results on fold 9."""

    search_name: str
    search_run_id: str
    run_id: str  # the ensemble's MLflow run
    members: list[MemberSummary]
    rows: dict[str, dict[str, Any]]
    row_keys: dict[str, str]
    calibration: list[Any]  # report.CalibrationSummary for folds 8 and 9
    calibration_methods: list[str]
    thresholds: np.ndarray
    label_names: list[str]
    bundle_dir: Path
    report_dir: Path
    report_files: list[Path]
    model_uri: str
    registered_model: str | None
    model_version: str | None
    metric: str
    fold8_score: float
    best_member_fold8_score: float
    test_records: np.ndarray
    test_probabilities: np.ndarray  # calibrated ensemble on fold 9, as built in process
    predictor: Any = field(repr=False)  # the in-process EnsemblePredictor

    @property
    def weights(self) -> dict[str, float]:
        return {m.name: m.weight for m in self.members if m.weight > 0}

    def _test_calibration(self) -> Any:
        return next(c for c in self.calibration if c.fold == TEST_FOLD)

    @property
    def ece_before(self) -> float:
        return self._test_calibration().ece_before

    @property
    def ece_after(self) -> float:
        return self._test_calibration().ece_after

    @property
    def brier_before(self) -> float:
        return self._test_calibration().brier_before

    @property
    def brier_after(self) -> float:
        return self._test_calibration().brier_after


def build_ensemble(options: EnsembleOptions | None = None, **kwargs: Any) -> EnsembleResult:
    """Build, report, export and register an ensemble. Pass an `EnsembleOptions` or its
    fields as keywords: ``build_ensemble(data=..., name="demo", output="bundle", top_k=3)``."""
    from ecgtune.ensembles.bundle import check_bundle_target
    from ecgtune.ensembles.members import find_search, rank_trials
    from ecgtune.ensembles.registry import finish_run, start_ensemble_run
    from ecgtune.search import tracking

    opts = options if options is not None else EnsembleOptions(**kwargs)
    if options is not None and kwargs:
        opts = dataclasses.replace(options, **kwargs)
    opts.validate()
    data_dir = Path(opts.data)
    if not (data_dir / "manifest.json").is_file():
        raise EnsembleError(
            f"{data_dir} is not a prepared data directory (no manifest.json); pass the "
            "--data the search was run on"
        )
    uri = opts.tracking_uri or tracking.default_tracking_uri()
    tracking.check_tracking_uri(uri)
    check_bundle_target(opts.output)
    client = tracking.client(uri)
    search = find_search(client, opts.name, opts.search_run_id)
    trials = rank_trials(client, search, opts.top_k)
    run_id = start_ensemble_run(client, search.experiment_id, search.run_id,
                                f"ensemble top-{len(trials)} of {opts.name}")
    try:
        result = _build(opts, uri, client, search, trials, run_id)
    except BaseException as exc:
        finish_run(client, run_id, exc)
        raise
    finish_run(client, run_id)
    return result


def _progress(iterable: Any, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="member", disable=not enabled, leave=False)


def _member_probabilities(member: Any, signals: np.ndarray, inputs: Any,
                          opts: EnsembleOptions, device: Any) -> np.ndarray:
    """One member on the chosen device; its weights go back to the CPU for the bundle."""
    from ecgtune.ensembles.inference import member_probabilities

    try:
        return member_probabilities(member.model.to(device), member.spec, signals, inputs,
                                    opts.n_windows, opts.batch_size, device,
                                    precision=opts.precision)
    finally:
        member.model.cpu()


def _build(opts: EnsembleOptions, uri: str, client: Any, search: Any, trials: list,
           run_id: str) -> EnsembleResult:
    from ecgtune.data_prep import load_shards
    from ecgtune.ensembles.bundle import save_bundle
    from ecgtune.ensembles.evaluation import flatten_metrics
    from ecgtune.ensembles.fitting import fit_average, fit_ensemble
    from ecgtune.ensembles.inference import EnsemblePredictor, InputSpec, resolve_device
    from ecgtune.ensembles.members import load_member
    from ecgtune.ensembles.registry import log_batch, log_pyfunc_model
    from ecgtune.ensembles.report import ReportRow, calibration_summary, write_ensemble_report

    data = load_shards(opts.data, folds=[ENSEMBLE_FOLD, TEST_FOLD])
    label_names = list(data.label_map.names)
    on8, on9 = data.folds == ENSEMBLE_FOLD, data.folds == TEST_FOLD
    for fold, mask in ((ENSEMBLE_FOLD, on8), (TEST_FOLD, on9)):
        if not mask.any():
            raise EnsembleError(f"{opts.data}: fold {fold} has no records; prepare more records")
    manifest_sha = hashlib.sha256((Path(opts.data) / "manifest.json").read_bytes()).hexdigest()
    if search.data_manifest_sha256 and search.data_manifest_sha256 != manifest_sha:
        log.warning("the data manifest differs from the one search %r was run on; members "
                    "are evaluated on data they may have been trained on", opts.name)
    y = data.labels.astype(bool)
    y8, y9 = y[on8], y[on9]
    group_of = [label.group for label in data.label_map.labels]

    members = [load_member(t, opts.name, opts.storage, label_names)
               for t in _progress(trials, "loading members", opts.progress)]
    inputs = InputSpec.from_manifest(data.manifest)
    device = resolve_device(opts.device)
    probs = np.stack([
        _member_probabilities(m, data.signals, inputs, opts, device)
        for m in _progress(members, "member predictions (folds 8+9)", opts.progress)
    ])
    p8, p9 = probs[:, on8], probs[:, on9]
    names = [m.name for m in members]
    fit_opts = opts.fit_options()
    fitted = fit_ensemble(p8, y8, names, fit_opts, groups=group_of)
    selector = fitted.selector
    chosen = [int(i) for i in selector.selected_]
    predictor = EnsemblePredictor(
        [(members[i].spec, members[i].model) for i in chosen],
        selector.weights_[chosen], fitted.calibrator, fitted.thresholds, label_names, inputs,
        opts.n_windows, label_map=data.label_map.name,
        label_groups=data.label_map.group_indices(), group_names=data.label_map.group_names,
    )
    uncal8, uncal9 = fitted.predict_uncalibrated(p8), fitted.predict_uncalibrated(p9)
    test_probs = fitted.calibration.predict(uncal9)

    # Report rows on fold 9.
    notes = []
    best = members[0]
    if best.val_thresholds is not None:
        best_t = best.val_thresholds
    else:
        best_t = np.full(len(label_names), 0.5)
        notes.append(f"{best.name} has no thresholds.json: its row uses 0.5 thresholds")
    uniform = fit_average(p8, y8, fit_opts, groups=group_of)
    rows = [
        ReportRow(ROW_ENSEMBLE, "test", test_probs, fitted.thresholds,
                  f"{len(chosen)} of {len(members)} members, calibrated, thresholds fitted "
                  "on fold 8"),
        ReportRow(ROW_BEST, "best_trial", p9[0], best_t,
                  f"{best.name} (best by the search objective), thresholds from its trial "
                  "(fold 7)"),
        ReportRow(ROW_UNIFORM, "uniform", uniform.predict(p9), uniform.thresholds,
                  f"mean of the top {len(members)}, calibrated and thresholded on fold 8"),
    ]
    seed = next((i for i, m in enumerate(members) if m.spec.is_seed_style), None)
    if seed is not None:
        rows.append(ReportRow(ROW_SEED, "seed_baseline", p9[seed],
                              np.full(len(label_names), 0.5),
                              f"{members[seed].name}: independent group heads, 0.5 thresholds"))
    else:
        notes.append("no seed-style trial (independent fusion, one branch per label group) "
                     "among the members: no seed-style baseline row")
    unfitted = [n for n, ok in zip(label_names, fitted.calibration.fitted, strict=True) if not ok]
    if unfitted:
        notes.append(f"fewer than {opts.min_positives} positives on fold 8, threshold "
                     f"{fit_opts.fallback} (fallback): {', '.join(unfitted)}")
    calibration = [calibration_summary(ENSEMBLE_FOLD, y8, uncal8, fitted.calibration.predict(
        uncal8)), calibration_summary(TEST_FOLD, y9, uncal9, test_probs)]
    weights = {names[i]: float(selector.weights_[i]) for i in chosen}
    member_info = {
        m.name: {"run_id": m.trial.run_id, "run_name": m.trial.run_name,
                 "trial_id": m.trial.trial_id, "val_score": m.trial.score,
                 "count": int(selector.counts_[i])}
        for i, m in enumerate(members)
    }
    summaries = [
        MemberSummary(m.name, m.trial.run_id, m.trial.run_name, m.trial.score,
                      float(selector.member_scores_[i]), int(selector.counts_[i]),
                      float(selector.weights_[i]), m.spec.is_seed_style)
        for i, m in enumerate(members)
    ]
    fit_record = {
        "search": opts.name,
        "search_run_id": search.run_id,
        "data_manifest_sha256": manifest_sha,
        "fold": ENSEMBLE_FOLD,
        "records": int(on8.sum()),
        "candidates": [{"name": s.name, "run_id": s.run_id, "val_score": s.val_score,
                        "fold8_score": s.fold8_score} for s in summaries],
        "selection": selector.to_dict(),
        "calibration_methods": list(fit_opts.calibration_methods),
        "thresholds": {**fit_opts.threshold_params(),
                       "fitted": [bool(x) for x in fitted.calibration.fitted]},
    }
    source = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "search": {"name": opts.name, "run_id": search.run_id,
                   "experiment_id": search.experiment_id, "path": search.search_path},
        "ensemble_run_id": run_id,
        "tracking_uri": uri,
        "data": {"dir": str(Path(opts.data).resolve()), "manifest_sha256": manifest_sha},
        "options": {k: (str(v) if isinstance(v, Path) else v)
                    for k, v in dataclasses.asdict(opts).items()},
    }
    with tempfile.TemporaryDirectory(prefix="ecgtune-report-") as tmp:
        results, _ = write_ensemble_report(
            Path(tmp) / "report", y9, rows, uncal9, label_names, calibration,
            fitted.calibrator.methods_,
            title=f"Ensemble of search {opts.name!r}: fold {TEST_FOLD} (test, "
                  f"{int(on9.sum())} records)",
            notes=notes,
            summary={"search": opts.name, "search_run_id": search.run_id,
                     "ensemble_run_id": run_id, "members": [dataclasses.asdict(s)
                                                            for s in summaries],
                     "weights": weights, "selection_metric": opts.metric,
                     "fold8_score": selector.score_},
            n_boot=opts.n_boot, seed=opts.seed, calibrated_row=ROW_ENSEMBLE,
        )
        bundle_dir = save_bundle(opts.output, predictor, fit=fit_record,
                                 member_info=member_info, source=source,
                                 include={"report": Path(tmp) / "report"})
    report_dir = bundle_dir / "report"

    # MLflow: params, metrics, report artifacts, the pyfunc model.
    params = {
        "top_k": opts.top_k, "members_considered": len(members), "metric": opts.metric,
        "init_size": opts.init_size, "bags": opts.bags, "seed": opts.seed,
        "n_windows": opts.n_windows, "threshold_objective": opts.threshold_objective,
        "device": str(device), "precision": opts.precision,
        "members": ",".join(weights), "weights": json.dumps(weights),
        "calibration_methods": json.dumps(dict(zip(label_names, fitted.calibrator.methods_,
                                                   strict=True))),
        "bundle": str(bundle_dir), "data": str(Path(opts.data).resolve()),
    }
    metrics: dict[str, float] = {}
    for row in rows:
        flat = flatten_metrics(results[row.name], split=row.key if row.key == "test"
                               else f"test_{row.key}")
        metrics.update(flat if row.key == "test" else
                       {k: v for k, v in flat.items() if k.count("/") == 1})
    for c in calibration:
        for k, v in c.to_dict().items():
            if k != "fold":
                metrics[f"calibration/fold{c.fold}_{k}"] = v
    metrics["fold8/ensemble_" + opts.metric] = float(selector.score_)
    metrics["fold8/best_member_" + opts.metric] = float(
        selector.member_scores_[selector.best_member_])
    log_batch(client, run_id, params, metrics)
    client.log_artifacts(run_id, str(report_dir), "report")
    model = log_pyfunc_model(
        client, uri, run_id, bundle_dir, label_names, inputs.n_samples, opts.register,
        tags={"ecgtune.search": opts.name, "ecgtune.search_run_id": search.run_id,
              "ecgtune.ensemble_run_id": run_id},
    )
    return EnsembleResult(
        search_name=opts.name, search_run_id=search.run_id, run_id=run_id, members=summaries,
        rows=results, row_keys={r.name: r.key for r in rows}, calibration=calibration,
        calibration_methods=list(fitted.calibrator.methods_), thresholds=fitted.thresholds,
        label_names=label_names, bundle_dir=bundle_dir, report_dir=report_dir,
        report_files=sorted(p for p in report_dir.rglob("*") if p.is_file()),
        model_uri=model.model_uri, registered_model=model.name, model_version=model.version,
        metric=opts.metric, fold8_score=float(selector.score_),
        best_member_fold8_score=float(selector.member_scores_[selector.best_member_]),
        test_records=data.records[on9], test_probabilities=test_probs, predictor=predictor,
    )


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def format_summary(result: EnsembleResult) -> str:
    """The short summary `ecgtune ensemble` prints."""
    from ecgtune.search import metric_keys as K

    lines = [
        f"Ensemble of search {result.search_name!r} (search run {result.search_run_id}): "
        f"{len(result.weights)} of the top {len(result.members)} trials selected on fold "
        f"{ENSEMBLE_FOLD} by {result.metric} ({result.fold8_score:.4f}; best single member "
        f"{result.best_member_fold8_score:.4f})",
        f"  {'member':<24} {'val AUPRC':>9} {'fold-8':>7} {'picks':>5} {'weight':>7}",
    ]
    for m in result.members:
        lines.append(f"  {m.name:<24} {m.val_score:9.4f} {m.fold8_score:7.4f} {m.count:5d} "
                     f"{m.weight:7.3f}{'  (seed-style)' if m.seed_style else ''}")
    n9 = next(iter(result.rows.values()))["n_samples"]
    lines.append(f"Fold {TEST_FOLD} (test, {n9} records)   {'AUROC':>6} {'AUPRC':>6} {'F1':>6}")
    for name, row in result.rows.items():
        macro = row["macro"]
        lines.append(f"  {name:<28} {_fmt(macro[K.AUROC])} {_fmt(macro[K.AUPRC])} "
                     f"{_fmt(macro[K.F1])}")
    if ROW_SEED not in result.rows:
        lines.append(f"  {ROW_SEED:<28} (no seed-style trial among the members)")
    lines.append(f"Calibration (fold {TEST_FOLD}): ECE {result.ece_before:.4f} -> "
                 f"{result.ece_after:.4f}, Brier {result.brier_before:.4f} -> "
                 f"{result.brier_after:.4f}")
    lines.append(f"Bundle: {result.bundle_dir}")
    lines.append(f"Report: {result.report_dir / 'report.html'}")
    lines.append(f"MLflow: ensemble run {result.run_id}; model {result.model_uri}")
    if result.registered_model:
        lines.append(f"Registered: {result.registered_model} version {result.model_version} "
                     f"(alias champion: models:/{result.registered_model}@champion)")
    return "\n".join(lines)
