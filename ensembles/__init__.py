"""ensembles: member predictions, selection, calibration, thresholds, evaluation, export, predict.

    from ecgtune.ensembles import build_ensemble, load_bundle, predict_records
    result = build_ensemble(data="prepared", name="my-search", output="bundle", top_k=5)
    bundle = load_bundle("bundle")                 # checksums verified
    probs = bundle.predict_signals(int16_signals)  # (N, 12, 5000) -> (N, 20)
    table = predict_records(bundle, ["records/"])  # raw WFDB records, prep's preprocessing

Public names resolve lazily (PEP 562), so `import ensembles` (and the CLI's argument parsing)
does not import torch or MLflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BundleChecksumError,
    BundleError,
    BundleFormatError,
    EnsembleError,
    EnsembleOptionError,
    MemberError,
    ModelInputError,
    SearchNotFoundError,
)

if TYPE_CHECKING:
    from .build import EnsembleResult, build_ensemble, format_summary
    from .bundle import Bundle, load_bundle, save_bundle, verify_bundle
    from .evaluate import EvaluationResult, evaluate_bundle, format_evaluation
    from .inference import EnsemblePredictor, InputSpec, MemberSpec, member_probabilities
    from .options import EnsembleOptions, EvaluateOptions, FitOptions
    from .policies import PolicySet, ThresholdPolicy
    from .predict import PredictionResult, predict_records, write_predictions_csv

_EXPORTS: dict[str, str] = {
    "EnsembleOptions": "options", "FitOptions": "options", "EvaluateOptions": "options",
    "PolicySet": "policies", "ThresholdPolicy": "policies",
    "EvaluationResult": "evaluate", "evaluate_bundle": "evaluate",
    "format_evaluation": "evaluate",
    "EnsembleResult": "build", "build_ensemble": "build",
    "format_summary": "build",
    "Bundle": "bundle", "load_bundle": "bundle", "save_bundle": "bundle",
    "verify_bundle": "bundle",
    "EnsemblePredictor": "inference", "InputSpec": "inference", "MemberSpec": "inference",
    "member_probabilities": "inference",
    "PredictionResult": "predict", "predict_records": "predict",
    "write_predictions_csv": "predict",
}

__all__ = [
    "Bundle",
    "BundleChecksumError",
    "BundleError",
    "BundleFormatError",
    "EnsembleError",
    "EnsembleOptionError",
    "EnsembleOptions",
    "EnsemblePredictor",
    "EnsembleResult",
    "EvaluateOptions",
    "EvaluationResult",
    "FitOptions",
    "InputSpec",
    "MemberError",
    "MemberSpec",
    "ModelInputError",
    "PolicySet",
    "PredictionResult",
    "SearchNotFoundError",
    "ThresholdPolicy",
    "build_ensemble",
    "evaluate_bundle",
    "format_evaluation",
    "format_summary",
    "load_bundle",
    "member_probabilities",
    "predict_records",
    "save_bundle",
    "verify_bundle",
    "write_predictions_csv",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ensembles' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
