"""The Ray instance a search runs on: started locally (loopback only) or joined, and what of
Ray's own console output reaches ours."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ecgtune.search import _ray_compat
from ecgtune.search.options import SearchOptions

__all__ = ["init_ray", "loopback_only", "quiet_ray_system_logs", "quiet_tune_console"]


def init_ray(opts: SearchOptions) -> bool:
    """Start (or join) Ray; returns True when this call started a local instance."""
    import ray

    if ray.is_initialized():
        return False
    # Ray >= 2.59 turns token auth on for local instances and says so in a warning on every
    # start. We keep that default on purpose (a local Ray listens on 127.0.0.1, which every
    # user of a shared host can reach), so the banner is expected noise; clusters set
    # RAY_AUTH_MODE themselves (ray_cluster.yaml).
    logging.getLogger(_ray_compat.TOKEN_AUTH_LOGGER).addFilter(_drop_token_auth_banner)
    # Short CPU epochs checkpoint every few seconds; the experiment-state snapshots that this
    # forces are cheap here, and Ray's warning about them reads like a failure.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet_tune_console(opts.verbose)
    with loopback_only(opts.address is None):
        ray.init(
            address=opts.address,
            num_cpus=opts.num_cpus if opts.address is None else None,
            include_dashboard=False if opts.address is None else None,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    return opts.address is None


@contextmanager
def loopback_only(local: bool) -> Iterator[None]:
    """A local Ray instance listens on 127.0.0.1 only, not on every interface.

    Ray's gRPC servers (GCS, raylet, every worker) bind to all interfaces unless the node's
    IP is 127.0.0.1, and on Linux Ray replaces 127.0.0.1 (even `_node_ip_address=`) by the
    machine's routable IP; only its "no multi-node clusters" switch (on by default on macOS
    and Windows, read by `get_node_ip_address`) keeps the loopback address. It is turned on
    just for the start of this instance: processes started later (`ray start` for a cluster)
    are unaffected, and a cluster joined with --address never gets here. A Ray without that
    switch fails the command (`RayCompatError`) rather than start an exposed instance.
    """
    if not local:
        yield
        return
    with _ray_compat.loopback_only():
        yield


def quiet_tune_console(verbose: int) -> None:
    """Below --verbose 2 our one line per trial event and our summary are the whole console.

    Ray Tune's default reporter prints a configuration banner (naming our searcher
    "SearchGenerator"), a TensorBoard hint (tensorboard is not installed) and result tables,
    whatever `verbose` says; its legacy reporter at verbose 0 prints nothing. Its per-failure
    tracebacks are dropped too: our line names the error, the trial's error file keeps it.
    """
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0" if verbose < 2 else "1"  # read at each fit()
    level = logging.CRITICAL if verbose < 2 else logging.NOTSET
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(level)
    quiet_ray_system_logs(verbose)


def quiet_ray_system_logs(verbose: int) -> None:
    """Below --verbose 2 the driver prints what the trials print, not Ray's own processes.

    On a cluster the driver also receives the raylet's and the GCS's log lines: a lost node
    arrives as "Raylet is terminated ..." followed by its last 20 lines of state dumps, then
    placement-group retries and metrics-agent warnings, and the retried trial's process adds
    Ray's "Restored on ... from checkpoint" line. Our line ("... failed; retrying from its
    last checkpoint") says what matters. Ray prints every forwarded batch through one
    function, whose batches name their source: a worker's pid, else the component's name
    (`raylet`, `gcs_server`, ...). Autoscaler events ("Adding 2 nodes ...") stay.
    """
    printer = _ray_compat.worker_log_printer()
    if printer is None:  # another Ray version: its output is left as it is
        return
    original = getattr(printer, "__wrapped__", printer)
    if verbose >= 2:
        _ray_compat.set_worker_log_printer(original)
        return

    @functools.wraps(original)
    def workers_only(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if _from_ray_system(data.get("pid")):
            return
        lines = [line for line in data.get("lines", []) if not _RAY_RESTORE.search(line)]
        if lines:
            original({**data, "lines": lines}, *args, **kwargs)

    _ray_compat.set_worker_log_printer(workers_only)


# Logged by Ray's Trainable in the trial's process when a retry resumes, before any of our
# code runs there; our "... failed; retrying from its last checkpoint" line already says it.
_RAY_RESTORE = re.compile(r"\bRestored on \S+ from checkpoint: ")


def _from_ray_system(pid: object) -> bool:
    return isinstance(pid, str) and not pid.isdigit() and pid != "autoscaler"


def _drop_token_auth_banner(record: logging.LogRecord) -> bool:
    return "Token authentication is enabled" not in record.getMessage()
