"""`make gpu-check` on a CPU: the same script a GPU machine runs, with the `tiny` preset, so
it cannot rot between GPU days. Asserts what each section must show, not timings."""

from __future__ import annotations

import json

import pytest

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
    assert {"environment", "memory", "throughput", "reused actor", "restore",
            "two trials, one GPU", "OOM path", "inference", "ray task", "total"} <= sections
    assert not [key for key in rows if key[1] == "error"], rows
    assert "estimate" in rows[("memory", "tiny b8 crop1024")]
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
