"""Every internal of Ray that ecgtune touches, in one place.

Ray has no public API for these needs (they are named at each function); the code elsewhere
calls the functions here, never Ray's private modules or attributes. tests/search/
test_ray_compat.py imports each internal and checks the signature used, so a Ray release that
moves one fails the fast tier with its name; pyproject.toml caps Ray at the newest minor that
passed (see the comment there on raising it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ecgtune.search.errors import SearchError

__all__ = [
    "STORAGE_LOGGER",
    "TOKEN_AUTH_LOGGER",
    "RayCompatError",
    "checkpoint_manager_class",
    "install_trial_retry_veto",
    "kept_checkpoint_results",
    "loopback_only",
    "set_checkpoint_results",
    "set_worker_log_printer",
    "training_result",
    "worker_log_printer",
]

log = logging.getLogger(__name__)

# Loggers of Ray's private modules (each module logs through `logging.getLogger(__name__)`).
# The authentication banner on every local start:
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
# One INFO line per persisted checkpoint:
STORAGE_LOGGER = "ray.train._internal.storage"

# The "no multi-node clusters" switch that `get_node_ip_address` reads (module, attribute).
LOOPBACK_SWITCH = ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER")
# The function through which the driver prints every forwarded batch of log lines.
WORKER_LOG_PRINTER = ("ray._private.worker", "print_worker_logs")
# A checkpoint with the metrics reported with it, as the checkpoint manager keeps it.
TRAINING_RESULT = ("ray.train._internal.session", "_TrainingResult")
# The manager Tune gives each trial (`trial.run_metadata.checkpoint_manager`); ecgtune only
# reads and sets its state, the tests build one to check what is read.
CHECKPOINT_MANAGER = ("ray.train._internal.checkpoint_manager", "_CheckpointManager")
# The checkpoint manager's state that `latest_checkpoint_result` and
# `best_checkpoint_result` read, and the sort key it keeps its results in.
CHECKPOINT_RESULTS = "_checkpoint_results"
LATEST_CHECKPOINT_RESULT = "_latest_checkpoint_result"
CHECKPOINT_SCORE = "_get_checkpoint_score"


class RayCompatError(SearchError):
    """This Ray lacks an internal that ecgtune needs; the message names it."""


def _module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RayCompatError(_missing(name)) from exc


def _missing(name: str) -> str:
    import ray

    return (f"Ray {ray.__version__} has no {name}, which ecgtune needs; install a Ray that "
            "pyproject.toml allows (pip install -e . -c constraints.txt)")


# -- the local instance on 127.0.0.1 only -------------------------------------------------------
@contextmanager
def loopback_only() -> Iterator[None]:
    """While open, a Ray instance started in this process takes 127.0.0.1 as its node IP, so
    its gRPC servers listen on loopback only.

    On Linux Ray replaces 127.0.0.1 (even `_node_ip_address=`) by the machine's routable IP
    unless its "no multi-node clusters" switch is off; there is no public option for it. A
    Ray without the switch raises `RayCompatError`: a local instance reachable from the
    network is not something to start with a warning.
    """
    module_name, attribute = LOOPBACK_SWITCH
    constants = _module(module_name)
    if not hasattr(constants, attribute):
        raise RayCompatError(_missing(f"{module_name}.{attribute}") + " to keep a local Ray "
                             "instance on 127.0.0.1")
    saved = getattr(constants, attribute)
    setattr(constants, attribute, False)
    try:
        yield
    finally:
        setattr(constants, attribute, saved)


# -- the driver's log forwarding -----------------------------------------------------------------
def worker_log_printer() -> Callable[..., None] | None:
    """The function that prints forwarded log batches (`print_worker_logs(data, print_file,
    ignore_prefix=False)`, `data` with `pid` and `lines`); None in a Ray without it. Ray's
    `log_to_driver` is all or nothing; this is the one place where a batch's source is known."""
    module_name, attribute = WORKER_LOG_PRINTER
    printer: Callable[..., None] | None = getattr(_module(module_name), attribute, None)
    return printer


def set_worker_log_printer(printer: Callable[..., None]) -> None:
    """Replace the log-batch printer (Ray looks it up in its module at each batch)."""
    module_name, attribute = WORKER_LOG_PRINTER
    setattr(_module(module_name), attribute, printer)


# -- a trial's kept checkpoints ------------------------------------------------------------------
def training_result(checkpoint: Any, metrics: dict[str, Any]) -> Any:
    """What the checkpoint manager keeps per checkpoint; Ray builds these only from a
    `report`, so a checkpoint found on storage needs the private class."""
    module_name, attribute = TRAINING_RESULT
    return getattr(_module(module_name), attribute)(checkpoint, metrics)


def checkpoint_manager_class() -> type:
    """The class of `trial.run_metadata.checkpoint_manager`."""
    module_name, attribute = CHECKPOINT_MANAGER
    cls: type = getattr(_module(module_name), attribute)
    return cls


def kept_checkpoint_results(manager: Any) -> list[Any]:
    """The results whose checkpoints the manager keeps, worst first (public accessors give
    only the best and the latest)."""
    return list(getattr(manager, CHECKPOINT_RESULTS))


def set_checkpoint_results(manager: Any, results: list[Any], latest: Any) -> None:
    """Make `results` the manager's kept checkpoints (in its own order) and `latest` the one a
    restore continues from. Ray has no public way to point a restored trial at another
    checkpoint."""
    setattr(manager, CHECKPOINT_RESULTS, sorted(results, key=getattr(manager, CHECKPOINT_SCORE)))
    setattr(manager, LATEST_CHECKPOINT_RESULT, latest)


# -- which trial failures Tune retries -----------------------------------------------------------
_VETO_FLAG = "ecgtune_non_retryable"


def install_trial_retry_veto(veto: Callable[[BaseException | None], bool],
                             trial_cls: type | None = None) -> bool:
    """Make Tune fail, not retry, a trial whose error `veto` accepts; idempotent.

    Ray Tune has no per-exception retry policy (`FailureConfig.fail_fast` is global, and
    callbacks hear of a retry after it is decided), so the decision is made where Tune makes
    it: `Trial.handle_error(exc)` sees the exception, `Trial.should_recover()` decides. Both
    are wrapped, in the driver, for every trial. The flag lives on the trial's temporary
    (never checkpointed) state, so a trial restarted by `--resume` starts with a clean slate,
    like Tune's own restore-failure counter kept there. Returns False (and logs why) when this
    Ray's Trial lacks the hooks: retries then stay as they are. `trial_cls` defaults to Ray
    Tune's `Trial` (tests pass a stand-in).
    """
    if trial_cls is None:
        from ray.tune.experiment import Trial as trial_cls
    Trial: Any = trial_cls
    if getattr(getattr(Trial, "should_recover", None), "_ecgtune_policy", False):
        return True
    if not (callable(getattr(Trial, "handle_error", None))
            and callable(getattr(Trial, "should_recover", None))):
        log.warning("this Ray Tune has no Trial.handle_error/should_recover: NaN trials are "
                    "retried like any other failure")
        return False
    handle_error = Trial.handle_error
    should_recover = Trial.should_recover

    @functools.wraps(handle_error)
    def _handle_error(self: Any, exc: BaseException | None = None, *args: Any,
                      **kwargs: Any) -> Any:
        if veto(exc):
            setattr(self.temporary_state, _VETO_FLAG, True)
        return handle_error(self, exc, *args, **kwargs)

    @functools.wraps(should_recover)
    def _should_recover(self: Any, *args: Any, **kwargs: Any) -> bool:
        if getattr(self.temporary_state, _VETO_FLAG, False):
            return False
        return bool(should_recover(self, *args, **kwargs))

    _should_recover._ecgtune_policy = True  # type: ignore[attr-defined]
    Trial.handle_error = _handle_error
    Trial.should_recover = _should_recover
    return True
