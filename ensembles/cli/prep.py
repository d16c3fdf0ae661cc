"""`ecgtune synth` and `ecgtune prep`. Parsing imports nothing heavy; handlers import lazily."""

from __future__ import annotations

import argparse
import os
import sys

from ecgtune.data_prep.errors import PrepError
from ecgtune.data_prep.heartbeat import stage
from ecgtune.ensembles.cli.formatter import non_negative_int, positive_float, positive_int

__all__ = ["USER_ERRORS", "register"]

# Expected failures the console script prints as one line (exit status 1).
USER_ERRORS: tuple[type[BaseException], ...] = (PrepError,)


def register(subparsers: argparse._SubParsersAction) -> None:
    # Long but flat: one add_argument per flag, read top to bottom like the --help it makes.
    default_workers = min(os.cpu_count() or 1, 8)
    synth = subparsers.add_parser(
        "synth",
        help="write synthetic 12-lead ECG records (ecg-arrhythmia layout)",
        description=(
            "Write N synthetic records as DIR/WFDBRecords/NN/NNN/JSxxxxx.hea + .mat (MATLAB v4, "
            "int16 12 x n, 1000 units/mV, #Age/#Sex/#Dx headers with SNOMED CT codes). Each "
            "record's labels show in the signal (rate, rhythm, P waves, QRS width and shape, "
            "axis, voltage, pacing spikes, Q waves, ST/T). The same seed gives the same bytes."
        ),
    )
    synth.add_argument("--output", required=True, metavar="DIR", help="output directory")
    synth.add_argument("--n", required=True, type=non_negative_int, help="number of records")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument(
        "--fs", type=positive_float, default=500.0, help="sampling frequency in Hz"
    )
    synth.add_argument(
        "--seconds", type=positive_float, default=10.0,
        help="record length in seconds",
    )
    synth.add_argument(
        "--workers", type=positive_int, default=1,
        help="worker processes (the output does not depend on them)",
    )
    synth.add_argument(
        "--sources", type=non_negative_int, default=0, metavar="N",
        help="records from N simulated sites (at most 6), each with its own sampling rate, "
        "noise, baseline wander, gain error, filter and label prevalence, named by a "
        "#Source: header comment (site-a, site-b, ...); record i comes from site (i-1) mod N",
    )
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=_run_synth)

    prep = subparsers.add_parser(
        "prep",
        help="WFDB records -> quality gates -> folds -> Parquet shards + manifest",
        description=(
            "Read every WFDB record (*.hea with .mat or .dat) under --input, quarantine "
            "unusable ones (DIR/quarantine.csv), resample to --fs and crop/pad to --seconds, "
            "assign 10 folds by iterative multi-label stratification (0-6 train, 7 validation, "
            "8 ensemble/calibration, 9 test), and write zstd Parquet shards grouped by fold "
            "(DIR/shards/) and DIR/manifest.json (written last). Re-running with the same input "
            "keeps finished shards whose checksum verifies and completes the rest."
        ),
    )
    prep.add_argument(
        "--input", metavar="DIR",
        help="root of the records, e.g. .../WFDBRecords (searched recursively)",
    )
    prep.add_argument("--output", required=True, metavar="DIR", help="output directory")
    prep.add_argument(
        "--labels", default="seed20", metavar="NAME",
        help="label map: seed20 or seed20-rbbb (59118001 -> CRBBB)",
    )
    prep.add_argument(
        "--workers", type=positive_int, default=default_workers,
        help="worker processes (default: this machine's cores, at most 8)",
    )
    prep.add_argument(
        "--shard-size", type=positive_int, default=1000, help="records per shard"
    )
    prep.add_argument(
        "--fs", type=positive_int, default=500, help="output sampling frequency, Hz"
    )
    prep.add_argument(
        "--seconds", type=positive_float, default=10.0,
        help="output length in seconds: centred crop or zero padding at the end",
    )
    prep.add_argument(
        "--unlabelled", choices=("keep", "drop"), default="keep",
        help="records with no Dx code in the label map: keep them as all-negative rows "
        "(warning no_scored_label in warnings.csv) or drop them to quarantine.csv",
    )
    prep.add_argument(
        "--holdout-source", nargs="+", default=[], metavar="NAME",
        help="sources (a #Source: site, else the database) whose records form the external "
        "fold: never trained, validated or calibrated on, reported by `ecgtune ensemble` "
        "beside the test fold",
    )
    prep.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.add_argument(
        "--verify", action="store_true",
        help="only check the shards in --output against manifest.json (exit 1 naming the first "
        "bad file); --input is not needed",
    )
    prep.set_defaults(func=_run_prep, _parser=prep)


def _run_synth(args: argparse.Namespace) -> int:
    from ecgtune.data_prep.synth import synthesize

    if args.sources and args.fs != 500.0:
        print("ecgtune synth: error: --fs and --sources: each source records at its own rate",
              file=sys.stderr)
        return 2
    stage(f"synthesising {args.n} records")
    try:
        result = synthesize(
            args.output, args.n, args.seed, fs=args.fs, seconds=args.seconds,
            workers=args.workers, progress=not args.no_progress, sources=args.sources,
        )
    except ValueError as exc:
        print(f"ecgtune synth: error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in result.label_counts.items())
    print(f"wrote {result.n} records to {result.output_dir} (seed {result.seed})")
    print(f"labels: {counts}")
    if result.source_counts:
        from ecgtune.data_prep.synth import SITES

        for site in SITES[:args.sources]:
            filt = (f"{site.highpass_hz or 0:g}-{site.lowpass_hz:g} Hz" if site.lowpass_hz
                    else "unfiltered")
            print(f"  {site.name}: {result.source_counts[site.name]} records at {site.fs:g} Hz, "
                  f"noise x{site.noise:g}, wander x{site.wander:g}, gain "
                  f"{site.gain_error:+.0%}, filter {filt}, AFIB "
                  f"{result.source_label_counts[site.name]['AFIB']}")  # type: ignore[index]
    return 0


def _run_prep(args: argparse.Namespace) -> int:
    if args.verify:
        from ecgtune.data_prep.shards import verify_shards

        stage(f"verifying the shards of {args.output}")
        files = verify_shards(args.output)
        print(f"{len(files)} shards verified in {args.output}")
        return 0
    if not args.input:
        args._parser.error("--input is required (unless --verify)")
    from ecgtune.data_prep.prep import format_summary, prepare

    stage(f"preparing the records of {args.input} (quality gates, folds, shards)")
    result = prepare(
        args.input, args.output, labels=args.labels, workers=args.workers,
        shard_size=args.shard_size, fs=args.fs, seconds=args.seconds, seed=args.seed,
        unlabelled=args.unlabelled, progress=not args.no_progress and sys.stderr.isatty(),
        holdout_sources=args.holdout_source,
    )
    print(format_summary(result.manifest))
    print(
        f"\n{result.output_dir}: {result.shards_written} shards written, "
        f"{result.shards_kept} kept, {result.seconds:.1f} s "
        f"({result.records_per_second:.0f} records/s)"
    )
    return 0
