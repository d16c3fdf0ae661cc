"""`ecgtune ensemble`, `ecgtune evaluate` and `ecgtune predict`: argument parsing only;
handlers import torch, MLflow and the rest when they run."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ecgtune.data_prep.cli import positive_int
from ecgtune.ensembles.errors import EXIT_REJECTED, EnsembleError
from ecgtune.ensembles.options import (
    DEFAULT_BATCH_SIZE,
    EnsembleOptions,
    EvaluateOptions,
    add_arguments,
    from_namespace,
)

__all__ = ["EXIT_REJECTED", "EXIT_USAGE", "USER_ERRORS", "register"]

EXIT_USAGE = 2

_PREDICT_EPILOG = """\
rejection policy:
  A record that `ecgtune prep` would quarantine is refused, for the same reason (one set of
  record-quality rules serves both): missing or truncated signal file, unparsable header,
  wrong lead set, a .mat matrix that does not match its header (bad_mat_header,
  shape_mismatch, sample_count_mismatch, dtype_mismatch), bad_gain (0, negative, non-finite),
  too_short (under 5 s), non_finite or missing samples, all_flat, saturated lead, duplicate
  record name, unreadable. It is named on stderr with its reason, e.g.
    record JS00001: truncated_signal: header declares 5000 samples, files hold 2500
  and left out of the CSV; the other records are still predicted. Some flat leads only warn
  (record JS20004: warning: flat_lead: ...): the record is predicted and its 'quality' cell
  reads flat_lead:V2,V4,V6 (empty when clean).

exit status:
  0 every record predicted; {rejected} some records refused (the CSV holds the others);
  2 usage error (bad options, an --input path that does not exist, no records in the
  inputs); 1 unusable bundle (one line naming the bad file).
"""


_EVALUATE_EPILOG = """\
which records:
  By default the data's test-role folds; name others with --folds F..., or take every record
  of external data with --all. On the data the ensemble was built on, the default folds
  with the build's --n-boot and --seed and a minimum of 1 positive (--min-positives 1) give
  the build's test-fold numbers; a label without a positive there is not assessable here.

examples:
    ecgtune prep --input WFDB_Ga/ --output data/georgia
    ecgtune evaluate --bundle bundles/full --data data/georgia --all --by source \\
        --output reports/georgia --model ecg-ensemble@champion
"""


def register(sub: argparse._SubParsersAction) -> None:
    # Long but flat: one add_argument per flag, read top to bottom like the --help it makes.
    e = sub.add_parser(
        "ensemble",
        help="build, report, export and register a calibrated ensemble of a search's best trials",
        description=(
            "Take the top-K finished trials of the search --name (MLflow experiment), predict "
            "the ensemble fold and the test fold of --data with each (fold roles from the data "
            "manifest), select an ensemble on the ensemble fold (greedy forward selection with "
            "replacement; the uniform average of all K competes and is kept when it scores "
            "better), calibrate it per label and fit per-label thresholds there, report the "
            "test fold against the best single trial, the uniform average and a seed-style "
            "baseline, export a checksummed bundle to --output and log it to MLflow as an "
            "ensemble run with a pyfunc model (registered with --register, alias 'champion')."
        ),
    )
    add_arguments(e, EnsembleOptions)
    e.set_defaults(func=_run_ensemble)

    v = sub.add_parser(
        "evaluate",
        help="evaluate a bundle on prepared labelled data (external validation, by source)",
        description=(
            "Run a bundle (or a registered model) on prepared, labelled data with the bundle's "
            "label map and write the ensemble build's report for those records: per-label "
            "AUROC, AUPRC, F1, sensitivity, specificity, PPV and kappa at the bundle's "
            "thresholds with 95% BCa bootstrap CIs, calibration with reliability diagrams, "
            "and each label's operating point (its threshold policy's target against what "
            "was reached, flagged when the whole CI falls below it). Labels with fewer than "
            "--min-positives positives are reported as not assessable. --by source adds a "
            "table per source database (the shard's source when it names one, else the only "
            "database the manifest counts, else the CinC record-name prefix). With --model "
            "(and --tracking-uri) an evaluation run is logged beside the model version's "
            "ensemble run, tagged with the model name, version and data manifest sha256."
        ),
        epilog=_EVALUATE_EPILOG,
    )
    add_arguments(v, EvaluateOptions)
    v.set_defaults(func=_run_evaluate)

    p = sub.add_parser(
        "predict",
        help="predict raw WFDB records with an exported bundle -> CSV",
        description=(
            "Read WFDB records (.hea files, record paths, or folders searched recursively), "
            "preprocess them exactly like `ecgtune prep` (resampled to the bundle's rate, "
            "centre-cropped or zero-padded to its length), and write one CSV row per record: "
            "record, one calibrated probability column per label (label-map order), "
            "'predicted' (labels at or above their thresholds, joined by ';') and 'quality' "
            "(warnings such as flat_lead:V2,V4,V6; empty when clean)."
        ),
        epilog=_PREDICT_EPILOG.format(rejected=EXIT_REJECTED),
    )
    p.add_argument("--bundle", required=True, metavar="BUNDLE_DIR",
                   help="bundle directory (from `ecgtune ensemble`)")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="records (.hea, .mat, or path without extension) and/or folders")
    p.add_argument("--output", required=True, metavar="FILE", help="CSV file to write")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help="records per batch")
    # The same declarations as `ecgtune ensemble`'s (one help text, one set of choices).
    add_arguments(p, EnsembleOptions, only=("device", "precision", "progress"))
    p.set_defaults(func=_run_predict)


def _run_ensemble(args: argparse.Namespace) -> int:
    from ecgtune.ensembles.build import build_ensemble, format_summary

    options = from_namespace(args, EnsembleOptions)
    # Progress bars only on a terminal: a log file would fill with their redraws.
    if not sys.stderr.isatty():
        options = options.replace(progress=False)
    print(format_summary(build_ensemble(options)))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from ecgtune.ensembles.evaluate import evaluate_bundle, format_evaluation

    options = from_namespace(args, EvaluateOptions)
    if not sys.stderr.isatty():
        options = dataclasses.replace(options, progress=False)
    print(format_evaluation(evaluate_bundle(options)))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from ecgtune.ensembles.bundle import load_bundle
    from ecgtune.ensembles.inference import resolve_device
    from ecgtune.ensembles.predict import PredictInputError, predict_records, write_predictions_csv

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"ecgtune predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # A bad bundle: one line naming the file, exit 1.
    bundle = load_bundle(args.bundle, device=device, precision=args.precision)
    try:
        result = predict_records(bundle, args.input, batch_size=args.batch_size,
                                 progress=args.progress and sys.stderr.isatty())
    except PredictInputError as exc:  # checked before any record is read
        print(f"ecgtune predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = write_predictions_csv(result, args.output)
    for issue in result.warnings:
        print(issue.message(warning=True), file=sys.stderr)
    for issue in result.rejected:
        print(issue.message(), file=sys.stderr)
    if result.synthetic_model:
        print(f"note: this model was trained on synthetic records ({result.trained_on_text}); "
              "its predictions are not diagnoses", file=sys.stderr)
    print(f"{len(result.records)} records predicted, {len(result.rejected)} rejected -> {path}",
          file=sys.stderr)
    return result.exit_status


def _user_errors() -> tuple[type[BaseException], ...]:
    from ecgtune.data_prep.errors import PrepError
    from ecgtune.search.errors import TrackingError

    return (EnsembleError, PrepError, TrackingError)


USER_ERRORS: tuple[type[BaseException], ...] = _user_errors()
