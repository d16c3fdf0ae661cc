"""ensembles: everything downstream of the search, one sub-package per job.

- `build/`: an ensemble from a search's trials (members, Caruana selection, per-label
  calibration, threshold policies, compute budget; `build_ensemble`);
- `evaluate/`: metrics with bootstrap intervals, reports and plots, threshold refits
  (`evaluate_bundle`);
- `ship/`: the model as it leaves (the bundle and its schema, the input contract, inference,
  `predict`, the MLflow pyfunc model and registry, ONNX export);
- `cli/`: the `ecgtune` command line, one module per command, the demo and the GPU check.
`options.py` (the commands' declared options) and `errors.py` are shared by all four.

    from ecgtune.ensembles import build_ensemble, load_bundle, predict_records
    result = build_ensemble(data="prepared", name="my-search", output="bundle", top_k=5)
    bundle = load_bundle("bundle")                 # checksums verified
    probs = bundle.predict_signals(int16_signals)  # (N, 12, 5000) -> (N, 20)
    table = predict_records(bundle, ["records/"])  # raw WFDB records, prep's preprocessing

Public names resolve lazily (PEP 562), so `import ensembles` (and the CLI's argument parsing)
does not import torch or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecgtune.data_prep.lazy import lazy_exports

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
    from .build.ensemble import EnsembleResult, build_ensemble, format_summary
    from .build.policies import PolicySet, ThresholdPolicy
    from .evaluate.run import EvaluationResult, evaluate_bundle, format_evaluation
    from .options import EnsembleOptions, EvaluateOptions, FitOptions
    from .ship.bundle import Bundle, load_bundle, save_bundle, verify_bundle
    from .ship.inference import EnsemblePredictor, InputSpec, MemberSpec, member_probabilities
    from .ship.predict import PredictionResult, predict_records, write_predictions_csv

_EXPORTS: dict[str, str] = {
    "EnsembleOptions": "options", "FitOptions": "options", "EvaluateOptions": "options",
    "PolicySet": "build.policies", "ThresholdPolicy": "build.policies",
    "EvaluationResult": "evaluate.run", "evaluate_bundle": "evaluate.run",
    "format_evaluation": "evaluate.run",
    "EnsembleResult": "build.ensemble", "build_ensemble": "build.ensemble",
    "format_summary": "build.ensemble",
    "Bundle": "ship.bundle", "load_bundle": "ship.bundle", "save_bundle": "ship.bundle",
    "verify_bundle": "ship.bundle",
    "EnsemblePredictor": "ship.inference", "InputSpec": "ship.inference",
    "MemberSpec": "ship.inference", "member_probabilities": "ship.inference",
    "PredictionResult": "ship.predict", "predict_records": "ship.predict",
    "write_predictions_csv": "ship.predict",
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
