"""`ecgtune export`: argument parsing only; the handler imports torch and ONNX when it runs."""

from __future__ import annotations

import argparse
import tempfile

from ecgtune.ensembles.cli.prep import positive_int
from ecgtune.ensembles.errors import EnsembleError

__all__ = ["USER_ERRORS", "register"]

FORMATS = ("onnx",)

_EPILOG = """\
the graph:
  input 'signals': int16 (N, 12, n_samples) at the bundle's gain (1000 units/mV, 500 Hz, 10 s
  for the default manifest), exactly what the MLflow pyfunc model takes. Outputs
  'probabilities' (float64, N x labels, calibrated, label-map order) and 'decisions' (bool,
  probability >= the label's threshold). Normalisation, inference windows, every member
  with its weight and each label's calibrator are inside; metadata_props carry the labels,
  thresholds and their policy, the input contract, the bundle's and the data manifest's
  sha256 and the ecgtune version. A calibrator with no exact ONNX form is refused, by name.

check:
  before the file is written, the graph and the bundle predict the same records (synthetic,
  or the first --check-records of --check-data); the largest probability difference is
  printed, and above --tolerance nothing is written and the exit status is 1.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export an ensemble bundle as one portable ONNX graph (checked against it)",
        description=(
            "Export a bundle (a directory from `ecgtune ensemble`, or a registered model "
            "models:/NAME@ALIAS) as one ONNX graph that runs anywhere ONNX Runtime does "
            "(C#, Java, C++, JavaScript), no Python or ecgtune needed."
        ),
        epilog=_EPILOG,
    )
    p.add_argument("--bundle", required=True, metavar="BUNDLE_DIR|models:/NAME@ALIAS",
                   help="bundle directory, or a registered ensemble model")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="output format (default: onnx)")
    p.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI for models:/ sources (default: "
                   "$MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db, which must exist; "
                   "MLFLOW_REGISTRY_URI names another registry); a bundle directory needs no "
                   "store")
    p.add_argument("--check-data", default=None, metavar="DIR",
                   help="prepared data directory (from `ecgtune prep`) whose first records "
                   "check the graph; data prepared at another rate, length or gain than the "
                   "bundle's is refused; default: synthetic records")
    p.add_argument("--check-records", type=positive_int, default=None,
                   help="records the check uses (default: 8 synthetic, 64 from --check-data)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted |probability difference| (default: 1e-4)")
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--standard-ops", action="store_true",
                   help="only standard ONNX operators, for runtimes other than ONNX Runtime; "
                   "without it the attention runs as ONNX Runtime's fused "
                   "com.microsoft.MultiHeadAttention, a contrib operator")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ecgtune.ensembles.ship.onnx_export import ExportOptions, export_onnx, resolve_bundle

    n_check = args.check_records or (64 if args.check_data else 8)
    options = ExportOptions(opset=args.opset, check_records=n_check, tolerance=args.tolerance,
                            standard_ops=args.standard_ops)
    # Tracing the members and checking the graph take a while (~20-40 s on a laptop CPU).
    print(f"exporting {args.bundle} as one ONNX graph, then checking it on {n_check} "
          f"{'records of ' + args.check_data if args.check_data else 'synthetic records'}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="ecgtune-export-") as tmp:
        bundle_dir = resolve_bundle(args.bundle, args.tracking_uri, tmp)
        result = export_onnx(bundle_dir, args.output, options, check_data=args.check_data)
    size = result.path.stat().st_size / 2**20
    where = args.check_data or "synthetic"
    print(f"exported {args.bundle} -> {result.path} ({size:.1f} MiB; operators: "
          f"{result.metadata['operators']})")
    print(f"checked on {result.n_checked} records ({where}): max |probability difference| "
          f"{result.max_abs_diff:.3g} (tolerance {args.tolerance:g}); decisions agree "
          f"{100 * result.decisions_agree:.2f}%")
    if "note" in result.metadata:
        print(f"the model was {result.metadata['note']} (graph metadata 'note')")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from ecgtune.data_prep.errors import PrepError

    return (EnsembleError, PrepError)


USER_ERRORS: tuple[type[BaseException], ...] = _user_errors()
