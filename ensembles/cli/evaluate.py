"""`ecgtune evaluate`: argument parsing only (options declared in `ensembles.options`); the
handler imports torch, MLflow and the rest when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ecgtune.ensembles.options import EvaluateOptions, add_arguments, from_namespace

__all__ = ["register"]

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


def _run_evaluate(args: argparse.Namespace) -> int:
    # Options first: a bad value is refused before torch and MLflow are imported.
    options = from_namespace(args, EvaluateOptions)
    from ecgtune.ensembles.evaluate.run import evaluate_bundle, format_evaluation

    if not sys.stderr.isatty():
        options = dataclasses.replace(options, progress=False)
    print(format_evaluation(evaluate_bundle(options)))
    return 0
