"""Which trial failures Ray Tune retries (and a worker told to exit stays quiet about it).

`FailureConfig(max_failures=N)` retries every failed trial from its last checkpoint, which is
right for a crashed worker or a lost node and pointless for a failure that the same weights
and batches reproduce (a NaN loss): each retry diverges again, prints "retrying", and costs a
worker start. Ray Tune has no per-exception retry policy, so the driver vetoes Tune's retry of
a trial whose exception is a `NonRetryableTrialError` (through Tune's internals:
search._ray_compat); that trial ends once, as ERROR, and every other failure keeps the
retry-from-checkpoint behaviour.
"""

from __future__ import annotations

import sys
from typing import Any

from ecgtune.search import _ray_compat
from ecgtune.search.errors import NonRetryableTrialError

__all__ = ["install_no_retry_policy", "is_non_retryable", "quiet_shutdown_in_finalizers"]


def is_non_retryable(exc: BaseException | None) -> bool:
    """True for a `NonRetryableTrialError`, also when it arrives wrapped in Ray's task error
    (whose `cause` is the exception the trainable raised)."""
    seen = 0
    while exc is not None and seen < 5:  # `cause` chains are short; guard against cycles
        if isinstance(exc, NonRetryableTrialError):
            return True
        exc = getattr(exc, "cause", None)
        seen += 1
    return False


def install_no_retry_policy(trial_cls: type | None = None) -> bool:
    """Make Tune fail, not retry, trials whose error is non-retryable; idempotent. Returns
    False (and logs why) when this Ray's Trial lacks the hooks, so retries stay as they are.
    `trial_cls` defaults to Ray Tune's `Trial` (tests pass a stand-in)."""
    return _ray_compat.install_trial_retry_veto(is_non_retryable, trial_cls)


def quiet_shutdown_in_finalizers() -> None:
    """A worker whose node dies gets SIGTERM; Ray's handler raises SystemExit, and when that
    lands inside a finalizer Python prints "Exception ignored in ..." with a traceback, which
    the driver forwards. The exit is the point, not an error: drop that one report and keep
    every other unraisable exception."""
    if getattr(sys.unraisablehook, "_ecgtune", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook._ecgtune = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
