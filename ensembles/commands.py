"""`ecgtune ensemble` and `ecgtune predict`: argument parsing only; handlers import torch,
MLflow and the rest when they run."""

from __future__ import annotations

import argparse
import sys

from ecgtune.data_prep.cli import non_negative_int, positive_int
from ecgtune.ensembles.errors import EnsembleError

__all__ = ["USER_ERRORS", "register"]

EXIT_REJECTED = 3
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
  0 every record predicted; 3 some records refused (the CSV holds the others);
  2 usage error (bad options, an --input path that does not exist, no records in the
  inputs); 1 unusable bundle (one line naming the bad file).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ecgtune.ensembles.selection import SELECTION_METRICS

    e = sub.add_parser(
        "ensemble",
        help="build, report, export and register a calibrated ensemble of a search's best trials",
        description=(
            "Take the top-K finished trials of the search --name (MLflow experiment), predict "
            "folds 8 and 9 with each, select an ensemble on fold 8 (greedy forward selection "
            "with replacement), calibrate it per label and fit per-label thresholds on fold "
            "8, report fold 9 (test) against the best single trial, the uniform average and "
            "a seed-style baseline, export a checksummed bundle to --output and log it to "
            "MLflow as an ensemble run with a pyfunc model (registered with --register, "
            "alias 'champion')."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("--data", required=True,
                   help="prepared data directory the search ran on (from `ecgtune prep`)")
    e.add_argument("--name", required=True, help="search name (the MLflow experiment)")
    e.add_argument("--top-k", type=positive_int, default=5,
                   help="candidate members: the best K finished trials by the objective")
    e.add_argument("--output", required=True,
                   help="bundle directory to write (an existing bundle there is replaced)")
    e.add_argument("--register", default=None, metavar="MODEL_NAME",
                   help="register the pyfunc model under this name, alias 'champion'")
    e.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default: sqlite:///$PWD/mlflow.db")
    e.add_argument("--storage", default=None,
                   help="search storage (local/NFS path or s3://...) to find checkpoints "
                   "whose recorded path moved: STORAGE/NAME/<trial>/<checkpoint>")
    e.add_argument("--search-run-id", default=None,
                   help="the search's parent MLflow run id; None: the newest search run of "
                   "--name")
    e.add_argument("--metric", choices=sorted(SELECTION_METRICS), default="macro_auprc",
                   help="selection metric on fold 8")
    e.add_argument("--init-size", type=positive_int, default=3,
                   help="selection starts from the best prefix of up to this many members")
    e.add_argument("--bags", type=non_negative_int, default=0,
                   help="bagged selection over this many random halves of the members "
                   "(0: plain selection)")
    e.add_argument("--threshold-objective", choices=("f1", "fbeta", "challenge"),
                   default="f1", help="per-label threshold objective on calibrated fold 8")
    e.add_argument("--beta", type=float, default=1.0, help="beta of --threshold-objective fbeta")
    e.add_argument("--min-positives", type=positive_int, default=5,
                   help="labels with fewer fold-8 positives keep the 0.5 fallback threshold")
    e.add_argument("--windows", type=positive_int, default=3,
                   help="evenly spaced crop windows per record at inference, averaged")
    e.add_argument("--batch-size", type=positive_int, default=32, help="records per batch")
    e.add_argument("--n-boot", type=positive_int, default=1000,
                   help="bootstrap resamples for the fold-9 confidence intervals")
    e.add_argument("--seed", type=int, default=0,
                   help="seed of bagging, calibration folds and the bootstrap")
    _add_device_options(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_run_ensemble)

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
        epilog=_PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory (from `ecgtune ensemble`)")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="records (.hea, .mat, or path without extension) and/or folders")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="records per batch (default: 32)")
    _add_device_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_predict)


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the members run: auto = the GPU when torch can use one "
                        "(default: auto)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32 (default): the CPU's probabilities to ~1e-7 on any device "
                        "(TF32 off); bf16: autocast on a GPU, ~2.3x faster on an H200, "
                        "probabilities within ~1e-4")


def _run_ensemble(args: argparse.Namespace) -> int:
    from ecgtune.ensembles.build import EnsembleOptions, build_ensemble, format_summary

    result = build_ensemble(EnsembleOptions(
        data=args.data, name=args.name, output=args.output, top_k=args.top_k,
        register=args.register, tracking_uri=args.tracking_uri, storage=args.storage,
        search_run_id=args.search_run_id, metric=args.metric, init_size=args.init_size,
        bags=args.bags, seed=args.seed, threshold_objective=args.threshold_objective,
        beta=args.beta, min_positives=args.min_positives, n_windows=args.windows,
        batch_size=args.batch_size, n_boot=args.n_boot,
        progress=not args.no_progress and sys.stderr.isatty(),
        device=args.device, precision=args.precision,
    ))
    print(format_summary(result))
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
                                 progress=not args.no_progress and sys.stderr.isatty())
    except PredictInputError as exc:  # checked before any record is read
        print(f"ecgtune predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = write_predictions_csv(result, args.output)
    for issue in result.warnings:
        print(issue.message(warning=True), file=sys.stderr)
    for issue in result.rejected:
        print(issue.message(), file=sys.stderr)
    print(f"{len(result.records)} records predicted, {len(result.rejected)} rejected -> {path}",
          file=sys.stderr)
    return result.exit_status


def _user_errors() -> tuple[type[BaseException], ...]:
    from ecgtune.data_prep.errors import PrepError
    from ecgtune.search.errors import TrackingError

    return (EnsembleError, PrepError, TrackingError)


USER_ERRORS: tuple[type[BaseException], ...] = _user_errors()
