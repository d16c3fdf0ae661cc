"""Below --verbose 2 the driver's console carries what trials print, not the log lines of Ray's
own processes (a lost node's raylet state dump); --verbose 2 restores Ray's printer."""

from __future__ import annotations

import io

from ecgtune.search import _ray_compat
from ecgtune.search.ray_session import quiet_ray_system_logs

STATE_DUMP = ("Raylet is terminated. Termination is unexpected. ...\n"
              "    [state-dump] NodeManager.deadline_timer.flush_free_objects - 1 total")


def _printed(data: dict) -> str:
    sink = io.StringIO()
    printer = _ray_compat.worker_log_printer()
    assert printer is not None
    printer(data, sink)
    return sink.getvalue()


def test_only_ray_system_lines_are_dropped_and_verbose_2_restores_them():
    installed = _ray_compat.worker_log_printer()  # an in-process search may have wrapped it
    original = getattr(installed, "__wrapped__", installed)
    try:
        quiet_ray_system_logs(1)
        quiet_ray_system_logs(1)  # idempotent: wraps Ray's printer once
        assert getattr(_ray_compat.worker_log_printer(), "__wrapped__", None) is original
        assert _printed({"pid": "raylet", "lines": [STATE_DUMP], "is_err": False}) == ""
        assert _printed({"pid": "gcs_server", "lines": ["Failed to remove 1 bundle(s)"],
                         "is_err": True}) == ""
        trial = _printed({"pid": 4242, "lines": ["loss went up"], "is_err": False,
                          "task_name": "train_trial"})
        assert "loss went up" in trial and "pid=4242" in trial
        restore = ("Restored on 192.0.2.2 from checkpoint: Checkpoint(filesystem=local, "
                   "path=/tmp/ray_results/s/trial_001/checkpoint_000001)")
        resumed = _printed({"pid": 4243, "lines": [restore, "epoch 3"], "is_err": False,
                            "task_name": "train_trial"})
        assert "Restored on" not in resumed and "epoch 3" in resumed
        assert _printed({"pid": 4243, "lines": [restore], "is_err": False}) == ""

        quiet_ray_system_logs(2)
        assert _ray_compat.worker_log_printer() is original
        assert "state-dump" in _printed({"pid": "raylet", "lines": [STATE_DUMP],
                                         "is_err": False})
        assert "Restored on" in _printed({"pid": 4243, "lines": [restore], "is_err": False})
    finally:
        assert installed is not None
        _ray_compat.set_worker_log_printer(installed)
