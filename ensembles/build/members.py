"""Ensemble members: the top-K finished trials of a search, found through MLflow.

The search is the experiment named ``--name``; its parent run is the newest run tagged
``ecgtune.role=search`` (or ``--search-run-id``). Its child runs that FINISHED with a best
checkpoint are ranked by the last logged ``val/best_macro_auprc`` and the top K are loaded.

The checkpoint itself (its files, where a moved one is looked for, reading it back with
``weights_only=True``) belongs to `search.checkpoint`; this module ranks the runs and turns a
checkpoint into a member (its crop length and normalisation come from the trial's config).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ecgtune.ensembles.errors import EnsembleError, MemberError, SearchNotFoundError
from ecgtune.ensembles.ship.inference import MemberSpec
from ecgtune.search import checkpoint, tracking
from ecgtune.search import metric_keys as K
from ecgtune.search.errors import CheckpointError

__all__ = [
    "Member",
    "SearchRef",
    "TrialRef",
    "check_search_finished",
    "fewer_than_asked",
    "find_search",
    "load_member",
    "rank_trials",
    "resolve_checkpoint",
]


@dataclass(frozen=True)
class SearchRef:
    name: str
    experiment_id: str
    run_id: str
    search_path: str
    data_manifest_sha256: str | None
    status: str = "FINISHED"  # the parent run's: RUNNING while the search runs
    num_samples: int | None = None  # trials the search was started with
    started: str = ""  # the parent run's start, local time


@dataclass(frozen=True)
class TrialRef:
    """A finished trial run with a best checkpoint; ``rank`` 1 is the best by the objective."""

    rank: int
    run_id: str
    run_name: str
    trial_id: str
    score: float
    checkpoint: str

    @property
    def member_name(self) -> str:
        """File-name safe and readable: ``t007-1a2b3c4d`` (trial index, Ray trial id)."""
        head = self.run_name.split(" ", 1)[0] if self.run_name else ""
        prefix = head if re.fullmatch(r"t\d+", head) else f"r{self.rank:02d}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{prefix}-{self.trial_id or self.run_id[:8]}")

    @property
    def label(self) -> str:
        return f"run {self.run_id} ({self.run_name or self.trial_id})"


@dataclass
class Member:
    """A loaded member: its spec and model, where it came from, and what its trial tuned."""

    spec: MemberSpec
    model: nn.Module
    trial: TrialRef
    checkpoint_dir: str
    val_thresholds: np.ndarray | None  # tuned by the trial on its validation fold
    trial_config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


def find_search(client: Any, name: str, search_run_id: str | None = None) -> SearchRef:
    """The search's parent run: ``search_run_id``, else the newest ``role=search`` run."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise SearchNotFoundError(
            f"no MLflow experiment named {name!r}; pass the --name of a finished search "
            "(and its --tracking-uri)"
        )
    if search_run_id is not None:
        try:
            run = client.get_run(search_run_id)
        except Exception:
            raise SearchNotFoundError(f"no MLflow run {search_run_id!r}") from None
        if run.info.experiment_id != experiment.experiment_id:
            raise SearchNotFoundError(
                f"run {search_run_id} is not in experiment {name!r}"
            )
        if run.data.tags.get(tracking.TAG_ROLE) != "search":
            raise SearchNotFoundError(f"run {search_run_id} is not a search run")
    else:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{tracking.TAG_ROLE}` = 'search'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise SearchNotFoundError(f"experiment {name!r} has no search run")
        run = runs[0]
    samples = run.data.params.get("num_samples")
    started = (dt.datetime.fromtimestamp(run.info.start_time / 1000).astimezone()
               .isoformat(sep=" ", timespec="seconds") if run.info.start_time else "")
    return SearchRef(
        name=name,
        experiment_id=experiment.experiment_id,
        run_id=run.info.run_id,
        search_path=run.data.tags.get(tracking.TAG_SEARCH_PATH, ""),
        data_manifest_sha256=run.data.tags.get("ecgtune.data_manifest_sha256"),
        status=run.info.status,
        num_samples=int(samples) if samples and samples.isdigit() else None,
        started=started,
    )


def fewer_than_asked(search_name: str, trials: list[TrialRef], top_k: int) -> str | None:
    """The line saying that fewer finished trials exist than --top-k asked for, if so: the
    summary's "N of the top M trials" alone would read as if M were all it was asked."""
    if len(trials) >= top_k:
        return None
    return (f"note: only {len(trials)} finished trial{'s' if len(trials) != 1 else ''} with a "
            f"checkpoint in search {search_name!r}; --top-k {top_k} asked for {top_k}")


def check_search_finished(client: Any, search: SearchRef, tracking_uri: str,
                          allow_running: bool) -> str | None:
    """Refuse a search whose parent run is still RUNNING (its best trials are not known yet),
    unless `allow_running`: then the line to print, with how many trials had finished. A
    RUNNING run that no search process holds any more (killed) is named as such."""
    if search.status != "RUNNING":
        return None
    from ecgtune.search.claim import holder_of

    finished = sum(run.info.status == "FINISHED"
                   for run in tracking.trial_runs(client, search.experiment_id, search.run_id))
    of = f" of {search.num_samples}" if search.num_samples else ""
    progress = f"{finished}{of} trial{'s' if (search.num_samples or finished) != 1 else ''} " \
               "finished"
    if allow_running:
        return (f"note: search {search.name!r} is still running (run {search.run_id}): built "
                f"from the {progress} so far")
    storage = search.search_path.rsplit("/", 1)[0] if "/" in search.search_path else ""
    holder, held = holder_of(storage, search.name, tracking_uri) if storage else (None, None)
    if held is False:
        last = f" (its last process, {holder.describe()}, is gone)" if holder else ""
        raise EnsembleError(
            f"search {search.name!r} (run {search.run_id}) is marked RUNNING but no search "
            f"process holds it{last}; {progress}. `ecgtune search --resume --name "
            f"{search.name}` completes it, or pass --allow-running to build from those"
        )
    who = f", {holder.describe()}" if held and holder else ""
    since = f", started {search.started}" if search.started and not who else ""
    raise EnsembleError(
        f"search {search.name!r} is still running (run {search.run_id}{who}{since}; "
        f"{progress} so far); wait for it to end, or pass --allow-running to build from the "
        "finished trials"
    )


def rank_trials(client: Any, search: SearchRef, top_k: int) -> list[TrialRef]:
    """The top ``top_k`` FINISHED trial runs with a best checkpoint, best first (ties: the
    earlier trial)."""
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    usable = []
    for run in tracking.trial_runs(client, search.experiment_id, search.run_id):
        checkpoint = run.data.tags.get(tracking.TAG_BEST_CHECKPOINT)
        score = run.data.metrics.get(K.BEST_OBJECTIVE)
        if run.info.status != "FINISHED" or not checkpoint or score is None:
            continue
        if not math.isfinite(score):
            continue
        usable.append((run, checkpoint, float(score)))
    if not usable:
        raise SearchNotFoundError(
            f"search {search.name!r} (run {search.run_id}) has no finished trial with a "
            "checkpoint; wait for the search to finish or `ecgtune search --resume` it"
        )
    usable.sort(key=lambda item: -item[2])  # stable: creation order breaks ties
    return [
        TrialRef(rank, run.info.run_id, run.info.run_name or "",
                 run.data.tags.get(tracking.TAG_TRIAL_ID, ""), score, checkpoint)
        for rank, (run, checkpoint, score) in enumerate(usable[:top_k], start=1)
    ]


@contextlib.contextmanager
def resolve_checkpoint(
    trial: TrialRef, search_name: str, storage: str | None = None
) -> Iterator[Path]:
    """A local directory holding the trial's checkpoint (downloaded for URIs, removed after)."""
    with contextlib.ExitStack() as stack:
        try:
            directory = stack.enter_context(
                checkpoint.local_checkpoint(trial.checkpoint, search_name, storage))
        except CheckpointError as exc:
            raise MemberError(f"{trial.label}: {exc}") from None
        yield directory


def load_member(
    trial: TrialRef,
    search_name: str,
    storage: str | None = None,
    label_names: list[str] | None = None,
) -> Member:
    """Load one member's model (weights_only), its trial config and its validation thresholds."""
    with resolve_checkpoint(trial, search_name, storage) as directory:
        try:
            saved = checkpoint.read_checkpoint(directory, label_names)
        except CheckpointError as exc:
            raise MemberError(f"{trial.label}: {exc}") from None
        checkpoint_dir = str(directory) if "://" not in trial.checkpoint else trial.checkpoint
    meta, flat = saved.meta, saved.flat_config
    try:
        spec = MemberSpec(
            name=trial.member_name,
            config=meta.config,
            num_labels=meta.num_labels,
            label_groups=tuple(tuple(g) for g in meta.label_groups),
            crop_len=int(flat["train.crop_len"]),
            normalization=str(flat["train.normalization"]),
            group_names=tuple(meta.group_names),
        )
    except KeyError as exc:
        raise MemberError(
            f"{trial.label}: {checkpoint.TRIAL_CONFIG_FILE} has no {exc.args[0]}") from None
    except ValueError as exc:
        raise MemberError(f"{trial.label}: {exc}") from None
    return Member(spec, saved.model, trial, checkpoint_dir, saved.thresholds, flat)
