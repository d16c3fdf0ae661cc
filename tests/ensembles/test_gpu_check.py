"""`make gpu-check` on a CPU: the same script a GPU machine runs, with the `tiny` preset, so
it cannot rot between GPU days. Asserts what each section must show, not timings."""

from __future__ import annotations

import json

import pytest
import torch

from ecgtune.ensembles.cli.gpu_check import main


@pytest.mark.slow  # spawns worker processes and (with Ray) a local Ray instance
def test_gpu_check_cpu_fallback_runs_every_section(tmp_path, capsys, monkeypatch):
    # One intra-op thread in the processes it spawns too, as in this one (tests/conftest.py):
    # two trial processes with two spinning threads each on two shared cores crawl.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "gpu-check.json"
    assert main(["--quick", "--json", str(out)]) == 0
    rows = {(r["section"], r["setting"]): r["value"] for r in json.loads(out.read_text())}
    sections = {section for section, _ in rows}
    assert {"environment", "memory", "throughput", "targets", "reused actor", "restore",
            "two trials, one GPU", "OOM path", "inference", "ray task", "total"} <= sections
    assert not [key for key in rows if key[1] == "error"], rows
    assert "estimate" in rows[("memory", "tiny b8 crop1024 fp32 ncl")]
    # Both layouts side by side in one run, and the targets' cells (n/a without a GPU).
    old = rows[("throughput", "train tiny b8 crop1024 fp32 ncl")]
    new = rows[("throughput", "train tiny b8 crop1024 fp32 channels_last")]
    assert "samples/s" in old and "x fp32 ncl" in new
    targets = {k[1]: v for k, v in rows.items() if k[0] == "targets"}
    speedup = targets["tiny: best new layout / best old layout (>= 3x, same run)"]
    assert "fp32/channels_last" in speedup and speedup.endswith("n/a on the CPU")
    picked = targets["tiny: train.precision=auto, train.layout=auto picks"]
    assert picked.startswith("fp32/ncl, fp32: auto on a CPU")
    assert targets["two trials at 0.5 GPU / one trial (>= 1.7x)"].endswith("n/a on the CPU")
    assert rows[("two trials, one GPU", "one process alone (fraction 1.0) tiny b8")].startswith(
        "finished")
    assert "model collected: True" in rows[("reused actor", "after trial 1 (close + "
                                                             "release_memory)")]
    assert "AdamW step tensors on ['cpu']" in rows[("restore", "tiny b8 crop1024")]
    oom = [v for (s, k), v in rows.items() if s == "OOM path" and k != "sibling process"]
    assert oom and oom[0].startswith("TrialOutOfMemoryError: GPU out of memory at batch 32")
    assert rows[("OOM path", "sibling process")].startswith("finished")
    # Ray told of a GPU that torch cannot use: the trial refuses instead of using the CPU.
    assert "-> cpu (cpu), precision fp32" in rows[("ray task", "num_gpus=0")]
    faked = rows[("ray task", "num_gpus=0.5, faked GPU")]
    assert "refused: the trial was assigned GPU" in faked
    table = capsys.readouterr().out
    assert "check" in table and "OOM path" in table


@pytest.mark.slow  # a local Ray search, an ensemble and an ONNX export: a few minutes here
def test_gpu_check_search_section_runs_search_ensemble_and_export_on_the_cpu(monkeypatch):
    from ecgtune.ensembles.cli.gpu_check import search_section

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = search_section(torch.device("cpu"))
    values = {r.setting: r.value for r in rows}
    assert rows[0].setting == "synth + prep 200 records"
    search = values["search --space tiny --num-samples 2 --gpus-per-trial 0"]
    ensemble = values["ensemble --device cpu --top-k 3"]
    export = values["export --format onnx"]
    for value in (search, ensemble, export):
        assert value.split(" s", 1)[0].isdigit(), rows  # timed, not FAILED
    assert values["search -> ensemble -> export"].endswith("s in all")


def test_the_search_section_says_what_it_lacks_instead_of_failing(monkeypatch):
    import importlib.util

    from ecgtune.ensembles.cli import gpu_check

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    (row,) = gpu_check.search_section(torch.device("cpu"))
    assert row.value.startswith("skipped: ray not installed for ")
