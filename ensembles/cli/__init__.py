"""The `ecgtune` command line: `main` stitches one module per command (prep and synth,
search, ensemble, evaluate, predict, export, demo); `formatter` is the one help format; the GPU
check (`python -m ecgtune.ensembles.cli.gpu_check`) sits here beside the demo because it runs
the whole pipeline's pieces, training and inference alike. Argument parsing imports nothing
heavy: handlers import torch, Ray or MLflow when they run."""

from ecgtune.ensembles.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
