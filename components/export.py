"""Pickle-free export: `torch.export` with a symbolic batch size and input length.

torch.export rather than TorchScript: `torch.jit.script` is deprecated in current PyTorch,
and a trace would freeze the length-dependent crops of the U-blocks. The exported program
accepts any batch size and any length the model accepts (>= MIN_LENGTH), and
`torch.export.save` / `torch.export.load` store it without pickling Python objects.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from .config import MIN_LENGTH, NUM_LEADS

__all__ = ["export_model", "load_exported", "save_exported"]


def export_model(
    model: nn.Module,
    example_length: int = 4096,
    *,
    batch_size: int = 2,
    dynamic_length: bool = True,
) -> ExportedProgram:
    """Export `model` (put in eval mode) for inputs (B, 12, L) with B and L symbolic.

    `example_length` only picks the tracing example; the program is not specialised to it
    unless `dynamic_length=False`, which fixes L = example_length (about 3x faster to export,
    for deployments that always crop to one length). Call `.module()` on the result for a
    callable. Buffers are taken as they are now, so export after training (BatchNorm running
    statistics are frozen in).
    """
    if example_length < MIN_LENGTH:
        raise ValueError(f"example_length must be >= {MIN_LENGTH}, got {example_length}")
    if batch_size < 2:
        # a size-1 example would specialise the batch dimension to 1
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    model.eval()
    param = next(model.parameters())
    example = torch.randn(batch_size, NUM_LEADS, example_length, device=param.device)
    dims = {0: Dim("batch", min=1)}
    if dynamic_length:
        dims[2] = Dim("length", min=MIN_LENGTH)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=(dims,))


def save_exported(program: ExportedProgram, path: str | os.PathLike[str]) -> None:
    """Write the program to `path` (a .pt2 archive), atomically."""
    tmp = f"{os.fspath(path)}.partial.pt2"  # torch.export.save warns on other suffixes
    torch.export.save(program, tmp)
    os.replace(tmp, path)


def load_exported(path: str | os.PathLike[str]) -> ExportedProgram:
    return torch.export.load(path)
