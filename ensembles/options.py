"""The options of `ecgtune ensemble`, `evaluate` and `predict`, declared once.

Each option is a field of a frozen dataclass declared with `search.declared_options.option`
(the one option system of every command): its help text, flag and constraints. The same
declaration builds the command line (`add_arguments`, `from_namespace`), validates a value
built in Python (every dataclass here checks itself in ``__post_init__``) and gives the
defaults to `EnsembleSelector` and the fitting code, which take `FitOptions` instead of
repeating them.

Importing this module imports nothing heavy (no torch, no MLflow): argument parsing uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ecgtune.ensembles.errors import EnsembleOptionError
from ecgtune.search import declared_options
from ecgtune.search.declared_options import REQUIRED, option, same_as, validate

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WINDOWS",
    "DEVICES",
    "PRECISIONS",
    "EnsembleOptions",
    "EvaluateOptions",
    "FitOptions",
    "add_arguments",
    "from_namespace",
    "option",
]

DEFAULT_WINDOWS = 3
DEFAULT_BATCH_SIZE = 32  # records cropped and normalised together
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# How the ensemble fold's records count in selection and calibration: all together, or per
# source (site) with the worst (or mean) source deciding, as the search's objective can.
SELECT_BY = ("all", "worst-source", "mean-source")


def _selection_metrics() -> Iterable[str]:
    from ecgtune.ensembles.build.selection_metrics import SELECTION_METRICS

    return SELECTION_METRICS


def _policy_problem(value: str) -> str | None:
    from ecgtune.ensembles.build.policies import policy_problem

    return policy_problem(value)


def _override_problem(value: tuple[str, ...]) -> str | None:
    from ecgtune.ensembles.build.policies import override_problem

    return override_problem(value)


def _bag_fraction_problem(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else f"bag_fraction must be in (0, 1], got {value}"


def _refer_rate_problem(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"--refer-rate must be in [0, 1), got {value:g}"


@dataclass(frozen=True)
class FitOptions:
    """Selection, calibration and threshold settings, all fitted on the ensemble fold."""

    metric: str = option("macro_auprc", choices=_selection_metrics, noun="metric",
                         help="selection metric on the ensemble fold")
    select_by: str = option("all", choices=SELECT_BY, help="all: the metric over the "
                            "ensemble fold's records; worst-source / mean-source: the metric "
                            "per source of that fold, its worst / mean deciding both the "
                            "selection and each label's calibration method (by the "
                            "per-source cross-fitted log-loss)")
    init_size: int = option(3, minimum=1, metavar="N", help="selection starts from the best "
                            "prefix of up to this many members")
    max_rounds: int = option(50, minimum=0, cli=False,
                             help="at most this many greedy additions after the start")
    bags: int = option(0, minimum=0, metavar="N", help="bagged selection over this many "
                       "random halves of the members (0: plain selection)")
    bag_fraction: float = option(0.5, check=_bag_fraction_problem, cli=False,
                                 help="share of the members in each bag")
    seed: int = option(0, metavar="S", help="seed of bagging, calibration folds and the bootstrap")
    tol: float = option(0.0, minimum=0.0, cli=False,
                        help="an addition must improve the metric by more than this")
    uniform_candidate: bool = option(True, cli=False, help="the uniform average of all "
                                     "members competes with the greedy selection")
    calibration_methods: tuple[str, ...] = option(("temperature", "platt", "isotonic"),
                                                  cli=False, help="per-label calibrators tried")
    calibration_cv: int = option(5, minimum=2, cli=False,
                                 help="folds of the cross-fitted calibration choice")
    threshold_policy: str = option("f1", check=_policy_problem, metavar="POLICY",
                                   help="how each label's threshold is chosen on the "
                                   "calibrated ensemble fold: f1, fbeta:B, challenge, "
                                   "sensitivity:S (the highest threshold reaching sensitivity "
                                   "S there), specificity:S (the lowest reaching specificity "
                                   "S); sensitivity:S@C / specificity:S@C: the rate's "
                                   "one-sided exact (Clopper-Pearson) lower bound at "
                                   "confidence C must reach S (labels with too few records "
                                   "for it take the plain S, named in the report)")
    threshold_policy_for: tuple[str, ...] = option(
        (), check=_override_problem, metavar="LABEL=POLICY", many="append",
        help="another policy for one label, e.g. AFIB=sensitivity:0.98 (repeatable)")
    min_positives: int = option(5, minimum=1, metavar="N", help="labels with fewer positives "
                                "on the ensemble fold keep the fallback threshold (0.5)")
    fallback: float = option(0.5, cli=False, help="threshold of labels with few positives")
    refer_rate: float = option(0.0, check=_refer_rate_problem, metavar="R", help="refer the "
                               "R most uncertain records (members disagree, or calibrated "
                               "probabilities sit near their thresholds) instead of deciding "
                               "them: the cut that refers R of the ensemble fold, applied by "
                               "predict, the pyfunc model and the ONNX graph (a per-record "
                               "refer flag); 0: never refer")

    option_error: ClassVar[type[Exception]] = EnsembleOptionError

    def __post_init__(self) -> None:
        if isinstance(self.threshold_policy_for, str):  # one override given as a string
            object.__setattr__(self, "threshold_policy_for", (self.threshold_policy_for,))
        object.__setattr__(self, "threshold_policy_for", tuple(self.threshold_policy_for))
        validate(self)

    def policies(self) -> Any:
        """The `PolicySet` of --threshold-policy and --threshold-policy-for."""
        from ecgtune.ensembles.build.policies import PolicySet

        return PolicySet.parse(self.threshold_policy, self.threshold_policy_for)

    def threshold_params(self) -> dict[str, Any]:
        """bundle.json ``fit.thresholds`` settings; ``objective`` and ``beta`` (the default
        policy's) keep readers of bundles from before policies working."""
        default = self.policies().default
        return {"objective": default.kind,
                "beta": float(default.value) if default.kind == "fbeta" else 1.0,
                "min_positives": self.min_positives, "fallback": self.fallback}


def _device_problem(device: str) -> str | None:
    from ecgtune.search.devices import resolve_device

    try:
        resolve_device(device)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class EnsembleOptions:
    """Everything `build_ensemble` (the `ecgtune ensemble` command) is told; `fit` holds the
    selection, calibration and threshold settings."""

    # `option` returns a dataclasses.field, which ruff's RUF009 cannot see through.
    data: str | Path = option(  # noqa: RUF009
        REQUIRED, metavar="DIR", help="prepared data directory the search ran on (from "
        "`ecgtune prep`)")
    name: str = option(REQUIRED, help="search name (the MLflow experiment)")
    output: str | Path = option(  # noqa: RUF009
        REQUIRED, metavar="BUNDLE_DIR", help="bundle directory to write (an existing bundle "
        "there is replaced)")
    top_k: int = option(5, minimum=1, metavar="K", help="candidate members: the best K "
                        "finished trials by the search objective")
    register: str | None = option(None, metavar="MODEL_NAME", help="register the pyfunc "
                                  "model under this name, alias 'champion'")
    tracking_uri: str | None = option(None, metavar="URI", help="MLflow tracking URI, the "
                                      "store the search wrote to (default: "
                                      "$MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    storage: str | None = option(None, metavar="PATH", help="search storage (local/NFS path "
                                 "or s3://...) to find checkpoints whose recorded path moved: "
                                 "STORAGE/NAME/<trial>/<checkpoint>")
    search_run_id: str | None = option(None, metavar="RUN_ID", help="the search's parent "
                                       "MLflow run (default: the newest search run of --name)")
    allow_running: bool = option(False, help="build from the trials a search that is still "
                                 "running has finished so far (refused by default: its best "
                                 "trials are not known yet)")
    fit: FitOptions = field(default_factory=FitOptions)
    n_windows: int = option(DEFAULT_WINDOWS, flag="--windows", minimum=1, metavar="N",
                            help="evenly spaced crop windows per record at inference, averaged")
    batch_size: int = option(DEFAULT_BATCH_SIZE, minimum=1, metavar="N",
                             help="records per batch")
    n_boot: int = option(1000, minimum=1, metavar="N",
                         help="bootstrap resamples for the test-fold confidence intervals")
    device: str = option("auto", choices=DEVICES, check=_device_problem, help="where the "
                         "members run: auto = the GPU when torch can use one")
    precision: str = option("fp32", choices=PRECISIONS, noun="precision", help="fp32: the "
                            "CPU's probabilities to ~1e-7 on any device (TF32 off); bf16: "
                            "autocast on a GPU, ~2.3x faster on an H200, probabilities within "
                            "~1e-4")
    onnx: bool = option(True, flag="--no-onnx", help="do not log the ONNX graph of the "
                        "ensemble beside the pyfunc (its export takes ~20 s on a laptop CPU; "
                        "`ecgtune export` makes it later)")
    progress: bool = option(True, flag="--no-progress", help="no progress bars")
    # Compute budgets (ensembles.build.budget); 0 = none. A float default makes the flag a float.
    max_gflops: float = option(0.0, minimum=0.0, metavar="G", help="the best ensemble whose "
                               "members' summed forward GFLOP per 10 s record (from their "
                               "trials) is at most G; 0: no limit")
    max_ms: float = option(0.0, minimum=0.0, metavar="MS", help="the same with the members' "
                           "summed CPU inference ms per record, as measured in their trials")

    option_error: ClassVar[type[Exception]] = EnsembleOptionError
    nested_options: ClassVar[dict[str, type]] = {"fit": FitOptions}

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def create(cls, **kwargs: Any) -> EnsembleOptions:
        """Options from flat keywords: `FitOptions` field names go into ``fit``."""
        fit_names = {f.name for f in dataclasses.fields(FitOptions)}
        fit_values = {k: kwargs.pop(k) for k in list(kwargs) if k in fit_names}
        base = kwargs.pop("fit", FitOptions())
        problems = []
        try:
            fit = dataclasses.replace(base, **fit_values)
        except EnsembleOptionError as exc:  # still check the rest: one message names all
            problems.append(str(exc))
            fit = base
        try:
            options = cls(**kwargs, fit=fit)
        except EnsembleOptionError as exc:
            problems.append(str(exc))
        if problems:
            raise EnsembleOptionError("; ".join(problems))
        return options

    def replace(self, **kwargs: Any) -> EnsembleOptions:
        """A copy with flat keywords changed (`FitOptions` names included)."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return EnsembleOptions.create(**{**flat, **kwargs})

    def validate(self) -> None:
        """Re-check (construction already did): for callers that build and check apart."""
        validate(self)
        validate(self.fit)


def _by_problem(value: str | None) -> str | None:
    return None if value in (None, "source") else f"--by: only 'source' is known, got {value!r}"


def _refit_problem(value: str | None) -> str | None:
    from ecgtune.ensembles.build.policies import policy_problem

    return None if value is None else policy_problem(value, "--refit-thresholds")


def _model_problem(value: str | None) -> str | None:
    if value is None or (value.count("@") == 1 and all(value.split("@"))):
        return None
    return f"--model: expected NAME@ALIAS (e.g. ecg-ensemble@champion), got {value!r}"


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything `evaluate_bundle` (the `ecgtune evaluate` command) is told."""

    bundle: str = option(REQUIRED, metavar="BUNDLE_DIR|models:/NAME@ALIAS",
                         help="bundle directory (from `ecgtune ensemble`), or a registered "
                         "ensemble model")
    data: str | Path = option(  # noqa: RUF009
        REQUIRED, metavar="DIR", help="prepared, labelled data (from `ecgtune prep`), with the "
        "bundle's label map")
    folds: tuple[int, ...] = option((), many="nargs", item=int, metavar="F",
                                    help="folds to evaluate (default: the data's test-role "
                                    "folds)")
    all_folds: bool = option(False, flag="--all", help="evaluate every record (external data)")
    by: str | None = option(None, check=_by_problem, metavar="source",
                            help="also break the metrics down by source database")
    output: str | Path = option(  # noqa: RUF009
        "evaluation", metavar="REPORT_DIR", help="directory for report.{html,md,json}, figures "
        "and summary.json")
    min_positives: int = option(5, minimum=1, metavar="N", help="labels with fewer positives "
                                "(or no negative) in the evaluated records are reported as not "
                                "assessable")
    tracking_uri: str | None = same_as(EnsembleOptions, "tracking_uri")
    model: str | None = option(None, check=_model_problem, metavar="NAME@ALIAS",
                               help="log an evaluation run linked to this registered model "
                               "version (tags: model name, version, data manifest sha256)")
    refit_thresholds: str | None = option(
        None, check=_refit_problem, metavar="POLICY", help="refit every label's threshold by "
        "this policy on --on-folds, write the result as a new bundle (--refit-output) and "
        "evaluate that one")
    threshold_policy_for: tuple[str, ...] = same_as(FitOptions, "threshold_policy_for")
    on_folds: tuple[int, ...] = option((), many="nargs", item=int, metavar="F",
                                       help="folds the thresholds are refitted on (none of "
                                       "the evaluated folds)")
    refit_output: str | None = option(None, metavar="BUNDLE_DIR", help="the refitted bundle: "
                                      "a new directory, never the evaluated bundle")
    n_boot: int = same_as(EnsembleOptions, "n_boot")
    seed: int = option(0, metavar="S", help="seed of the bootstrap (the build's --seed "
                       "reproduces its test-fold intervals)")
    batch_size: int = same_as(EnsembleOptions, "batch_size")
    device: str = same_as(EnsembleOptions, "device")
    precision: str = same_as(EnsembleOptions, "precision")
    progress: bool = same_as(EnsembleOptions, "progress")

    option_error: ClassVar[type[Exception]] = EnsembleOptionError

    def __post_init__(self) -> None:
        for name in ("folds", "on_folds"):
            object.__setattr__(self, name, tuple(int(f) for f in getattr(self, name)))
        if isinstance(self.threshold_policy_for, str):
            object.__setattr__(self, "threshold_policy_for", (self.threshold_policy_for,))
        object.__setattr__(self, "threshold_policy_for", tuple(self.threshold_policy_for))
        found: list[str] = []
        if self.folds and self.all_folds:
            found.append("--folds and --all exclude each other")
        refit = {"--on-folds": self.on_folds, "--refit-output": self.refit_output,
                 "--threshold-policy-for": self.threshold_policy_for}
        if self.refit_thresholds is None:
            found += [f"{flag} needs --refit-thresholds" for flag, v in refit.items() if v]
        else:
            found += [f"--refit-thresholds needs {flag}" for flag, v in refit.items()
                      if not v and flag != "--threshold-policy-for"]
            if self.all_folds:
                found.append("--refit-thresholds cannot evaluate --all: the refit folds "
                             "would be among the evaluated ones")
        validate(self, found)


def add_arguments(parser: argparse.ArgumentParser, cls: type = EnsembleOptions,
                  only: Iterable[str] | None = None) -> None:
    """`declared_options.add_arguments`, for `ecgtune ensemble` unless told another class."""
    declared_options.add_arguments(parser, cls, only)


def from_namespace(args: argparse.Namespace, cls: type = EnsembleOptions) -> Any:
    """`declared_options.from_namespace`, for `ecgtune ensemble` unless told another class."""
    return declared_options.from_namespace(args, cls)
