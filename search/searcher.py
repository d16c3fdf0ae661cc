"""Searcher construction: Optuna TPE (or random) over a space's define-by-run function,
wrapped so that invalid points are rejected before any trial starts."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ecgtune.search import metric_keys as K
from ecgtune.search.errors import SpaceError
from ecgtune.search.options import OBJECTIVES, SEARCHERS
from ecgtune.search.space import SearchSpace, validate_point

log = logging.getLogger(__name__)
class ValidatingSearcher(Searcher):
    """Asks the wrapped searcher again (telling it the point failed) until a point passes
    `check`; Tune only ever sees valid configs. A single-objective trial that ends before
    its `train.epochs` (ASHA stopped it) is told as pruned, not complete."""

    def __init__(self, searcher: Searcher, check: Callable[[dict[str, Any]], None],
                 max_tries: int = 50) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.check = check
        self.max_tries = max_tries
        self.inner_ids: dict[str, str] = {}
        self.budgets: dict[str, int] = {}  # each trial's train.epochs
        self.rejected: list[dict[str, Any]] = []

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        for attempt in range(self.max_tries):
            inner_id = trial_id if attempt == 0 else f"{trial_id}.rejected{attempt}"
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            try:
                self.check(config)
            except ValueError as exc:
                log.info("rejected an invalid point before starting it: %s", exc)
                self.rejected.append({"reason": str(exc)})
                self.searcher.on_trial_complete(inner_id, result=None, error=True)
                continue
            self.inner_ids[trial_id] = inner_id
            if "train.epochs" in config:
                self.budgets[trial_id] = int(config["train.epochs"])
            return config
        raise SpaceError(
            f"{self.max_tries} consecutive sampled points were invalid; last reason: "
            f"{self.rejected[-1]['reason']}. Constrain the space (e.g. with 'when')."
        )

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self.inner_ids.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        # getattr: a searcher pickled (for --resume) before budgets were kept has none.
        budget = getattr(self, "budgets", {}).get(trial_id)
        if (result and not error and budget and isinstance(self.metric, str)
                and int(result.get(K.EPOCH, budget)) < budget):
            # Told without a result, Optuna records the trial as PRUNED (its per-epoch values
            # were reported as they came), and TPE ranks pruned trials by the epoch they
            # reached, then value, below every trial that ran its budget. Told as complete,
            # its epoch-1 value would count as final, and that value ranks trials poorly
            # (Spearman 0.35 with the final best over the 72 full-budget trials of
            # bench_search at 24 trials, computed from their results; BENCHMARKS.md).
            result = None
        self.searcher.on_trial_complete(self.inner_ids.get(trial_id, trial_id), result=result,
                                        error=error)

    # Ray checkpoints wrappers through get_state/set_state and the wrapped searcher itself
    # through save_to_dir, so only this wrapper's own bookkeeping goes here.
    def get_state(self) -> dict[str, Any]:
        return {"inner_ids": dict(self.inner_ids), "budgets": dict(self.budgets),
                "rejected": list(self.rejected)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner_ids = dict(state.get("inner_ids", {}))
        self.budgets = dict(state.get("budgets", {}))
        self.rejected = list(state.get("rejected", []))


@dataclass(frozen=True)
class PointValidator:
    """Checks a sampled trial config against the model's layout rules and, when the trials'
    GPU share is known, against its memory: a config that cannot fit is rejected here, so
    the searcher learns it failed and no trial is started for it (picklable: Ray saves the
    searcher with the experiment)."""

    space: SearchSpace
    num_labels: int
    label_groups: tuple[tuple[int, ...], ...]
    gpu_memory_bytes: int | None = None  # one trial's share; None: not checked here
    group_names: tuple[str, ...] = ()  # the label map's, for per-branch settings

    def __call__(self, config: dict[str, Any]) -> None:
        trial = validate_point(self.space, config, self.num_labels,
                               [list(g) for g in self.label_groups], self.group_names)
        if self.gpu_memory_bytes is None:
            return
        from ecgtune.search.devices import require_fit

        # auto trains in bf16 (fp16 on older GPUs): half-size activations either way.
        precision = "fp32" if trial.train.precision == "fp32" else "bf16"
        require_fit(trial.model, self.num_labels, self.label_groups, trial.train.batch_size,
                    trial.train.crop_len, precision, self.gpu_memory_bytes,
                    "a trial's GPU share", group_names=self.group_names)


def build_searcher(space: SearchSpace, kind: str, seed: int,
                   check: Callable[[dict[str, Any]], None],
                   objective: tuple[str, ...] = ("auprc",)) -> ValidatingSearcher:
    """Optuna's sampler behind Ray's OptunaSearch; with more than one `objective` the study
    is multi-objective (TPE then models the Pareto front, Optuna's MOTPE), told each trial's
    final values. ASHA, separately, stops trials on quality alone; a trial it stops early is
    pruned for a single-objective study (see ValidatingSearcher)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=int(space.searcher.get("n_startup_trials", 10)),
                # The space is conditional (fusion-specific keys): multivariate + group lets
                # TPE model the joint distribution within each branch of the condition tree.
                multivariate=True,
                group=True,
            )
        points = [dict(p) for p in space.points_to_evaluate]
    elif kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
        points = []
    else:
        raise ValueError(f"unknown searcher {kind!r}; valid: {', '.join(SEARCHERS)}")
    metrics = [OBJECTIVES[name][0] for name in objective]
    modes = [OBJECTIVES[name][1] for name in objective]
    inner = OptunaSearch(
        space=space.define_by_run(),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler,
        points_to_evaluate=points or None,
    )
    return ValidatingSearcher(inner, check)
