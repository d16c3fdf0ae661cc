"""Faults that tests inject into a search's trials through its trial hook
(`run_search(..., trial_hook=...)`, search.trainable.TrialHook). Each one takes the search's
real failure path: a crash is retried from the last checkpoint, NaN weights make the training
loss NaN (`NonFiniteLossError`), and a CUDA out-of-memory error is translated by the trial's
own handler (`TrialOutOfMemoryError`).

Ray's workers cannot import this folder: a test that hands one of these hooks to a search calls
`ship_by_value()` first, so that Ray pickles this module's code along with the hook.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the Trainer tests use poison_weights without importing Ray
    from ecgtune.search.trainable import EpochStart

CRASH_MARKER = "injected_crash"  # in the trial's directory: the crash happens once per trial


class InjectedCrash(RuntimeError):
    """Stands for a crashed worker: a failure that the search retries from its checkpoint."""


def crash_once(start: EpochStart) -> None:
    """Fail the trial's first attempt at this epoch; its retry, restored from the checkpoint
    of the epoch before, passes."""
    marker = start.trial_dir / CRASH_MARKER
    if marker.exists():
        return
    marker.write_text(str(start.epoch))
    raise InjectedCrash(f"injected crash at the start of epoch {start.epoch}")


def poison_weights(model: torch.nn.Module) -> None:
    """NaN in every weight: the next forward pass, and so the training loss, is NaN."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(math.nan)


def nan_weights(start: EpochStart) -> None:
    poison_weights(start.trainer.model)


def out_of_memory(start: EpochStart) -> None:
    """What the CUDA caching allocator raises when an allocation does not fit."""
    raise torch.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate 2.00 GiB (injected at epoch {start.epoch})")


FAULTS: dict[str, Callable[[EpochStart], None]] = {
    "crash": crash_once, "nan": nan_weights, "oom": out_of_memory,
}


@dataclass(frozen=True)
class FaultsBySeed:
    """A trial hook: the trial whose `train.seed` is a key of `faults` gets that fault (a name
    in FAULTS) at the start of epoch `epoch`; every other trial runs untouched."""

    faults: Mapping[int, str]
    epoch: int = 1

    def __call__(self, start: EpochStart) -> None:
        fault = self.faults.get(int(start.config["train.seed"]))
        if fault is not None and start.epoch == self.epoch:
            FAULTS[fault](start)


@contextmanager
def ship_by_value() -> Iterator[None]:
    """While open, Ray pickles this module's functions and classes by value (its workers
    cannot import it by name, as tests/support is on the test session's sys.path only)."""
    from ray import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)
