"""`ecgtune prep`: WFDB records -> quality gates -> folds -> Parquet shards + manifest.

Pass 1 reads every header for names, duplicates and labels, so folds and the shard plan are
fixed before any signal is read. Pass 2 (worker processes, one planned shard per task) parses
each header fully, reads, checks and preprocesses the signals, and writes the shard atomically,
preceded by a sidecar `.prep/<shard>.json` (its quarantine rows and train-fold sums) so a
re-run keeps every shard whose plan and checksum still match. Records quarantined in either
pass end up in quarantine.csv; records kept with a warning (flat leads) are listed in
warnings.csv. Both use `data_prep.validation.validate_record`, the gate `predict` uses too.
`manifest.json` is written last; its presence means the output is complete.

Worker processes end when this process does, however it ends (`_watch_parent`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .console import expect_disk_use
from .errors import REASON_CODES, WARNING_CODES, PrepError, RecordError
from .folds import EXTERNAL_FOLD, FOLD_ROLES, N_FOLDS, assign_folds, folds_manifest
from .labels import LabelMap, get_label_map
from .preprocess import preprocessing_spec
from .provenance import count_databases, is_synthetic, record_database, record_source
from .quality import no_scored_label_warning
from .reader import (
    STANDARD_LEADS,
    header_comments,
    parse_comments,
    parse_header,
    scan_relative,
)
from .shards import (
    MANIFEST_NAME,
    ZSTD_LEVEL,
    atomic_write_bytes,
    build_table,
    sha256_file,
    write_shard,
)
from .validation import CheckedRecord, validate_record

__all__ = ["MANIFEST_VERSION", "UNLABELLED_POLICIES", "PrepResult", "format_summary", "prepare"]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
# Bump when pass 2's output for the same plan changes, so old sidecars are not trusted.
_SHARD_FORMAT = 4
_SIDECAR_DIR = ".prep"
# Called with the number of shards finished after each one. None in use; a test installs a
# function here (in the process it runs prep in) to stop prep at a known point, e.g. to crash
# it after N shards and check the resume, instead of racing a kill against the shards.
after_shard: Callable[[int], None] | None = None
QUARANTINE_FILE = "quarantine.csv"  # record,reason: every record not written
WARNINGS_FILE = "warnings.csv"  # record,warning: records written with a quality warning
UNLABELLED_POLICIES = ("keep", "drop")
_TRAIN_FOLDS = frozenset(FOLD_ROLES["train"])


@dataclass(frozen=True)
class _Planned:
    """One record that passed pass 1, as handed to a worker."""

    index: int  # position in the sorted scan
    name: str
    source: str  # header path relative to the input root
    text: str  # the header text; pass 2 parses it (cheaper than pickling parsed objects)
    labels: bytes  # uint8 row
    fold: int
    digest: str  # of the header bytes: a changed header invalidates the shard
    site: str = "unknown"  # the record's source (`provenance.record_source`): shard column


@dataclass(frozen=True)
class _ShardTask:
    name: str  # e.g. "fold3-0001"
    fold: int
    plan: str  # hash of everything that determines the shard's content
    records: tuple[_Planned, ...]
    input_dir: str
    output_dir: str
    fs: int
    seconds: float
    gain: float
    zstd_level: int


@dataclass
class PrepResult:
    manifest: dict[str, Any]
    output_dir: Path
    shards_written: int
    shards_kept: int
    seconds: float
    # CPU time of this process and its workers: unlike wall time, not inflated by other load.
    cpu_seconds: float = 0.0
    quarantine: list[tuple[str, str]] = field(repr=False, default_factory=list)
    warnings: list[tuple[str, str]] = field(repr=False, default_factory=list)

    @property
    def records_per_second(self) -> float:
        return self.manifest["records_in"] / self.seconds if self.seconds else math.inf


def _read_headers(args: tuple[str, list[tuple[int, str]]]) -> list[tuple[Any, ...]]:
    """Pass 1 for a chunk of headers (runs in a worker): (index, text, dx codes, digest) or
    (index, None, quarantine reason). Only the comments are parsed here, for the labels; the
    full parse (and its quarantine reasons) happens once, in pass 2."""
    root, items = args
    out: list[tuple[Any, ...]] = []
    for index, source in items:
        try:
            with open(os.path.join(root, source), "rb") as f:
                data = f.read()
        except OSError as exc:
            out.append((index, None, f"unreadable: {exc.strerror or exc}"))
            continue
        if b"\x00" in data:
            out.append((index, None, "unparsable_header: binary data in header"))
            continue
        text = data.decode("utf-8", errors="replace")
        try:
            _, _, dx_codes = parse_comments(header_comments(text))
        except RecordError as exc:
            out.append((index, None, exc.reason))
            continue
        out.append((index, text, dx_codes, hashlib.blake2b(data, digest_size=12).hexdigest()))
    return out


def _stem(source: str) -> str:
    return source.rsplit("/", 1)[-1].removesuffix(".hea")


def _timed(fn: Any, item: Any) -> tuple[Any, float]:
    start = time.process_time()
    return fn(item), time.process_time() - start


def _share_work(
    fn: Any, items: list[Any], pool: _LazyPool | None, worker_cpu: list[float]
) -> list[Any]:
    """[fn(x) for x in items], computed by this process from the end of the list and by the
    workers from the front, so the parent is useful while the pool is still starting. The
    workers' CPU seconds are appended to worker_cpu."""
    results: list[Any] = [None] * len(items)
    bounds = [0, len(items)]  # unclaimed items: [bounds[0], bounds[1])
    lock = threading.Lock()

    def claim(front: bool) -> int | None:
        with lock:
            if bounds[0] >= bounds[1]:
                return None
            if front:
                bounds[0] += 1
                return bounds[0] - 1
            bounds[1] -= 1
            return bounds[1]

    def feed() -> None:  # keeps one worker busy
        assert pool is not None  # only started with a pool
        executor = pool.available()
        if executor is None:
            return  # no workers: this process does it all
        while (i := claim(front=True)) is not None:
            results[i], cpu = executor.submit(_timed, fn, items[i]).result()
            worker_cpu.append(cpu)

    feeders = [threading.Thread(target=feed, daemon=True) for _ in range(pool.n if pool else 0)]
    for t in feeders:
        t.start()
    while (i := claim(front=False)) is not None:
        results[i] = fn(items[i])
    for t in feeders:
        t.join()
    if any(r is None for r in results):  # a worker failed: redo its share here
        results = [fn(x) if r is None else r for x, r in zip(items, results, strict=True)]
    return results


def _scan(
    input_dir: Path, label_map: LabelMap, pool: _LazyPool | None, worker_cpu: list[float],
    unlabelled: str = "keep",
) -> tuple[list[_Planned], dict[int, tuple[str, str]], dict[int, str], int]:
    """Pass 1: (planned records without folds, quarantine by scan index, pass-1 warnings by
    scan index, records_in)."""
    sources = scan_relative(input_dir)
    if not sources:
        raise PrepError(f"no WFDB headers (*.hea) found under {input_dir}")
    quarantine: dict[int, tuple[str, str]] = {}
    first_seen: dict[str, str] = {}
    todo: list[tuple[int, str]] = []
    for index, source in enumerate(sources):
        name = _stem(source)
        if name in first_seen:
            quarantine[index] = (name, f"duplicate_record: same name as {first_seen[name]}")
        else:
            first_seen[name] = source
            todo.append((index, source))
    chunks = [(str(input_dir), todo[i : i + 250]) for i in range(0, len(todo), 250)]
    parsed = _share_work(_read_headers, chunks, pool, worker_cpu)
    planned: list[_Planned] = []
    warnings: dict[int, str] = {}
    for index, text, *info in (item for chunk in parsed for item in chunk):
        source = sources[index]
        if text is None:
            quarantine[index] = (_stem(source), info[0])
            continue
        dx_codes, digest = info
        labels = label_map.encode(dx_codes)
        if not labels.any():
            warning = no_scored_label_warning(dx_codes)
            if unlabelled == "drop":
                detail = warning.partition(":")[2] or "no Dx codes"
                quarantine[index] = (_stem(source),
                                     f"dropped_unlabelled: {detail} (--unlabelled drop)")
                continue
            warnings[index] = warning
        planned.append(_Planned(
            index=index, name=_stem(source), source=source, text=text,
            labels=labels.tobytes(), fold=-1, digest=digest,
            site=record_source(_stem(source), header_comments(text)),
        ))
    return planned, quarantine, warnings, len(sources)


def _plan_shards(
    planned: list[_Planned], shard_size: int, settings: dict[str, Any], input_dir: Path,
    output_dir: Path, zstd_level: int,
) -> list[_ShardTask]:
    """Group records by fold, then cut each fold into shards of at most shard_size records."""
    tasks: list[_ShardTask] = []
    settings_key = json.dumps(settings, sort_keys=True)
    for fold in range(EXTERNAL_FOLD + 1):
        members = [p for p in planned if p.fold == fold]
        n_parts = max(1, math.ceil(len(members) / shard_size)) if members else 0
        for part in range(n_parts):
            chunk = tuple(members[part * shard_size : (part + 1) * shard_size])
            h = hashlib.sha256(settings_key.encode())
            for p in chunk:
                h.update(f"\n{p.name}\t{p.source}\t{p.digest}\t{p.labels.hex()}\t{p.fold}"
                         f"\t{p.site}".encode())
            tasks.append(_ShardTask(
                name=f"fold{fold}-{part:04d}", fold=fold, plan=h.hexdigest(), records=chunk,
                input_dir=str(input_dir), output_dir=str(output_dir), fs=settings["fs"],
                seconds=settings["seconds"], gain=settings["gain"], zstd_level=zstd_level,
            ))
    return tasks


def _sidecar_path(output_dir: Path, shard: str) -> Path:
    return output_dir / _SIDECAR_DIR / f"{shard}.json"


def _load_valid_sidecar(task: _ShardTask) -> dict[str, Any] | None:
    """The sidecar of a finished shard that matches this plan and verifies, else None."""
    out = Path(task.output_dir)
    try:
        side = json.loads(_sidecar_path(out, task.name).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if side.get("plan") != task.plan or side.get("format") != _SHARD_FORMAT:
        return None
    if side["rows"] == 0:
        return side
    shard_path = out / side["file"]
    if not shard_path.exists():
        return None
    if sha256_file(shard_path) != side["sha256"]:
        log.warning("%s: checksum mismatch, rewriting", side["file"])
        return None
    return side


def _run_shard(task: _ShardTask) -> dict[str, Any]:
    """Pass 2 for one shard (runs in a worker process). Returns the shard's sidecar."""
    side = _load_valid_sidecar(task)
    if side is not None:
        return {**side, "kept": True}
    n_samples = round(task.fs * task.seconds)
    signals = np.empty((len(task.records), 12, n_samples), dtype=np.int16)
    kept: list[tuple[_Planned, CheckedRecord]] = []
    quarantine: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for rec in task.records:
        try:
            header = parse_header(rec.text, name=rec.name)
            checked = validate_record(
                os.path.join(task.input_dir, rec.source), task.fs, task.seconds, task.gain,
                header=header, source=rec.source,
            )
        except RecordError as exc:  # validate_record turns any failure of its own into one
            quarantine.append((rec.name, exc.reason))
            continue
        except Exception as exc:  # one bad record never stops the run (header parsing too)
            quarantine.append((rec.name, f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        signals[len(kept)] = checked.signal
        kept.append((rec, checked))
        warnings += [(rec.name, w) for w in checked.warnings]
    n = len(kept)
    signals = signals[:n]
    sums, sumsq = _lead_sums(signals) if task.fold in _TRAIN_FOLDS else ([0] * 12, [0] * 12)
    side = {
        "format": _SHARD_FORMAT,
        "shard": task.name,
        "plan": task.plan,
        "fold": task.fold,
        "file": f"shards/{task.name}.parquet" if n else None,
        "rows": n,
        "sha256": None,
        "bytes": 0,
        "quarantine": quarantine,
        "warnings": warnings,
        "sum": sums,
        "sumsq": sumsq,
        "samples": n * n_samples if task.fold in _TRAIN_FOLDS else 0,
    }
    out = Path(task.output_dir)
    if n == 0:
        atomic_write_bytes(_sidecar_path(out, task.name), json.dumps(side).encode())
        return {**side, "kept": False}
    table = build_table(
        records=[r.name for r, _ in kept],
        signals=signals,
        labels=np.frombuffer(b"".join(r.labels for r, _ in kept), np.uint8).reshape(n, -1),
        folds=[r.fold for r, _ in kept],
        ages=[c.age for _, c in kept],
        sexes=[c.sex for _, c in kept],
        dx_codes=[c.dx_codes for _, c in kept],
        sources=[r.site for r, _ in kept],
        lengths=[c.length for _, c in kept],
        paths=[r.source for r, _ in kept],
    )

    def write_sidecar(sha: str, size: int) -> None:
        side["sha256"], side["bytes"] = sha, size
        atomic_write_bytes(_sidecar_path(out, task.name), json.dumps(side).encode())

    write_shard(table, out / side["file"], task.zstd_level, before_rename=write_sidecar)
    return {**side, "kept": False}


def _lead_sums(signals: np.ndarray) -> tuple[list[int], list[int]]:
    """Exact per-lead sum and sum of squares (Python ints) for the normalisation statistics."""
    # int64 accumulation straight from int16: exact, and no widened copy of the shard.
    sums = signals.sum(axis=(0, 2), dtype=np.int64)
    sumsq = np.einsum("nls,nls->l", signals, signals, dtype=np.int64)
    return sums.tolist(), sumsq.tolist()


def _normalization(sides: list[dict[str, Any]], gain: float) -> dict[str, Any]:
    train = [s for s in sides if s["fold"] in _TRAIN_FOLDS and s["rows"]]
    count = sum(s["samples"] for s in train)
    mean, std = [0.0] * 12, [1.0] * 12
    if count:
        total = [sum(s["sum"][j] for s in train) for j in range(12)]
        total_sq = [sum(s["sumsq"][j] for s in train) for j in range(12)]
        mean = [t / count / gain for t in total]
        # Integer sums keep this exact; the variance formula is safe at these magnitudes.
        var = [(q * count - t * t) / (count * count) for t, q in zip(total, total_sq, strict=True)]
        std = [max(math.sqrt(max(v, 0.0)), 1e-12) / gain for v in var]
    return {
        "units": "mV",
        "leads": list(STANDARD_LEADS),
        "mean": [round(m, 9) for m in mean],
        "std": [round(s, 9) if count else 1.0 for s in std],
        "folds": sorted(_TRAIN_FOLDS),
        "records": sum(s["rows"] for s in train),
    }


def _watch_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker as soon as the prep process `parent_pid` ends, however
    it ends (SIGKILL and the OOM killer included).

    Nothing else would: the workers are children of multiprocessing's fork server, not of prep,
    and each holds the fork server's "alive" pipe and the task queue open, so neither the fork
    server nor the workers notice prep is gone; a killed prep left them running for good.
    PR_SET_PDEATHSIG or polling os.getppid() watch the direct parent, the fork server, which
    outlives prep for that same reason, so the worker watches prep itself."""
    threading.Thread(target=_exit_when_gone, args=(parent_pid,), daemon=True,
                     name="prep-parent-watch").start()


def _exit_when_gone(pid: int) -> None:
    fd: int | None = None
    try:
        # Linux >= 5.3: the kernel marks a pidfd readable when the process exits. No polling,
        # and no PID-reuse race (the fd names this process, not a number).
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # prep is already gone
    except (AttributeError, OSError):  # another OS, an old kernel, or a seccomp filter
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(1)
    import psutil  # portable fallback: poll (psutil's create time guards against PID reuse)

    try:
        parent = psutil.Process(pid)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.5)
    except psutil.Error:
        pass
    os._exit(1)


class _LazyPool:
    """Worker processes started in a background thread: creating a forkserver pool blocks until
    the server has imported numpy and pyarrow, and pass 1 need not wait for that."""

    def __init__(self, workers: int) -> None:
        self.n = workers
        self._ready: Future[ProcessPoolExecutor] = Future()
        self._warned, self._warn_lock = False, threading.Lock()
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self) -> None:
        import multiprocessing as mp

        try:
            # forkserver, not fork: numpy and pyarrow already run threads here, and fork with
            # threads can deadlock the child. The preload imports this module once in the server.
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            pool = ProcessPoolExecutor(
                max_workers=self.n, mp_context=ctx, initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
            for f in [pool.submit(int) for _ in range(self.n)]:  # spawn all workers now
                f.result()
            self._ready.set_result(pool)
        except BaseException as exc:
            self._ready.set_exception(exc)

    def get(self) -> ProcessPoolExecutor:
        return self._ready.result()

    def available(self) -> ProcessPoolExecutor | None:
        """The pool, or None (logged once) when worker processes could not start."""
        try:
            return self.get()
        except Exception as exc:
            with self._warn_lock:
                if not self._warned:
                    log.warning("worker processes unavailable (%s); working in this process", exc)
                    self._warned = True
            return None

    def shutdown(self) -> None:
        try:
            pool = self.get()
        except Exception:
            return
        pool.shutdown(wait=True, cancel_futures=True)


def _iter_results(
    tasks: list[_ShardTask], pool: _LazyPool | None, worker_cpu: list[float]
) -> Iterator[dict[str, Any]]:
    executor = pool.available() if pool is not None else None
    if executor is None:
        for task in tasks:
            yield _run_shard(task)
        return
    pending = {executor.submit(_timed, _run_shard, t) for t in tasks}
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            try:
                side, cpu = fut.result()
            except BrokenProcessPool:
                raise PrepError(
                    "a worker process died (out of memory?); finished shards are kept, "
                    "re-run the same command to complete the rest"
                ) from None
            worker_cpu.append(cpu)
            yield side


def prepare(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    labels: str | LabelMap = "seed20",
    workers: int = 2,
    shard_size: int = 1000,
    fs: int = 500,
    seconds: float = 10,
    gain: float = 1000,
    seed: int = 0,
    zstd_level: int = ZSTD_LEVEL,
    progress: bool = True,
    unlabelled: str = "keep",
    holdout_sources: tuple[str, ...] | list[str] = (),
) -> PrepResult:
    """Prepare WFDB records under `input_dir` into shards under `output_dir` (resumable).

    `unlabelled`: "keep" writes records without a scored label (an all-negative row, warned
    `no_scored_label`), "drop" quarantines them with that reason. `holdout_sources`: sources
    (the shards' `source` values) whose records all go to the `external` fold, outside the
    stratified folds, so that no role that trains, validates or calibrates can read them."""
    t0 = time.perf_counter()
    # One spelling per setting (10 and 10.0 alike), so plans and manifests compare equal.
    fs, seconds, gain = int(fs), float(seconds), float(gain)
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not input_dir.is_dir():
        raise PrepError(f"input directory {input_dir} does not exist")
    if shard_size < 1:
        raise PrepError("--shard-size must be at least 1")
    if unlabelled not in UNLABELLED_POLICIES:
        raise PrepError(f"--unlabelled must be one of {', '.join(UNLABELLED_POLICIES)}, "
                        f"got {unlabelled!r}")
    if fs <= 0 or seconds <= 0 or round(fs * seconds) < 1:
        raise PrepError("--fs and --seconds must be positive")
    holdout = tuple(dict.fromkeys(str(h) for h in holdout_sources))
    label_map = get_label_map(labels) if isinstance(labels, str) else labels
    (output_dir / "shards").mkdir(parents=True, exist_ok=True)
    (output_dir / _SIDECAR_DIR).mkdir(exist_ok=True)
    previous = _read_manifest_or_none(output_dir / MANIFEST_NAME)
    # Until the new manifest is written the directory is "in progress" for every reader.
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)

    pool = _LazyPool(workers) if workers > 1 else None
    try:
        result = _prepare(
            input_dir, output_dir, label_map, pool, shard_size, fs, seconds, gain, seed,
            zstd_level, progress, t0, unlabelled, holdout,
        )
    finally:
        if pool is not None:
            pool.shutdown()
    if previous is not None and _same_content(previous, result.manifest):
        # Nothing changed: keep the manifest byte for byte, so that its checksum (recorded by
        # every search on these shards) still matches.
        result.manifest["created"] = previous["created"]
        _write_manifest(output_dir, result.manifest)
    return result


def _read_manifest_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "created"} == {
        k: v for k, v in b.items() if k != "created"
    }


def _write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(output_dir / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())


def _prepare(
    input_dir: Path, output_dir: Path, label_map: LabelMap, pool: _LazyPool | None,
    shard_size: int, fs: int, seconds: float, gain: float, seed: int, zstd_level: int,
    progress: bool, t0: float, unlabelled: str, holdout: tuple[str, ...] = (),
) -> PrepResult:
    """Pass 1 (scan headers), folds and the shard plan, pass 2 (shards), then the manifest."""
    worker_cpu: list[float] = []
    cpu0 = time.process_time()
    planned, quarantine, label_warnings, records_in = _scan(
        input_dir, label_map, pool, worker_cpu, unlabelled)
    # For the line a full disk ends prep with: int16 signals at about the zstd ratio
    # measured on the synthetic database (5.4 GB raw -> 3.6 GB of shards).
    expect_disk_use(len(planned) * 12 * round(fs * seconds) * 2 * 0.67, output_dir)
    log.debug("pass 1: %d headers in %.2f s", records_in, time.perf_counter() - t0)
    _check_holdout(holdout, planned)
    planned = _with_folds(planned, len(label_map), seed, holdout)
    settings = {
        "format": _SHARD_FORMAT, "fs": fs, "seconds": seconds, "gain": gain,
        "labels": label_map.to_manifest(), "zstd_level": zstd_level,
    }
    tasks = _plan_shards(planned, shard_size, settings, input_dir, output_dir, zstd_level)
    log.debug("folds and plan: %d shards at %.2f s", len(tasks), time.perf_counter() - t0)
    sides = _run_shards(tasks, pool, worker_cpu, records_in, len(quarantine), progress)
    log.debug("pass 2 done at %.2f s", time.perf_counter() - t0)
    shard_sides = [sides[t.name] for t in tasks]
    by_name = {p.name: p for p in planned}
    sources_by_index = {p.index: p.name for p in planned}
    for side in shard_sides:
        for name, reason in side["quarantine"]:
            quarantine[by_name[name].index] = (name, reason)
    _remove_stale(output_dir, {t.name for t in tasks})
    rows = [quarantine[i] for i in sorted(quarantine)]
    _write_csv(output_dir / QUARANTINE_FILE, ("record", "reason"), rows)
    # Records written with a warning, in scan order like the quarantine.
    flagged = sorted([(by_name[name].index, name, w) for side in shard_sides
                      for name, w in side["warnings"]]
                     + [(i, sources_by_index[i], w) for i, w in label_warnings.items()
                        if i not in quarantine])
    warning_rows = [(name, w) for _, name, w in flagged]
    _write_csv(output_dir / WARNINGS_FILE, ("record", "warning"), warning_rows)
    written = [p for p in planned if p.index not in quarantine]
    manifest = _manifest(written, rows, warning_rows, shard_sides, records_in, label_map,
                         preprocessing_spec(fs, seconds, gain), gain, seed, holdout)
    _write_manifest(output_dir, manifest)
    kept = sum(1 for s in shard_sides if s.get("kept"))
    cpu = time.process_time() - cpu0 + sum(worker_cpu)
    return PrepResult(manifest, output_dir, len(shard_sides) - kept, kept,
                      time.perf_counter() - t0, cpu, rows, warning_rows)


def _check_holdout(holdout: tuple[str, ...], planned: list[_Planned]) -> None:
    """Every held-out source must have records, and some source must stay for training."""
    if not holdout:
        return
    found = count_databases(p.site for p in planned)
    unknown = [h for h in holdout if h not in found]
    if unknown:
        raise PrepError(f"--holdout-source {' '.join(unknown)}: no record has that source; "
                        f"sources found: {', '.join(f'{k} ({v})' for k, v in found.items())}")
    if set(found) <= set(holdout):
        raise PrepError(f"--holdout-source {' '.join(holdout)} holds out every source: no "
                        "records would be left to train, validate or calibrate on")


def _with_folds(planned: list[_Planned], n_labels: int, seed: int,
                holdout: tuple[str, ...] = ()) -> list[_Planned]:
    """The planned records with their fold: stratified over the folds with roles, except the
    held-out sources' records, which all go to the external fold."""
    held = np.array([p.site in holdout for p in planned], dtype=bool)
    label_rows = np.frombuffer(b"".join(p.labels for p in planned), np.uint8).reshape(
        len(planned), n_labels
    )
    folds = np.full(len(planned), EXTERNAL_FOLD, dtype=np.int64)
    folds[~held] = assign_folds(label_rows[~held], N_FOLDS, seed)
    return [replace(p, fold=int(f)) for p, f in zip(planned, folds, strict=True)]


def _run_shards(tasks: list[_ShardTask], pool: _LazyPool | None, worker_cpu: list[float],
                records_in: int, quarantined: int, progress: bool) -> dict[str, dict[str, Any]]:
    """Pass 2: every shard written (or kept), shard name -> its sidecar."""
    from tqdm import tqdm

    sides: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=records_in, unit="rec", desc="prep", disable=not progress, smoothing=0.1)
    bar.update(quarantined)
    try:
        for side in _iter_results(tasks, pool, worker_cpu):
            sides[side["shard"]] = side
            bar.update(side["rows"] + len(side["quarantine"]))
            if after_shard is not None:
                after_shard(len(sides))
    finally:
        bar.close()
    return sides


def _manifest(written: list[_Planned], rows: list[tuple[str, str]],
              warning_rows: list[tuple[str, str]], shard_sides: list[dict[str, Any]],
              records_in: int, label_map: LabelMap, spec: dict[str, Any], gain: float,
              seed: int, holdout: tuple[str, ...] = ()) -> dict[str, Any]:
    """manifest.json: counts, reasons, provenance, folds, shards and the signal layout."""
    w_labels = np.frombuffer(b"".join(p.labels for p in written), np.uint8).reshape(
        len(written), len(label_map)
    )
    w_folds = np.array([p.fold for p in written], dtype=np.int64)
    reasons = {code: 0 for code in REASON_CODES}
    for _, reason in rows:
        reasons[reason.split(":", 1)[0]] += 1
    warning_counts = {code: 0 for code in WARNING_CODES}
    for _, w in warning_rows:
        warning_counts[w.split(":", 1)[0]] += 1
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "records_in": records_in,
        "records_written": len(written),
        "records_quarantined": len(rows),
        "quarantine_reasons": reasons,
        "quality_warnings": warning_counts,
        "databases": count_databases(
            record_database(p.name, header_comments(p.text)) for p in written
        ),
        # The shards' `source` column counted: the sites folds and objectives group by.
        "sources": count_databases(p.site for p in written),
        "label_map": label_map.name,
        "labels": label_map.to_manifest(),
        "preprocessing": spec,
        "normalization": _normalization(shard_sides, gain),
        "folds": folds_manifest(w_labels, w_folds, label_map.names, seed,
                                holdout_sources=holdout),
        "shards": [
            {"file": s["file"], "rows": s["rows"], "sha256": s["sha256"], "bytes": s["bytes"],
             "folds": [s["fold"]]}
            for s in shard_sides
            if s["rows"]
        ],
        "signal": {"column": "signal", "dtype": "<i2", "shape": [12, spec["n_samples"]],
                   "layout": "lead-major"},
    }
    assert manifest["records_in"] == manifest["records_written"] + manifest["records_quarantined"]
    return manifest


def _write_csv(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _remove_stale(output_dir: Path, shard_names: set[str]) -> None:
    """Delete shards and sidecars of older plans and temporaries of interrupted runs."""
    for path in (output_dir / "shards").iterdir():
        if path.name.endswith(".tmp") or (
            path.suffix == ".parquet" and path.stem not in shard_names
        ):
            path.unlink(missing_ok=True)
    for path in (output_dir / _SIDECAR_DIR).iterdir():
        if path.name.endswith(".tmp") or (path.suffix == ".json" and path.stem not in shard_names):
            path.unlink(missing_ok=True)


def format_summary(manifest: dict[str, Any]) -> str:
    """Plain-text summary: counts, quarantine reasons, label positives per fold."""
    lines = [
        f"records in {manifest['records_in']}, written {manifest['records_written']}, "
        f"quarantined {manifest['records_quarantined']}, shards {len(manifest['shards'])}"
    ]
    databases = manifest.get("databases", {})
    if databases:
        lines.append("source databases: " + ", ".join(f"{k} {v}" for k, v in databases.items())
                     + (" (synthetic: a model trained on these gives no diagnosis)"
                        if is_synthetic(databases) else ""))
    sources = manifest.get("sources", {})
    if len(sources) > 1 or set(sources) - set(databases):
        held = set((manifest.get("folds") or {}).get("holdout_sources", ()))
        lines.append("sources: " + ", ".join(
            f"{k} {v}" + (" (held out: external fold)" if k in held else "")
            for k, v in sources.items()))
    reasons = {k: v for k, v in manifest["quarantine_reasons"].items() if v}
    if reasons:
        lines.append("quarantined by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    warned = {k: v for k, v in manifest.get("quality_warnings", {}).items() if v}
    if warned:
        lines.append(f"written with warnings ({WARNINGS_FILE}): "
                     + ", ".join(f"{k} {v}" for k, v in warned.items()))
    folds = manifest["folds"]
    n = folds["n"]
    roles = {f: role for role, fs in folds["roles"].items() for f in fs}
    width = max(6, *(len(name) for name in folds["counts"]))

    def row(label: str, cells: list[Any], total: Any = "") -> str:
        return f"{label:<{width}} " + " ".join(f"{c:>8}" for c in cells) + f" {total:>8}"

    lines += [
        "",
        row("fold", [f"{f}" for f in range(n)], "total"),
        row("role", [roles.get(f, "") for f in range(n)]),
        row("records", folds["records"], sum(folds["records"])),
    ]
    lines += [row(name, c, sum(c)) for name, c in folds["counts"].items()]
    return "\n".join(lines)
