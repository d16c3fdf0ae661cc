"""One line per event of a running search: trials starting, each epoch's validation scores,
early stops, retries and errors. Readable in a terminal and in a CI log alike, where Ray's
own output (`--verbose 2`) prints a 40-line config table per trial."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from ecgtune.data_prep.heartbeat import stage
from ecgtune.search import metric_keys as K
from ecgtune.search.tracking import trial_index, trial_run_name


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


class ProgressPrinter(Callback):
    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.start = time.monotonic()
        self.finished = 0
        self.results = 0  # epoch results seen by this driver

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # What the console's heartbeat line says while no trial reports (data_prep.heartbeat):
        # the start-up of the first trials (worker processes, torch, the data), long epochs.
        running = [t for t in trials if t.status == "RUNNING"]
        pending = sum(t.status == "PENDING" for t in trials)
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        names = ", ".join(f"t{trial_index(t):03d}" for t in running[:4])
        names += ", ..." if len(running) > 4 else ""
        what = ("waiting for the first epoch" if self.results == 0 else "training")
        stage(f"{what}: {len(running)} running{f' ({names})' if names else ''}, "
              f"{pending} pending, {done} of {self.num_samples} done")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restored by `--resume` from Ray's experiment state: the clock restarts here.
        self.__dict__.update({"results": 0, **state})
        self.start = time.monotonic()

    def _say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"  [{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    @staticmethod
    def _name(trial: Any) -> str:
        return trial_run_name(trial_index(trial), trial.config)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        loss = trial.config.get("train.loss", "?")
        lr = trial.config.get("train.lr")
        lr_text = f", lr {lr:.2g}" if isinstance(lr, float) else ""
        self._say(f"{self._name(trial)} started ({loss} loss{lr_text})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.results += 1
        budget = trial.config.get("train.epochs", "?")
        self._say(
            f"{self._name(trial)} epoch {result.get(K.EPOCH)}/{budget}: val AUPRC "
            f"{result.get(K.OBJECTIVE, float('nan')):.3f}, AUROC "
            f"{result.get(K.VAL_AUROC, float('nan')):.3f}, F1 "
            f"{result.get(K.VAL_F1, float('nan')):.3f} "
            f"({result.get('time_this_iter_s', 0):.0f} s, "
            f"{result.get(K.THROUGHPUT, 0):.0f} samples/s)"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        last = trial.last_result or {}
        epochs, budget = last.get(K.EPOCH, 0), trial.config.get("train.epochs", 0)
        how = "stopped early by ASHA" if epochs < budget else "finished"
        self._say(f"{self._name(trial)} {how} after {plural(int(epochs), 'epoch')}, best val "
                  f"AUPRC {last.get(K.BEST_OBJECTIVE, float('nan')):.3f} "
                  f"({self.finished}/{self.num_samples} trials done)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"{self._name(trial)} failed; retrying from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ecgtune.search.tracking import error_summary

        self.finished += 1
        self._say(f"{self._name(trial)} FAILED: {error_summary(trial)} "
                  f"({self.finished}/{self.num_samples} trials done)")
