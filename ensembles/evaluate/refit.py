"""`ecgtune evaluate --refit-thresholds POLICY --on-folds F... --refit-output NEW_BUNDLE`:
new operating points for an exported ensemble, written as a new bundle, never in place.

Only the thresholds change: members, weights and calibrators are the bundle's. They are fitted
on the calibrated probabilities of ``--on-folds`` (each label by its policy, see
`ensembles.build.policies`); a label with fewer than ``--min-positives`` positives there keeps the
bundle's threshold. The evaluated folds must be other folds, so the report that goes into the
new bundle is not measured on the records its thresholds were fitted on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ecgtune.ensembles.options import EvaluateOptions

__all__ = ["check_refit", "refit_thresholds", "save_refit"]


def _error(message: str) -> Exception:
    from ecgtune.ensembles.errors import EvaluationError

    return EvaluationError(message)


def check_refit(opts: EvaluateOptions, folds: list[int]) -> None:
    """Before any work: disjoint folds, and an output that is neither the evaluated bundle nor
    something a bundle may not replace."""
    from ecgtune.ensembles.ship.bundle import check_bundle_target

    shared = sorted(set(opts.on_folds) & set(folds))
    if shared:
        raise _error(f"--on-folds {shared} would also be evaluated (folds {folds}); refit on "
                     "other folds than the report's")
    assert opts.refit_output is not None  # EvaluateOptions requires it with a refit
    out = Path(opts.refit_output).resolve()
    if not opts.bundle.startswith("models:/") and out == Path(opts.bundle).resolve():
        raise _error("--refit-output is the evaluated bundle: a refit writes a new bundle, "
                     "never in place")
    check_bundle_target(out)


def refit_thresholds(opts: EvaluateOptions, bundle: Any, folds: list[int], sha: str
                     ) -> tuple[Any, list[Any], dict[str, Any]]:
    """(predictor with the new thresholds, one policy per label, its bundle.json ``fit``)."""
    from ecgtune.data_prep import load_shards, read_manifest
    from ecgtune.ensembles.build.policies import (
        PolicySet,
        confidence_bounds,
        fit_policy_thresholds,
        policy_record,
    )
    from ecgtune.ensembles.ship.inference import EnsemblePredictor

    del folds  # checked disjoint by `check_refit`
    names = list(bundle.label_names)
    # The thresholds are fitted on these records: they must be the bundle's input and labels
    # (`evaluate_bundle` has checked the same data; a library caller may not have).
    bundle.inputs.check_data(read_manifest(opts.data), data=str(opts.data), model=opts.bundle,
                             label_names=names, label_map=bundle.label_map)
    try:
        policy_set = PolicySet.parse(str(opts.refit_thresholds), opts.threshold_policy_for)
        policies = policy_set.for_labels(names)
    except ValueError as exc:
        raise _error(str(exc)) from None
    on = sorted(set(opts.on_folds))
    ds = load_shards(opts.data, folds=on)
    if len(ds) == 0:
        raise _error(f"{opts.data}: no records in --on-folds {on}")
    y = ds.labels.astype(bool)
    probs = bundle.predict_signals(ds.signals, opts.batch_size, ds.lengths)
    thresholds = fit_policy_thresholds(y, probs, policies, min_positives=opts.min_positives,
                                       fallback=bundle.thresholds)
    predictor = EnsemblePredictor(
        bundle.members, bundle.weights, bundle.calibrator, thresholds, names, bundle.inputs,
        bundle.n_windows, label_map=bundle.label_map, label_groups=bundle.label_groups,
        group_names=bundle.group_names, device=bundle.device, precision=bundle.precision)
    old = dict(bundle.metadata.get("fit") or {})
    default = policy_set.default
    fit = {**old, "thresholds": {
        "objective": default.kind,
        "beta": float(default.value or 1.0) if default.kind == "fbeta" else 1.0,
        "min_positives": opts.min_positives, "fallback": "the previous bundle's threshold",
        **policy_record(policies, names, default),
        "fitted": [bool(k >= opts.min_positives) for k in y.sum(axis=0)],
        "confidence_bounds": confidence_bounds(y, probs, thresholds, policies, names),
    }, "refit": {
        "from_bundle": opts.bundle,
        "from_bundle_sha256": _manifest_sha(bundle),
        "data": str(Path(opts.data).resolve()), "data_manifest_sha256": sha,
        "folds": on, "records": len(ds),
        "previous_thresholds": [float(t) for t in bundle.thresholds],
        "previous_policies": (old.get("thresholds") or {}).get("policies"),
    }}
    return predictor, policies, fit


def _manifest_sha(bundle: Any) -> str:
    from ecgtune.ensembles.ship.bundle import MANIFEST_FILE

    path = Path(bundle.path) / MANIFEST_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def save_refit(opts: EvaluateOptions, bundle: Any, predictor: Any, fit: dict[str, Any],
               report_dir: Path) -> Path:
    """Write the refitted predictor as a new bundle with the evaluation report inside."""
    from ecgtune.ensembles.ship.bundle import save_bundle

    member_info = {}
    for (spec, _), entry in zip(bundle.members, bundle.metadata["members"], strict=True):
        own = {*spec.to_dict(), "file", "weight"}
        member_info[spec.name] = {k: v for k, v in entry.items() if k not in own}
    source = {k: v for k, v in (bundle.source or {}).items() if k != "versions"}
    assert opts.refit_output is not None
    return save_bundle(opts.refit_output, predictor, fit=fit, member_info=member_info,
                       source={**source, "refit": fit["refit"]},
                       include={"report": report_dir})

