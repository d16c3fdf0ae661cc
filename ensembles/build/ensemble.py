"""`ecgtune ensemble`: top-K trials -> selected, calibrated, thresholded ensemble -> test-fold
report -> exported bundle -> MLflow run + registered pyfunc model.

Folds are named by their role in the data manifest: the *ensemble fold* (selection,
calibration, thresholds) and the *test fold* (reported once, never fitted on). When `prep`
held sources out, their *external fold* is loaded apart, after the fitting folds, predicted by
the same members and reported beside the test fold (internal vs external, and its operating
points); nothing is fitted on it. Steps (each in
its own module): `members` (find and load the trials), `inference` (member probabilities on
both folds), `fitting` (everything fitted on the ensemble fold), `report` (the test fold only),
`bundle` (export), `registry` (MLflow). Everything that can fail before the work starts (data
directory, tracking store, search name, output directory, options) is checked first. The
ensemble run ends FINISHED, or FAILED with the error as a tag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.data_prep.heartbeat import stage
from ecgtune.data_prep.shards import manifest_sha256
from ecgtune.ensembles.build.fold_roles import ENSEMBLE, EXTERNAL, TEST, fold_of_role
from ecgtune.ensembles.errors import EnsembleError
from ecgtune.ensembles.options import EnsembleOptions

__all__ = ["EnsembleOptions", "EnsembleResult", "MemberSummary", "build_ensemble",
           "format_summary", "policy_text", "selection_sentence"]

log = logging.getLogger(__name__)

ROW_ENSEMBLE = "ensemble"
ROW_BEST = "best single trial"
ROW_UNIFORM = "uniform average"
ROW_SEED = "seed-style baseline (0.5)"
NO_SEED_STYLE = ("No seed-style trial (independent fusion, one branch per label group) was "
                 "among the members, so the report has no seed-style baseline row.")


@dataclass(frozen=True)
class MemberSummary:
    name: str
    run_id: str
    run_name: str
    val_score: float  # the search objective (validation fold)
    ensemble_fold_score: float  # the selection metric on the ensemble fold
    count: int  # times picked by the selection
    weight: float
    seed_style: bool


@dataclass
class EnsembleResult:
    """What `build_ensemble` produced; ``rows`` are `evaluate_with_ci` results on the test
    fold. ``selection`` is the selector's `to_dict` (``chosen``: "greedy" or "uniform")."""

    search_name: str
    search_run_id: str
    run_id: str  # the ensemble's MLflow run
    members: list[MemberSummary]
    rows: dict[str, dict[str, Any]]
    row_keys: dict[str, str]
    calibration: list[Any]  # report.CalibrationSummary for the ensemble and test folds
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
    folds: dict[str, int]  # role -> fold number, from the data manifest
    tracking_uri: str
    experiment_id: str
    trained_on: dict[str, int]  # source database -> training records (data manifest)
    ensemble_fold_score: float
    best_member_ensemble_fold_score: float
    selection: dict[str, Any]
    test_records: np.ndarray
    test_probabilities: np.ndarray  # calibrated ensemble on the test fold, as built in process
    predictor: Any = field(repr=False)  # the in-process EnsemblePredictor
    # Per label: policy, target, test-fold value with CI, status (`report.operating_points`).
    operating_points: list[dict[str, Any]] = field(default_factory=list)
    # What the summary must say about the members' search (still running, fewer than --top-k).
    search_notes: list[str] = field(default_factory=list)
    # Row name -> how its thresholds were chosen (its operating point), e.g. "f1, ensemble fold".
    row_thresholds: dict[str, str] = field(default_factory=dict)
    # The held-out sources' fold, when prep made one (`_external_report`): fold, sources,
    # records, the ensemble's and best trial's rows there, and its operating points.
    external: dict[str, Any] | None = None
    # --refer-rate: the rule and, per fold role, `referral.referral_summary`.
    referral: dict[str, Any] | None = None

    @property
    def weights(self) -> dict[str, float]:
        return {m.name: m.weight for m in self.members if m.weight > 0}

    def _test_calibration(self) -> Any:
        return next(c for c in self.calibration if c.role == TEST)

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
    fields as flat keywords (`FitOptions` fields included): ``build_ensemble(data=...,
    name="demo", output="bundle", top_k=3, seed=1)``."""
    from ecgtune.ensembles.build.members import (
        check_search_finished,
        fewer_than_asked,
        find_search,
        rank_trials,
    )
    from ecgtune.ensembles.ship.bundle import check_bundle_target
    from ecgtune.ensembles.ship.registry import ensemble_run_name, finish_run, start_ensemble_run
    from ecgtune.search import tracking

    if options is None:
        opts = EnsembleOptions.create(**kwargs)
    else:
        opts = options.replace(**kwargs) if kwargs else options
    if not (Path(opts.data) / "manifest.json").is_file():
        raise EnsembleError(
            f"{opts.data} is not a prepared data directory (no manifest.json); pass the "
            "--data the search was run on"
        )
    _check_policy_labels(opts)
    stage("opening the MLflow store and finding the search")
    # The store holds the search already: one that is not there is a wrong --tracking-uri
    # (or MLFLOW_TRACKING_URI), never a new empty store.
    uri = tracking.resolve_tracking_uri(opts.tracking_uri)
    tracking.check_tracking_uri(uri, must_exist=True)
    check_bundle_target(opts.output)
    client = tracking.client(uri)
    search = find_search(client, opts.name, opts.search_run_id)
    running = check_search_finished(client, search, uri, opts.allow_running)
    trials = rank_trials(client, search, opts.top_k)
    notes = [n for n in (running, fewer_than_asked(opts.name, trials, opts.top_k)) if n]
    tracking.ensure_key_metrics_view(client, search.experiment_id)
    run_name = ensemble_run_name(client, search.experiment_id, opts.name, len(trials),
                                 policy_text(opts), _budget_text(opts))
    run_id = start_ensemble_run(client, search.experiment_id, search.run_id, run_name)
    if notes:
        client.set_tag(run_id, "ecgtune.search_note", " ".join(notes)[:5000])
    try:
        result = _build(opts, uri, client, search, trials, run_id)
        # What the run became: how many members it kept, and the registered version.
        client.update_run(run_id, name=ensemble_run_name(
            client, search.experiment_id, opts.name, len(trials), policy_text(opts),
            _budget_text(opts), used=len(result.weights),
            model=result.registered_model, version=result.model_version, run_id=run_id))
    except BaseException as exc:
        finish_run(client, run_id, exc)
        raise
    finish_run(client, run_id)
    result.search_notes = notes
    return result


def policy_text(opts: EnsembleOptions) -> str:
    """The thresholds' policy in a few words: ``f1``, ``sensitivity:0.95 (+2 per label)``."""
    overrides = len(opts.fit.threshold_policy_for)
    return opts.fit.threshold_policy + (f" (+{overrides} per label)" if overrides else "")


def _check_policy_labels(opts: EnsembleOptions) -> None:
    """--threshold-policy-for labels must be labels of the data, before any work starts."""
    from ecgtune.data_prep import read_manifest
    from ecgtune.ensembles.errors import EnsembleOptionError

    names = [str(item["name"]) for item in read_manifest(opts.data)["labels"]]
    try:
        opts.fit.policies().check_labels(names)
    except ValueError as exc:
        raise EnsembleOptionError(str(exc)) from None


def _progress(iterable: Any, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="member", disable=not enabled, leave=False)


# ---------------------------------------------------------------------------------------------
# The steps of one build, in order.


@dataclass
class _Folds:
    """The ensemble and test folds of the prepared data, found by role in its manifest."""

    data: Any  # ECGDataset holding both folds
    numbers: dict[str, int]  # role -> fold number
    masks: dict[str, np.ndarray]  # role -> records of that fold in ``data``
    manifest_sha256: str
    databases: dict[str, int]  # source database -> records (the manifest's provenance)

    def labels(self, role: str) -> np.ndarray:
        return self.data.labels.astype(bool)[self.masks[role]]

    def sources(self, role: str) -> np.ndarray:
        """Each record's source in the fold of ``role`` (what --select-by groups by)."""
        return np.asarray(self.data.sources)[self.masks[role]]

    @property
    def label_names(self) -> list[str]:
        return list(self.data.label_map.names)

    @property
    def groups(self) -> list[str]:
        return [label.group for label in self.data.label_map.labels]


def _load_folds(opts: EnsembleOptions, search: Any) -> _Folds:
    from ecgtune.data_prep import load_shards, read_manifest

    manifest = read_manifest(opts.data)
    numbers = {role: fold_of_role(manifest, role) for role in (ENSEMBLE, TEST)}
    data = load_shards(opts.data, folds=list(numbers.values()))
    masks = {role: data.folds == fold for role, fold in numbers.items()}
    for role, mask in masks.items():
        if not mask.any():
            raise EnsembleError(f"{opts.data}: the {role} fold (fold {numbers[role]}) has no "
                                "records; prepare more records")
    sha = manifest_sha256(opts.data)
    if search.data_manifest_sha256 and search.data_manifest_sha256 != sha:
        log.warning("the data manifest differs from the one search %r was run on; members "
                    "are evaluated on data they may have been trained on", opts.name)
    return _Folds(data, numbers, masks, sha, dict(manifest.get("databases") or {}))


def _load_external(opts: EnsembleOptions) -> Any | None:
    """The external fold (sources prep held out), or None when there is none; loaded on its
    own, so the folds the ensemble is fitted on are read without it."""
    from ecgtune.data_prep import fold_roles, load_shards, read_manifest

    folds = fold_roles(read_manifest(opts.data)).get(EXTERNAL, ())
    if not folds:
        return None
    data = load_shards(opts.data, folds=list(folds))
    return data if len(data) else None


@dataclass
class _Members:
    """The loaded candidates (best first) and their probabilities (M, N, C) per fold role."""

    members: list[Any]
    probs: dict[str, np.ndarray]
    inputs: Any  # InputSpec
    device: Any  # torch.device the members ran on

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


def _member_probabilities(member: Any, signals: np.ndarray, lengths: np.ndarray, inputs: Any,
                          opts: EnsembleOptions, device: Any) -> np.ndarray:
    """One member on the chosen device; its weights go back to the CPU for the bundle."""
    from ecgtune.ensembles.ship.inference import member_probabilities

    try:
        return member_probabilities(member.model.to(device), member.spec, signals, inputs,
                                    opts.n_windows, opts.batch_size, device,
                                    precision=opts.precision, lengths=lengths)
    finally:
        member.model.cpu()


def _predict_members(opts: EnsembleOptions, trials: list, folds: _Folds,
                     external: Any | None = None) -> _Members:
    from ecgtune.ensembles.build.members import load_member
    from ecgtune.ensembles.ship.inference import InputSpec, resolve_device

    stage(f"loading {len(trials)} members from their checkpoints")
    members = [load_member(t, opts.name, opts.storage, folds.label_names)
               for t in _progress(trials, "loading members", opts.progress)]
    inputs = InputSpec.from_manifest(folds.data.manifest)
    device = resolve_device(opts.device)
    records = len(folds.data.signals)
    probs = []
    for i, m in enumerate(_progress(members, "member predictions (ensemble + test folds)",
                                    opts.progress)):
        stage(f"predicting the ensemble and test folds ({records} records) with member "
              f"{i + 1} of {len(members)}, {m.trial.run_name or m.name}")
        probs.append(_member_probabilities(m, folds.data.signals, folds.data.lengths, inputs,
                                           opts, device))
    stacked = np.stack(probs)
    by_role = {role: stacked[:, mask] for role, mask in folds.masks.items()}
    if external is not None:
        stage(f"predicting the external fold ({len(external)} records) with "
              f"{len(members)} members")
        by_role[EXTERNAL] = np.stack([
            _member_probabilities(m, external.signals, external.lengths, inputs, opts, device)
            for m in members])
    return _Members(members, by_role, inputs, device)


def _budget(opts: EnsembleOptions) -> Any:
    from ecgtune.ensembles.build.budget import Budget

    return Budget(max_gflops=opts.max_gflops, max_ms=opts.max_ms)


def _budget_text(opts: EnsembleOptions) -> str:
    budget = _budget(opts)
    return f"budget {budget.describe()}" if budget.active else ""


def _within_budget(opts: EnsembleOptions, client: Any, mem: _Members,
                   y_ens: np.ndarray, sources: np.ndarray | None = None,
                   ) -> tuple[_Members, list[Any]]:
    """Under --max-gflops/--max-ms: the candidates narrowed to the pool whose selected
    ensemble fits the budget (ensembles.build.budget), and every candidate tried for the report."""
    from ecgtune.ensembles.build.budget import member_costs, select_within_budget

    budget = _budget(opts)
    if not budget.active:
        return mem, []
    costs = member_costs(client, mem.members, need_ms=opts.max_ms > 0)
    pool, candidates = select_within_budget(mem.probs[ENSEMBLE], y_ens, mem.names, costs,
                                            budget, opts.fit, sources)
    chosen = next(c for c in candidates if c.chosen)
    log.info("budget %s: %d of %d members usable, ensemble of %d at %.3g GFLOP, %.3g ms",
             budget.describe(), len(pool), len(mem.members), len(chosen.members),
             chosen.cost.gflops, chosen.cost.cpu_ms)
    narrowed = _Members([mem.members[i] for i in pool],
                        {role: p[pool] for role, p in mem.probs.items()}, mem.inputs, mem.device)
    return narrowed, candidates


def _log_cost(client: Any, run_id: str, opts: EnsembleOptions, candidates: list[Any],
              member_rows: list[Any]) -> None:
    """What the ensemble costs per record (the sum over the members it uses: the runs table's
    cost columns), and under a budget the budget itself, on the ensemble's run."""
    from mlflow.entities import Metric, Param

    from ecgtune.search import metric_keys as K

    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    params = []
    if candidates:
        chosen = next(c for c in candidates if c.chosen)
        costs = {K.COST_GFLOPS: chosen.cost.gflops, K.COST_CPU_MS: chosen.cost.cpu_ms}
        params = [Param("max_gflops", str(opts.max_gflops)), Param("max_ms", str(opts.max_ms))]
    else:
        used = [m for m in member_rows if m.weight > 0]
        costs = {key: float(sum(values)) for key, values in (
            (K.COST_GFLOPS, [m.gflops for m in used]), (K.COST_CPU_MS, [m.cpu_ms for m in used]))
            if used and None not in values}
    metrics = [Metric(key, float(value), now, 0) for key, value in costs.items()]
    if metrics or params:
        client.log_batch(run_id, metrics=metrics, params=params)


def _member_rows(client: Any, mem: _Members, summaries: list[MemberSummary]) -> list[Any]:
    """The report's members table: each candidate's weight, trial, config, scores and the
    cost its trial measured (None where its trial logged none)."""
    from ecgtune.ensembles.evaluate.report import MemberRow, config_summary
    from ecgtune.search import metric_keys as K

    rows = []
    for member, summary in zip(mem.members, summaries, strict=True):
        try:
            logged = client.get_run(member.trial.run_id).data.metrics
        except Exception:  # a cost column is not worth failing a build
            logged = {}
        rows.append(MemberRow(
            summary.name, summary.run_name, summary.weight, summary.count, summary.val_score,
            summary.ensemble_fold_score, config_summary(member.trial_config),
            logged.get(K.COST_GFLOPS), logged.get(K.COST_CPU_MS), summary.seed_style))
    return rows


def _budget_figures(opts: EnsembleOptions, candidates: list[Any], out: Path) -> list[Any]:
    """The budget's quality-cost view (every member and ensemble tried) for the report."""
    if not candidates:
        return []
    from ecgtune.ensembles.evaluate.plots import plot_quality_cost
    from ecgtune.ensembles.evaluate.report import Figure

    by_ms = opts.max_gflops <= 0  # the budget's own measure on the x axis
    points = [{"cost": c.cost.cpu_ms if by_ms else c.cost.gflops, "score": c.score,
               "kind": "member" if len(c.members) == 1 and not c.chosen else "ensemble",
               "chosen": c.chosen, "label": "+".join(m.split("-", 1)[0] for m in c.members)}
              for c in candidates]
    out.mkdir(parents=True, exist_ok=True)
    path = plot_quality_cost(
        points, opts.max_ms if by_ms else opts.max_gflops,
        "summed CPU ms per record" if by_ms else "summed forward GFLOP per 10 s record",
        opts.fit.metric, out / "budget_quality_cost.png")
    return [Figure.read(path, f"Every member and every ensemble the budget of "
                              f"{_budget(opts).describe()} tried: ensemble-fold "
                              f"{opts.fit.metric} against cost (budget_candidates.csv)")]


def _predictor(fitted: Any, mem: _Members, folds: _Folds, opts: EnsembleOptions) -> Any:
    """The in-process predictor: the selected members with their weights, calibrated."""
    from ecgtune.ensembles.ship.inference import EnsemblePredictor

    chosen = [int(i) for i in fitted.selector.selected_]
    label_map = folds.data.label_map
    return EnsemblePredictor(
        [(mem.members[i].spec, mem.members[i].model) for i in chosen],
        fitted.selector.weights_[chosen], fitted.calibrator, fitted.thresholds,
        folds.label_names, mem.inputs, opts.n_windows, label_map=label_map.name,
        label_groups=label_map.group_indices(), group_names=label_map.group_names,
        referral=fitted.referral,
    )


def selection_sentence(selection: dict[str, Any], n_members: int) -> str:
    """How the ensemble was chosen on the ensemble fold, in one sentence (report, summary)."""
    metric = selection["metric"]
    greedy, uniform = selection["selection_score"], selection["uniform_score"]
    if selection["chosen"] == "uniform":
        return (f"The uniform average of all {n_members} members scored {uniform:.4f} "
                f"{metric} on the ensemble fold, {uniform - greedy:.4f} above the greedy "
                f"selection ({greedy:.4f}), so the ensemble weighs every member equally.")
    margin = (f"{greedy - uniform:.4f} above" if greedy > uniform else "level with")
    return (f"The greedy selection scored {greedy:.4f} {metric} on the ensemble fold, "
            f"{margin} the uniform average of all {n_members} members ({uniform:.4f}), so "
            "the ensemble keeps the selected weights.")


def _report_rows(opts: EnsembleOptions, folds: _Folds, mem: _Members, fitted: Any,
                 uniform: Any, test_probs: np.ndarray) -> tuple[list[Any], list[str]]:
    """The test-fold rows (ensemble, best single trial, uniform average, seed-style baseline
    when a member is one) and the report's notes."""
    from ecgtune.ensembles.evaluate.report import ReportRow

    n_labels = len(folds.label_names)
    p_test = mem.probs[TEST]
    best = mem.members[0]
    notes = [selection_sentence(fitted.selector.to_dict(), len(mem.members))]
    best_t = best.val_thresholds
    best_by = "f1, validation fold"
    if best_t is None:
        best_t = np.full(n_labels, 0.5)
        best_by = "0.5"
        notes.append(f"{best.name} has no thresholds.json: its row uses 0.5 thresholds")
    policy = policy_text(opts)
    rows = [
        ReportRow(ROW_ENSEMBLE, "test", test_probs, fitted.thresholds,
                  f"{len(fitted.selector.selected_)} of {len(mem.members)} members, "
                  "calibrated, thresholds fitted on the ensemble fold",
                  thresholds_by=f"{policy}, ensemble fold"),
        ReportRow(ROW_BEST, "best_trial", p_test[0], best_t,
                  f"{best.name} (best by the search objective), thresholds from its trial "
                  "(validation fold)", thresholds_by=best_by),
        ReportRow(ROW_UNIFORM, "uniform", uniform.predict(p_test), uniform.thresholds,
                  f"mean of the top {len(mem.members)}, calibrated and thresholded on the "
                  "ensemble fold", thresholds_by=f"{policy}, ensemble fold"),
    ]
    seed = next((i for i, m in enumerate(mem.members) if m.spec.is_seed_style), None)
    if seed is not None:
        rows.append(ReportRow(ROW_SEED, "seed_baseline", p_test[seed], np.full(n_labels, 0.5),
                              f"{mem.members[seed].name}: independent group heads, 0.5 "
                              "thresholds", thresholds_by="0.5"))
    else:
        notes.append(NO_SEED_STYLE)
    point_note = operating_point_note(policy, best_by)
    if point_note:
        notes.insert(0, point_note)
    unfitted = [n for n, ok in zip(folds.label_names, fitted.calibration.fitted, strict=True)
                if not ok]
    if unfitted:
        notes.append(f"fewer than {opts.fit.min_positives} positives on the ensemble fold, "
                     f"threshold {opts.fit.fallback} (fallback): {', '.join(unfitted)}")
    return rows, notes


def operating_point_note(policy: str, best_by: str) -> str | None:
    """The sentence the report and the summary add when the ensemble's F1 and the best single
    trial's are measured at different operating points (None when both maximise F1)."""
    if policy == "f1" and best_by.startswith("f1"):
        return None
    return (f"F1 (and the other threshold-dependent metrics) of the ensemble and of the best "
            f"single trial are at different operating points: the ensemble's thresholds "
            f"follow {policy} on the ensemble fold, the best single trial's {best_by}. "
            "Compare the models by AUROC and AUPRC (no threshold); the Operating points "
            "table shows what each label's policy reached.")


def _summaries(mem: _Members, selector: Any) -> list[MemberSummary]:
    return [
        MemberSummary(m.name, m.trial.run_id, m.trial.run_name, m.trial.score,
                      float(selector.member_scores_[i]), int(selector.counts_[i]),
                      float(selector.weights_[i]), m.spec.is_seed_style)
        for i, m in enumerate(mem.members)
    ]


def _member_info(mem: _Members, selector: Any) -> dict[str, dict[str, Any]]:
    return {m.name: {"run_id": m.trial.run_id, "run_name": m.trial.run_name,
                     "trial_id": m.trial.trial_id, "val_score": m.trial.score,
                     "count": int(selector.counts_[i])}
            for i, m in enumerate(mem.members)}


def _fit_record(opts: EnsembleOptions, search: Any, folds: _Folds,
                summaries: list[MemberSummary], fitted: Any) -> dict[str, Any]:
    """bundle.json's ``fit``: what was fitted on which fold, from which candidates.
    ``thresholds`` holds the threshold policy: ``policy`` (the default) and ``policies``
    (one per label), the ONNX export's metadata and `ecgtune evaluate` read them there."""
    from ecgtune.ensembles.build.policies import policy_record

    return {
        "search": opts.name,
        "search_run_id": search.run_id,
        "data_manifest_sha256": folds.manifest_sha256,
        # Provenance travels with the model: `predict` and the report say when it is synthetic.
        "trained_on": folds.databases,
        "role": ENSEMBLE,
        "fold": folds.numbers[ENSEMBLE],
        "records": int(folds.masks[ENSEMBLE].sum()),
        "candidates": [{"name": s.name, "run_id": s.run_id, "val_score": s.val_score,
                        "ensemble_fold_score": s.ensemble_fold_score} for s in summaries],
        "selection": fitted.selector.to_dict(),
        "calibration_methods": list(opts.fit.calibration_methods),
        "thresholds": {**opts.fit.threshold_params(),
                       **policy_record(fitted.calibration.policies, folds.label_names,
                                       opts.fit.policies().default),
                       "fitted": [bool(x) for x in fitted.calibration.fitted],
                       # What each stated confidence reached on the ensemble fold.
                       "confidence_bounds": fitted.calibration.bounds},
    }


def _source_record(opts: EnsembleOptions, search: Any, run_id: str, uri: str,
                   folds: _Folds) -> dict[str, Any]:
    """bundle's source.json: where the ensemble came from and with which options."""
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "search": {"name": opts.name, "run_id": search.run_id,
                   "experiment_id": search.experiment_id, "path": search.search_path},
        "ensemble_run_id": run_id,
        "tracking_uri": uri,
        "data": {"dir": str(Path(opts.data).resolve()),
                 "manifest_sha256": folds.manifest_sha256, "folds": folds.numbers},
        "options": json.loads(json.dumps(dataclasses.asdict(opts), default=str)),
    }


def _mlflow_metrics(rows: list[Any], results: dict[str, Any], calibration: list[Any],
                    selector: Any) -> dict[str, float]:
    """Test-fold metrics (per label for the ensemble, macro for the comparators), calibration
    before/after per fold role, and the selection's scores on the ensemble fold."""
    from ecgtune.ensembles.evaluate.metrics import flatten_metrics

    metrics: dict[str, float] = {}
    for row in rows:
        flat = flatten_metrics(results[row.name], split=row.key if row.key == "test"
                               else f"test_{row.key}")
        metrics.update(flat if row.key == "test" else
                       {k: v for k, v in flat.items() if k.count("/") == 1})
    for c in calibration:
        for k, v in c.to_dict().items():
            if k not in ("role", "fold"):
                metrics[f"calibration/{c.role}_{k}"] = v
    metric = selector.metric
    metrics[f"selection/ensemble_{metric}"] = float(selector.score_)
    metrics[f"selection/greedy_{metric}"] = float(selector.selection_score_)
    metrics[f"selection/uniform_{metric}"] = float(selector.uniform_score_)
    metrics[f"selection/best_member_{metric}"] = float(
        selector.member_scores_[selector.best_member_])
    return metrics


def _mlflow_params(opts: EnsembleOptions, mem: _Members, fitted: Any, weights: dict,
                   bundle_dir: Path, label_names: list[str]) -> dict[str, Any]:
    fit = opts.fit
    return {
        "top_k": opts.top_k, "members_considered": len(mem.members), "metric": fit.metric,
        "init_size": fit.init_size, "bags": fit.bags, "seed": fit.seed,
        "n_windows": opts.n_windows, "threshold_policy": fit.threshold_policy,
        "select_by": fit.select_by, "refer_rate": fit.refer_rate,
        "threshold_policy_for": ",".join(fit.threshold_policy_for),
        "device": str(mem.device), "precision": opts.precision,
        "selection_chosen": fitted.selector.chosen_,
        "members": ",".join(weights), "weights": json.dumps(weights),
        "calibration_methods": json.dumps(dict(zip(label_names, fitted.calibrator.methods_,
                                                   strict=True))),
        "bundle": str(bundle_dir), "data": str(Path(opts.data).resolve()),
    }


def _model_tags(opts: EnsembleOptions, search: Any, run_id: str,
                folds: _Folds) -> dict[str, str]:
    from ecgtune.data_prep import is_synthetic

    return {"ecgtune.search": opts.name, "ecgtune.search_run_id": search.run_id,
            "ecgtune.ensemble_run_id": run_id,
            "ecgtune.data_manifest_sha256": folds.manifest_sha256,
            "ecgtune.source_databases": databases_text(folds.databases),
            "ecgtune.trained_on": "synthetic" if is_synthetic(folds.databases) else "recordings"}


def databases_text(databases: dict[str, int]) -> str:
    """``synthetic 3000`` / ``ecg-arrhythmia 40000, georgia 200``; "unknown" when unrecorded."""
    return ", ".join(f"{k} {v}" for k, v in databases.items()) or "unknown"


def _log_artifacts(opts: EnsembleOptions, uri: str, client: Any, search: Any, run_id: str,
                   folds: _Folds, mem: _Members, bundle_dir: Path, candidates: list,
                   member_rows: list[Any]) -> Any:
    """The run's files: the report, the budget's candidates, the ONNX graph and the pyfunc
    model (registered when asked)."""
    from ecgtune.ensembles.ship.registry import log_pyfunc_model

    client.log_artifacts(run_id, str(bundle_dir / "report"), "report")
    _log_cost(client, run_id, opts, candidates, member_rows)
    if opts.onnx:  # the portable graph beside the pyfunc, checked against the bundle
        from ecgtune.ensembles.ship.onnx_export import log_onnx_artifact

        stage("exporting the ONNX graph and checking it against the bundle")
        log_onnx_artifact(client, run_id, bundle_dir)
    stage("logging the pyfunc model" + (f" and registering it as {opts.register}"
                                         if opts.register else ""))
    return log_pyfunc_model(client, uri, run_id, bundle_dir, folds.label_names,
                            mem.inputs.n_samples, opts.register,
                            tags=_model_tags(opts, search, run_id, folds),
                            refer=opts.fit.refer_rate > 0)


def _build(opts: EnsembleOptions, uri: str, client: Any, search: Any, trials: list,
           run_id: str) -> EnsembleResult:
    """Predict, fit, report, export and log: the list of steps (the functions above) and the
    values they hand each other."""
    from ecgtune.ensembles.build.fitting import fit_average, fit_ensemble
    from ecgtune.ensembles.evaluate.report import calibration_summary, write_ensemble_report
    from ecgtune.ensembles.ship.bundle import save_bundle
    from ecgtune.ensembles.ship.registry import log_batch

    stage("loading the ensemble and test folds")
    folds = _load_folds(opts, search)
    external = _load_external(opts)
    mem = _predict_members(opts, trials, folds, external)
    y_ens, y_test = folds.labels(ENSEMBLE), folds.labels(TEST)
    sources_ens = folds.sources(ENSEMBLE)
    if _budget(opts).active:
        stage(f"selecting within the budget of {_budget(opts).describe()}")
    mem, candidates = _within_budget(opts, client, mem, y_ens, sources_ens)
    stage("selecting, calibrating and thresholding on the ensemble fold")
    fitted = fit_ensemble(mem.probs[ENSEMBLE], y_ens, mem.names, opts.fit, groups=folds.groups,
                          label_names=folds.label_names, sources=sources_ens)
    uniform = fit_average(mem.probs[ENSEMBLE], y_ens, opts.fit, groups=folds.groups,
                          label_names=folds.label_names, sources=sources_ens)
    selector = fitted.selector
    uncal = {role: fitted.predict_uncalibrated(mem.probs[role]) for role in (ENSEMBLE, TEST)}
    test_probs = fitted.calibration.predict(uncal[TEST])
    rows, notes = _report_rows(opts, folds, mem, fitted, uniform, test_probs)
    calibration = [calibration_summary(role, folds.numbers[role], folds.labels(role),
                                       uncal[role], fitted.calibration.predict(uncal[role]))
                   for role in (ENSEMBLE, TEST)]
    summaries = _summaries(mem, selector)
    weights = {m.name: m.weight for m in summaries if m.weight > 0}
    predictor = _predictor(fitted, mem, folds, opts)
    n_test = int(folds.masks[TEST].sum())
    member_rows = _member_rows(client, mem, summaries)
    ext_report = (_external_report(opts, folds, external, mem, fitted, rows, y_test)
                  if external is not None else None)
    referral = _referral_report(folds, external, mem, fitted, test_probs)
    stage(f"writing the test-fold report ({opts.n_boot} bootstrap resamples per model)")
    with tempfile.TemporaryDirectory(prefix="ecgtune-report-") as tmp:
        extra_figures = _budget_figures(opts, candidates, Path(tmp) / "report")
        results, _ = write_ensemble_report(
            Path(tmp) / "report", y_test, rows, uncal[TEST], folds.label_names, calibration,
            fitted.calibrator.methods_, notes=notes, n_boot=opts.n_boot, seed=opts.fit.seed,
            title=f"Ensemble of search {opts.name!r}: test fold (fold {folds.numbers[TEST]}, "
                  f"{n_test} records)",
            summary={"search": opts.name, "search_run_id": search.run_id,
                     "ensemble_run_id": run_id, "folds": folds.numbers,
                     "members": [dataclasses.asdict(s) for s in summaries], "weights": weights,
                     "selection": selector.to_dict()},
            calibrated_row=ROW_ENSEMBLE, policies=fitted.calibration.policies,
            members=member_rows, member_metric=opts.fit.metric, extra_figures=extra_figures,
            bounds=fitted.calibration.bounds,
            extra_sections=[*(ext_report["sections"] if ext_report else ()),
                            *([referral["section"]] if referral else [])],
        )
        if ext_report:
            _write_external_json(Path(tmp) / "report", ext_report)
        points = json.loads((Path(tmp) / "report" / "summary.json").read_text()
                            ).get("operating_points", [])
        if candidates:
            from ecgtune.ensembles.build.budget import CANDIDATES_CSV, write_candidates_csv

            write_candidates_csv(candidates, _budget(opts), opts.fit.metric,
                                 Path(tmp) / "report" / CANDIDATES_CSV)
        stage("writing the bundle")
        bundle_dir = save_bundle(
            opts.output, predictor, fit=_fit_record(opts, search, folds, summaries, fitted),
            member_info=_member_info(mem, selector),
            source=_source_record(opts, search, run_id, uri, folds),
            include={"report": Path(tmp) / "report"},
        )
    report_dir = bundle_dir / "report"
    stage("logging the ensemble run to MLflow")
    log_batch(client, run_id,
              _mlflow_params(opts, mem, fitted, weights, bundle_dir, folds.label_names),
              {**_mlflow_metrics(rows, results, calibration, selector),
               **_external_metrics(ext_report), **_referral_metrics(referral)})
    model = _log_artifacts(opts, uri, client, search, run_id, folds, mem, bundle_dir,
                           candidates, member_rows)
    return EnsembleResult(
        search_name=opts.name, search_run_id=search.run_id, run_id=run_id, members=summaries,
        rows=results, row_keys={r.name: r.key for r in rows}, calibration=calibration,
        calibration_methods=list(fitted.calibrator.methods_), thresholds=fitted.thresholds,
        label_names=folds.label_names, bundle_dir=bundle_dir, report_dir=report_dir,
        report_files=sorted(p for p in report_dir.rglob("*") if p.is_file()),
        model_uri=model.model_uri, registered_model=model.name, model_version=model.version,
        metric=opts.fit.metric, folds=folds.numbers, ensemble_fold_score=float(selector.score_),
        best_member_ensemble_fold_score=float(selector.member_scores_[selector.best_member_]),
        selection=selector.to_dict(), test_records=folds.data.records[folds.masks[TEST]],
        tracking_uri=uri, experiment_id=search.experiment_id, trained_on=folds.databases,
        test_probabilities=test_probs, predictor=predictor, operating_points=points,
        row_thresholds={r.name: r.thresholds_by for r in rows},
        external=_external_summary(ext_report),
        referral=({k: v for k, v in referral.items() if k != "section"} if referral else None),
    )


def _referral_report(folds: _Folds, external: Any | None, mem: _Members, fitted: Any,
                     test_probs: np.ndarray) -> dict[str, Any] | None:
    """With --refer-rate: who the rule refers on the test fold and the external fold, with
    coverage and error rates (`referral.referral_summary`), and the report's section."""
    from ecgtune.ensembles.build.referral import referral_summary
    from ecgtune.ensembles.evaluate.report import referral_section

    if fitted.referral is None:
        return None
    summaries = {TEST: referral_summary(folds.labels(TEST), test_probs, fitted.thresholds,
                                        fitted.refer(mem.probs[TEST]))}
    where = {TEST: f"test (fold {folds.numbers[TEST]})"}
    if external is not None:
        summaries[EXTERNAL] = referral_summary(
            external.labels.astype(bool), fitted.predict(mem.probs[EXTERNAL]),
            fitted.thresholds, fitted.refer(mem.probs[EXTERNAL]))
        where[EXTERNAL] = f"external (fold {int(external.folds[0])})"
    rule = fitted.referral.to_dict()
    section = referral_section({where[k]: s for k, s in summaries.items()}, rule["rate"],
                               rule["threshold"])
    return {"rule": rule, "folds": summaries, "section": section}


def _referral_metrics(referral: dict[str, Any] | None) -> dict[str, float]:
    """``test/referral_coverage``, ``test/referral_error_kept`` (and external/...)."""
    if not referral:
        return {}
    out = {}
    for role, summary in referral["folds"].items():
        for key, name in (("coverage", "coverage"), ("error_kept", "error_kept"),
                          ("error_all", "error_all")):
            if summary[key]["value"] is not None:
                out[f"{role}/referral_{name}"] = float(summary[key]["value"])
    return out


def _external_report(opts: EnsembleOptions, folds: _Folds, external: Any, mem: _Members,
                     fitted: Any, rows: list[Any], y_test: np.ndarray) -> dict[str, Any]:
    """The external fold, reported once: the ensemble (calibrated, at its thresholds) and the
    best single trial there beside the test fold, and the ensemble's operating points there
    (a stated confidence's target met, missed or flagged on data from another site)."""
    from ecgtune.ensembles.evaluate.metrics import evaluate_assessable, evaluate_with_ci
    from ecgtune.ensembles.evaluate.report import (
        Section,
        internal_external_section,
        operating_point_section,
        operating_points,
    )

    stage(f"reporting the external fold ({len(external)} records)")
    names = folds.label_names
    y_ext = external.labels.astype(bool)
    probs = {ROW_ENSEMBLE: fitted.predict(mem.probs[EXTERNAL]), ROW_BEST: mem.probs[EXTERNAL][0]}
    by_name = {r.name: r for r in rows}
    pairs: dict[str, tuple[Any, Any]] = {}
    for name in (ROW_ENSEMBLE, ROW_BEST):
        row = by_name[name]
        inside = evaluate_with_ci(y_test, row.probs, row.thresholds, names, n_boot=opts.n_boot,
                                  seed=opts.fit.seed)
        outside = evaluate_assessable(y_ext, probs[name], row.thresholds, names,
                                      opts.fit.min_positives, n_boot=opts.n_boot,
                                      seed=opts.fit.seed)
        pairs[name] = (inside, outside)
    sources = sorted(set(np.asarray(external.sources).tolist()))
    fold = int(external.folds[0])
    where = f"fold {fold} ({', '.join(sources)}, {len(external)} records)"
    sections = [internal_external_section(
        pairs, f"the test fold (fold {folds.numbers[TEST]}, {len(y_test)} records)", where)]
    ensemble_row = pairs[ROW_ENSEMBLE][1]
    points: list[dict[str, Any]] = []
    if ensemble_row is not None:
        points = operating_points(ensemble_row, fitted.calibration.policies, names,
                                  opts.fit.min_positives, fitted.calibration.bounds)
        section = operating_point_section(points, f"{ROW_ENSEMBLE} on the external fold")
        sections.append(Section(section.heading, paragraphs=(
            f"The {where}: records from sources the ensemble never saw.",
            *section.paragraphs), header=section.header, body=section.body,
            bullets=section.bullets))
    return {"fold": fold, "sources": sources, "records": len(external),
            "rows": {name: {"internal": i, "external": e} for name, (i, e) in pairs.items()},
            "operating_points": points, "sections": sections}


def _external_summary(ext: dict[str, Any] | None) -> dict[str, Any] | None:
    if ext is None:
        return None
    return {k: v for k, v in ext.items() if k != "sections"}


def _write_external_json(report_dir: Path, ext: dict[str, Any]) -> None:
    from ecgtune.ensembles.evaluate.report import jsonable

    (report_dir / "external.json").write_text(
        json.dumps(jsonable(_external_summary(ext)), indent=2, default=float) + "\n")


def _external_metrics(ext: dict[str, Any] | None) -> dict[str, float]:
    """``external/macro_auprc`` (the ensemble) and ``external_best_trial/...`` on the run."""
    from ecgtune.ensembles.evaluate.metrics import flatten_metrics

    if ext is None:
        return {}
    out: dict[str, float] = {}
    for name, split in ((ROW_ENSEMBLE, EXTERNAL), (ROW_BEST, f"{EXTERNAL}_best_trial")):
        row = ext["rows"][name]["external"]
        if row is not None:
            out.update({k: v for k, v in flatten_metrics(row, split=split).items()
                        if k.count("/") == 1})
    return out


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def _policy_lines(points: list[dict[str, Any]]) -> list[str]:
    """Threshold policies in one line, and the labels whose test-fold CI missed the target."""
    from ecgtune.ensembles.evaluate.report import BELOW

    if not points:
        return []
    counts: dict[str, int] = {}
    for p in points:
        counts[p["policy"]] = counts.get(p["policy"], 0) + 1
    lines = ["Thresholds by policy: " + ", ".join(f"{k} ({v} labels)" for k, v in
                                                  counts.items())]
    below = [p["label"] for p in points if p["status"] == BELOW]
    if below:
        lines.append(f"  below target on the test fold (whole CI): {', '.join(below)}")
    fell_back = [p["label"] for p in points if p.get("fallback")]
    if fell_back:
        lines.append("  too few records on the ensemble fold for the stated confidence "
                     f"(plain target used): {', '.join(fell_back)}")
    return lines


def _referral_lines(referral: dict[str, Any] | None) -> list[str]:
    if not referral:
        return []

    def share(s: dict[str, Any]) -> str:
        return ("-" if s["value"] is None else
                f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")

    lines = [f"Referral: {referral['rule']['rate']:g} of the ensemble fold referred (uncertainty "
             f">= {referral['rule']['threshold']:.4g})"]
    for role, s in referral["folds"].items():
        lines.append(f"  {role:<9} coverage {share(s['coverage'])}, labels wrong per record "
                     f"among the kept {share(s['error_kept'])} (all records "
                     f"{share(s['error_all'])})")
    return lines


def _external_lines(ext: dict[str, Any] | None) -> list[str]:
    """The external fold beside the test fold, and its confidence-bounded operating points."""
    from ecgtune.ensembles.evaluate.report import MET
    from ecgtune.search import metric_keys as K

    if not ext:
        return []
    lines = [f"External fold (fold {ext['fold']}: {', '.join(ext['sources'])}, "
             f"{ext['records']} records, never fitted on)   {'AUROC':>6} {'AUPRC':>6} "
             f"{'F1':>6}  (test fold)"]
    for name, pair in ext["rows"].items():
        row, inside = pair["external"], pair["internal"]
        if row is None:
            lines.append(f"  {name:<28} not assessable (too few positives)")
            continue
        macro = row["macro"]
        lines.append(f"  {name:<28} {_fmt(macro[K.AUROC])} {_fmt(macro[K.AUPRC])} "
                     f"{_fmt(macro[K.F1])}  ({_fmt(inside['macro'][K.AUPRC]).strip()} AUPRC)")
    stated = [p for p in ext["operating_points"] if p.get("confidence") is not None]
    if stated:
        met = sum(p["status"] == MET for p in stated)
        flagged = [p["label"] for p in stated if p["status"] != MET]
        lines.append(f"  stated-confidence targets on the external fold: {met} of "
                     f"{len(stated)} met" + (f"; flagged: {', '.join(flagged)}" if flagged
                                              else ""))
    return lines


def format_summary(result: EnsembleResult) -> str:
    """The short summary `ecgtune ensemble` prints."""
    from ecgtune.data_prep import is_synthetic
    from ecgtune.search import metric_keys as K
    from ecgtune.search.tracking import browse_hint

    ens_fold, test_fold = result.folds[ENSEMBLE], result.folds[TEST]
    lines = [
        f"Ensemble of search {result.search_name!r} (search run {result.search_run_id}): "
        f"{len(result.weights)} of the top {len(result.members)} trials, chosen on the "
        f"ensemble fold (fold {ens_fold}) by {result.metric} ({result.ensemble_fold_score:.4f};"
        f" best single member {result.best_member_ensemble_fold_score:.4f})",
        *(f"  {note}" for note in result.search_notes),
        f"  {selection_sentence(result.selection, len(result.members))}",
        f"  {'member':<24} {'val AUPRC':>9} {'ens-fold':>8} {'picks':>5} {'weight':>7}",
    ]
    for m in result.members:
        lines.append(f"  {m.name:<24} {m.val_score:9.4f} {m.ensemble_fold_score:8.4f} "
                     f"{m.count:5d} {m.weight:7.3f}{'  (seed-style)' if m.seed_style else ''}")
    n_test = next(iter(result.rows.values()))["n_samples"]
    lines.append(f"Test fold (fold {test_fold}, {n_test} records)"
                 f"   {'AUROC':>6} {'AUPRC':>6} {'F1':>6}  F1 at thresholds by")
    for name, row in result.rows.items():
        macro = row["macro"]
        lines.append(f"  {name:<28} {_fmt(macro[K.AUROC])} {_fmt(macro[K.AUPRC])} "
                     f"{_fmt(macro[K.F1])}  {result.row_thresholds.get(name, '')}".rstrip())
    point_note = operating_point_note(
        result.row_thresholds.get(ROW_ENSEMBLE, "f1").split(",", 1)[0],
        result.row_thresholds.get(ROW_BEST, "f1"))
    if point_note:
        lines.append(f"  {point_note}")
    if ROW_SEED not in result.rows:
        lines.append(f"  {NO_SEED_STYLE}")
    lines += _external_lines(result.external)
    lines += _referral_lines(result.referral)
    lines += _policy_lines(result.operating_points)
    lines.append(f"Calibration (test fold): ECE {result.ece_before:.4f} -> "
                 f"{result.ece_after:.4f}, Brier {result.brier_before:.4f} -> "
                 f"{result.brier_after:.4f}")
    lines.append(f"Bundle: {result.bundle_dir}")
    lines.append(f"Report: {result.report_dir / 'report.html'}")
    lines.append(f"MLflow: ensemble run {result.run_id}; model {result.model_uri}")
    if result.registered_model:
        lines.append(f"Registered: {result.registered_model} version {result.model_version} "
                     f"(alias champion: models:/{result.registered_model}@champion)")
    if is_synthetic(result.trained_on):
        lines.append(f"Trained on: {databases_text(result.trained_on)}: synthetic records, so "
                     "its outputs are not diagnoses")
    lines.append(f"Browse the runs: {browse_hint(result.tracking_uri, result.experiment_id)}")
    return "\n".join(lines)
