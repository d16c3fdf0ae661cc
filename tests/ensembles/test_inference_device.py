"""Devices for inference: `ensemble`, `predict` and the pyfunc model choose their device
(`--device auto|cpu|cuda`) and precision (`--precision fp32|bf16`), and refuse a device torch
cannot use with one line, before any work."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtune.data_prep import make_record, write_record
from ecgtune.ensembles import load_bundle
from ecgtune.ensembles.build.ensemble import EnsembleOptions
from ecgtune.ensembles.cli import main
from ecgtune.ensembles.errors import EnsembleError
from ecgtune.ensembles.ship.inference import forward_windows, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _records(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        spec, digital = make_record(5, i)
        write_record(folder, f"R{i}", digital, dx_codes=spec.dx_codes)
    return folder


def test_auto_resolves_to_what_torch_can_use():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert forward_windows(torch.device("cpu"), 4096) == 96


@no_cuda
def test_cuda_without_a_gpu_is_a_usage_error_in_one_line(tiny_bundle, tmp_path, capsys):
    status = main(["predict", "--bundle", str(tiny_bundle), "--input",
                   str(_records(tmp_path / "in")), "--output", str(tmp_path / "p.csv"),
                   "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--device cuda" in err[0], err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(EnsembleError, match="--device cuda"):
        EnsembleOptions(data="d", name="n", output="o", device="cuda").validate()
    with pytest.raises(EnsembleError, match="--precision"):
        EnsembleOptions(data="d", name="n", output="o", precision="fp8").validate()


def test_predict_on_the_chosen_device_and_precision(tiny_bundle, tmp_path):
    folder = _records(tmp_path / "in")
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.csv"
        assert main(["predict", "--bundle", str(tiny_bundle), "--input", str(folder),
                     "--output", str(out), "--device", "cpu", "--precision", precision]) == 0
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
        names = load_bundle(tiny_bundle).label_names
        outputs[precision] = np.array([[float(r[n]) for n in names] for r in rows])
    # bf16 autocast moves probabilities a little, never a lot.
    diff = np.abs(outputs["fp32"] - outputs["bf16"]).max()
    assert 0 < diff < 0.05, diff


def test_bundle_members_run_where_asked(tiny_bundle):
    bundle = load_bundle(tiny_bundle, device="auto", precision="bf16")
    assert bundle.device == resolve_device("auto") and bundle.precision == "bf16"
    assert all(next(m.parameters()).device.type == bundle.device.type
               for _, m in bundle.members)
