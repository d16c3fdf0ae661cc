"""`ecgtune predict`: argument parsing only; the handler imports torch when it runs."""

from __future__ import annotations

import argparse
import sys

from ecgtune.ensembles.cli.formatter import positive_int
from ecgtune.ensembles.errors import EXIT_REJECTED
from ecgtune.ensembles.options import DEFAULT_BATCH_SIZE, EnsembleOptions, add_arguments

__all__ = ["EXIT_REJECTED", "EXIT_USAGE", "register"]

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


def register(sub: argparse._SubParsersAction) -> None:
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


def _run_predict(args: argparse.Namespace) -> int:
    from ecgtune.data_prep.heartbeat import stage
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.inference import resolve_device
    from ecgtune.ensembles.ship.predict import (
        PredictInputError,
        predict_records,
        write_predictions_csv,
    )

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"ecgtune predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # A bad bundle: one line naming the file, exit 1.
    stage(f"loading the bundle {args.bundle}")
    bundle = load_bundle(args.bundle, device=device, precision=args.precision)
    stage(f"reading, checking and predicting the records of {' '.join(map(str, args.input))}")
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
