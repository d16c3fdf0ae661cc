"""Which trial failures Ray Tune retries (and a worker told to exit stays quiet about it).

`FailureConfig(max_failures=N)` retries every failed trial from its last checkpoint, which is
right for a crashed worker or a lost node and pointless for a failure that the same weights
and batches reproduce (a NaN loss): each retry diverges again, prints "retrying", and costs a
worker start. Ray Tune 2.60 has no per-exception retry policy (`fail_fast` is global, and
callbacks only hear of a retry after it is decided), so the decision is made where Tune makes
it: `Trial.handle_error` sees the exception and `Trial.should_recover` decides. Both are
wrapped, in the driver only, so that a trial whose exception is a `NonRetryableTrialError`
ends once, as ERROR, and every other failure keeps the retry-from-checkpoint behaviour.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

from ecgtune.search.errors import NonRetryableTrialError

log = logging.getLogger(__name__)

__all__ = ["install_no_retry_policy", "is_non_retryable", "quiet_shutdown_in_finalizers"]

# Kept on the trial's temporary (never checkpointed) state: a trial restarted by `--resume`
# starts with a clean slate, like Tune's own restore-failure counter kept there.
_FLAG = "ecgtune_non_retryable"


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
    if trial_cls is None:
        from ray.tune.experiment import Trial as trial_cls
    Trial: Any = trial_cls
    if getattr(Trial.should_recover, "_ecgtune_policy", False):
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
        if is_non_retryable(exc):
            setattr(self.temporary_state, _FLAG, True)
        return handle_error(self, exc, *args, **kwargs)

    @functools.wraps(should_recover)
    def _should_recover(self: Any, *args: Any, **kwargs: Any) -> bool:
        if getattr(self.temporary_state, _FLAG, False):
            return False
        return should_recover(self, *args, **kwargs)

    _should_recover._ecgtune_policy = True  # type: ignore[attr-defined]
    Trial.handle_error = _handle_error
    Trial.should_recover = _should_recover
    return True


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
