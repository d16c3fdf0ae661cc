"""The in-memory dataset: shards -> one contiguous int16 array, plus the shared transforms.

`load_shards` reads the shards of the requested folds once, checksum-verified, into a single
(N, 12, n_samples) int16 array with rows sorted by fold, so any contiguous run of folds is a
zero-copy slice. `ECGDataset` is a frozen dataclass of numpy arrays and plain dicts: it pickles
cheaply into the Ray object store (arrays travel out-of-band) and works on the read-only arrays
Ray hands back; `save_memmap`/`open_memmap` give the memory-mapped alternative, and a
memory-mapped dataset pickles as a reference to its directory, so every process maps the same
pages instead of copying them.

`normalize` and `fixed_windows` are the transforms the batch loader and `ecgtune predict` share.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PrepError
from .labels import LabelMap
from .provenance import record_sources

__all__ = [
    "RECORD_STD_FLOOR_MV",
    "ECGDataset",
    "NormStats",
    "fixed_windows",
    "fold_counts",
    "load_shards",
    "manifest_label_map",
    "normalize",
    "record_window_starts",
    "to_millivolts",
    "window_starts",
]

# Per-record z-scoring divides by at least this (mV): a near-flat crop must not turn noise
# into unit-variance signal.
RECORD_STD_FLOOR_MV = 0.01
_ARRAYS = ("signals", "labels", "records", "folds", "age", "sex", "lengths", "sources")
# Arrays a dataset saved before they existed may lack (`open_memmap` fills them in).
_OPTIONAL_ARRAYS = frozenset({"lengths", "sources"})


@dataclass(frozen=True)
class NormStats:
    """Per-lead mean and std in mV (from the manifest: train folds 0-6)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> NormStats:
        norm = manifest["normalization"]
        return cls(np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32))


def to_millivolts(signals: np.ndarray, gain: float) -> np.ndarray:
    """int16 digital values -> float32 mV."""
    return np.multiply(signals, np.float32(1.0 / gain), dtype=np.float32)


def dataset_affine(stats: NormStats, gain: float, length: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), float32 (12, length): dataset normalisation is x * a + b for int16 x, i.e.
    (x / gain - mean) / std folded into one multiply and one add per sample. Full-length rows
    (not (12, 1) broadcasts) keep numpy's inner loops contiguous, which is ~30% faster."""
    std = stats.std.astype(np.float64)
    a = (1.0 / (gain * std)).astype(np.float32)[:, None]
    b = (-stats.mean.astype(np.float64) / std).astype(np.float32)[:, None]
    shape = (12, length)
    return np.ascontiguousarray(np.broadcast_to(a, shape)), np.ascontiguousarray(
        np.broadcast_to(b, shape)
    )


def standardize_records(x_mv: np.ndarray) -> np.ndarray:
    """In place: per-record, per-lead z-score over the last axis (std floored)."""
    mu = x_mv.mean(axis=-1, keepdims=True)
    sd = x_mv.std(axis=-1, keepdims=True)
    x_mv -= mu
    x_mv /= np.maximum(sd, np.float32(RECORD_STD_FLOOR_MV))
    return x_mv


def _affine(signals: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = signals.astype(np.float32)  # exact for int16
    x *= a
    x += b
    return x


def normalize(
    signals: np.ndarray, stats: NormStats | None, gain: float, mode: str = "dataset"
) -> np.ndarray:
    """int16 (..., 12, L) -> standardised float32, exactly as the batch loader feeds the model.

    "dataset": per-lead (x_mV - mean) / std with the manifest's train-fold statistics (keeps
    relative amplitudes, which LQV/LVH depend on); "record": per-record, per-lead z-score.
    """
    if mode == "dataset":
        if stats is None:
            raise ValueError("dataset normalisation needs NormStats")
        a, b = dataset_affine(stats, gain, signals.shape[-1])
        return _affine(signals, a, b)
    if mode == "record":
        return standardize_records(to_millivolts(signals, gain))
    raise ValueError(f"unknown normalization {mode!r}; valid: 'dataset', 'record'")


def spread_starts(span: np.ndarray | int, n_windows: int) -> np.ndarray:
    """Starts of `n_windows` windows spread evenly over 0..span (one window: span // 2), per
    span, shape (..., n_windows) int64.

    Integer arithmetic with ties to even, the exact rounding of k * span / (n_windows - 1):
    the ONNX graph computes the same integers in-graph, so both pick identical windows."""
    span = np.asarray(span, np.int64)[..., None]
    if n_windows == 1:
        return span // 2
    k = np.arange(n_windows, dtype=np.int64)
    d = n_windows - 1
    q, r = np.divmod(span * k, d)
    return q + ((2 * r > d) | ((2 * r == d) & (q % 2 == 1)))


def window_starts(n_samples: int, length: int, n_windows: int = 1) -> np.ndarray:
    """Evenly spaced window starts; one window is centred."""
    if length > n_samples:
        raise ValueError(f"window length {length} exceeds the signal length {n_samples}")
    if n_windows < 1:
        raise ValueError("n_windows must be >= 1")
    return spread_starts(n_samples - length, n_windows)


def record_window_starts(
    lengths: np.ndarray, n_samples: int, length: int, n_windows: int = 1
) -> np.ndarray:
    """(N, n_windows) starts of windows that cover each record's real signal only.

    `lengths`: samples of real signal per record (the rest of the `n_samples` row is padding).
    The windows are spread over the real part as `window_starts` spreads them over a full row
    (a full-length record gets exactly its starts); a record shorter than one window gets every
    window at its start, i.e. one window of its real signal followed by padding."""
    if length > n_samples:
        raise ValueError(f"window length {length} exceeds the signal length {n_samples}")
    if n_windows < 1:
        raise ValueError("n_windows must be >= 1")
    span = np.clip(np.asarray(lengths, np.int64), length, n_samples) - length
    return spread_starts(span, n_windows)


def fixed_windows(
    signals: np.ndarray, length: int, n_windows: int = 1, lengths: np.ndarray | None = None
) -> np.ndarray:
    """(..., 12, L) -> (..., n_windows, 12, length): evenly spaced windows (n=1: centred).

    With `lengths` (one per record of a (N, 12, L) batch), each record's windows cover its
    real signal only (`record_window_starts`)."""
    n_samples = signals.shape[-1]
    views = np.lib.stride_tricks.sliding_window_view(signals, length, axis=-1)
    # views: (..., 12, L-length+1, length)
    if lengths is None or bool(np.all(np.asarray(lengths) >= n_samples)):
        starts = window_starts(n_samples, length, n_windows)
        return np.moveaxis(views[..., starts, :], -2, -3).copy()
    if signals.ndim != 3 or len(lengths) != signals.shape[0]:
        raise ValueError("per-record lengths need (N, 12, L) signals and N lengths")
    starts = record_window_starts(lengths, n_samples, length, n_windows)  # (N, W)
    rows = np.arange(signals.shape[0])[:, None]
    # Advanced indices on axes 0 and 2 around a slice put their (N, W) shape first.
    return views[rows, :, starts]


@dataclass(frozen=True, eq=False)
class ECGDataset:
    """Records of some folds, rows sorted by fold. Arrays may be read-only or memory-mapped."""

    signals: np.ndarray  # (N, 12, n_samples) int16 at manifest gain
    labels: np.ndarray  # (N, C) uint8, label-map order
    records: np.ndarray  # (N,) str
    folds: np.ndarray  # (N,) int8
    age: np.ndarray  # (N,) float32, NaN when unknown
    sex: np.ndarray  # (N,) str, "" when unknown
    manifest: dict[str, Any]
    label_map: LabelMap
    # (N,) int32: samples of real signal at the start of each row, the rest being prep's zero
    # padding (records shorter than the stored window); None means every row is full length.
    lengths: np.ndarray = None  # type: ignore[assignment]  # set in __post_init__
    # (N,) str: each record's source (site), as `data_prep.provenance.record_sources` reads
    # the shards' `source` column; None means one unnamed source ("unknown") for every row.
    sources: np.ndarray = None  # type: ignore[assignment]  # set in __post_init__
    # (directory, first row, end row) when the arrays are rows of an open_memmap() directory.
    memmap_origin: tuple[str, int, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.lengths is None:
            full = np.full(self.signals.shape[0], self.signals.shape[-1], dtype=np.int32)
            object.__setattr__(self, "lengths", full)
        if self.sources is None:
            object.__setattr__(self, "sources", np.full(self.signals.shape[0], "unknown"))

    def __len__(self) -> int:
        return int(self.signals.shape[0])

    def __reduce__(self):
        if self.memmap_origin is not None:
            # Pickle a reference: every process maps the same file pages.
            return (_open_memmap_rows, self.memmap_origin)
        return (_rebuild, (tuple(getattr(self, name) for name in _ARRAYS), self.manifest))

    @property
    def n_labels(self) -> int:
        return int(self.labels.shape[1])

    @property
    def gain(self) -> float:
        return float(self.manifest["preprocessing"]["gain"])

    @property
    def fs(self) -> int:
        return int(self.manifest["preprocessing"]["fs"])

    @property
    def norm_stats(self) -> NormStats:
        return NormStats.from_manifest(self.manifest)

    def fold_slice(self, folds: Iterable[int]) -> slice | None:
        """The row range holding exactly `folds`, or None when they are not one run of rows."""
        wanted = {int(f) for f in folds}
        present = np.unique(self.folds)
        if not wanted or len(self.folds) == 0 or np.any(np.diff(self.folds) < 0):
            return None
        lo, hi = min(wanted), max(wanted)
        inside = present[(present >= lo) & (present <= hi)]
        if not set(inside.tolist()) <= wanted:
            return None
        start = int(np.searchsorted(self.folds, lo, "left"))
        stop = int(np.searchsorted(self.folds, hi, "right"))
        return slice(start, stop)

    def select(self, folds: Iterable[int]) -> ECGDataset:
        """Rows of `folds`: a view when they are contiguous (e.g. 0-6), else a copy."""
        folds = [int(f) for f in folds]
        rows = self.fold_slice(folds)
        if rows is not None:
            origin = None
            if self.memmap_origin is not None:
                d, first, _ = self.memmap_origin
                origin = (d, first + rows.start, first + rows.stop)
            return self._take(rows, origin)
        return self._take(np.flatnonzero(np.isin(self.folds, folds)), None)

    def _take(self, rows: slice | np.ndarray, origin: tuple[str, int, int] | None) -> ECGDataset:
        arrays = {name: getattr(self, name)[rows] for name in _ARRAYS}
        return replace(self, **arrays, memmap_origin=origin)

    def save_memmap(self, directory: str | os.PathLike[str]) -> Path:
        """Write the arrays as .npy files (+ dataset.json last) for open_memmap()."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "dataset.json").unlink(missing_ok=True)
        for name in _ARRAYS:
            np.save(directory / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
        meta = {"manifest": self.manifest, "rows": len(self)}
        tmp = directory / ".dataset.json.tmp"
        tmp.write_text(json.dumps(meta), "utf-8")
        os.replace(tmp, directory / "dataset.json")
        return directory

    @classmethod
    def open_memmap(cls, directory: str | os.PathLike[str]) -> ECGDataset:
        """Map a save_memmap() directory read-only (pages shared by every process)."""
        directory = Path(directory).resolve()
        meta_path = directory / "dataset.json"
        if not meta_path.exists():
            raise PrepError(f"{directory} is not a saved dataset (dataset.json missing)")
        meta = json.loads(meta_path.read_text("utf-8"))
        arrays: dict[str, Any] = {
            name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in _ARRAYS
            if (directory / f"{name}.npy").exists() or name not in _OPTIONAL_ARRAYS
        }
        manifest = meta["manifest"]
        return cls(
            **arrays, manifest=manifest, label_map=_label_map(manifest),
            memmap_origin=(str(directory), 0, int(meta["rows"])),
        )


def manifest_label_map(manifest: dict[str, Any]) -> LabelMap:
    """The label map a dataset's manifest records."""
    return LabelMap.from_manifest(manifest["labels"], name=manifest.get("label_map", "manifest"))


_label_map = manifest_label_map


def _rebuild(arrays: tuple[np.ndarray, ...], manifest: dict[str, Any]) -> ECGDataset:
    columns: dict[str, Any] = dict(zip(_ARRAYS, arrays, strict=True))
    return ECGDataset(
        **columns, manifest=manifest,
        label_map=_label_map(manifest),
    )


def _open_memmap_rows(directory: str, start: int, stop: int) -> ECGDataset:
    ds = ECGDataset.open_memmap(directory)
    if (start, stop) == (0, len(ds)):
        return ds
    return ds._take(slice(start, stop), (directory, start, stop))


def load_shards(
    data_dir: str | os.PathLike[str],
    folds: Sequence[int] | None = None,
    verify: bool = True,
    threads: int | None = None,
) -> ECGDataset:
    """Read the shards holding `folds` (default: all) into one ECGDataset, rows sorted by fold.

    With `verify`, each shard's sha256 is checked against the manifest (ShardChecksumError
    naming the file on mismatch) from the same bytes that are then decoded.
    """
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .errors import ShardChecksumError
    from .shards import read_manifest, signals_from_table

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    n_folds = int(manifest["folds"]["n"])
    wanted = set(range(n_folds)) if folds is None else {int(f) for f in folds}
    if not wanted <= set(range(n_folds)):
        raise PrepError(f"folds must be within 0..{n_folds - 1}, got {sorted(wanted)}")
    shards = sorted(
        (s for s in manifest["shards"] if wanted & set(s["folds"])),
        key=lambda s: (min(s["folds"]), s["file"]),
    )
    n_samples = int(manifest["preprocessing"]["n_samples"])
    n_labels = len(manifest["labels"])

    def fold_mask(table: Any) -> np.ndarray:
        return np.isin(table.column("fold").to_numpy(), sorted(wanted))

    # Rows per shard up front, so each thread decodes straight into its slice of one array.
    counts = []
    for s in shards:
        if set(s["folds"]) <= wanted:
            counts.append(int(s["rows"]))
        else:  # a shard spanning wanted and unwanted folds (not written by our prep)
            folds_only = pq.read_table(data_dir / s["file"], columns=["fold"])
            counts.append(int(fold_mask(folds_only).sum()))
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    signals = np.empty((int(offsets[-1]), 12, n_samples), dtype=np.int16)

    def read_one(k: int) -> dict[str, np.ndarray]:
        s = shards[k]
        try:
            data = (data_dir / s["file"]).read_bytes()
        except FileNotFoundError:
            raise ShardChecksumError(s["file"], "file is missing") from None
        # Hash the bytes that are decoded: one read of the file serves both.
        if verify and hashlib.sha256(data).hexdigest() != s["sha256"]:
            raise ShardChecksumError(s["file"], "sha256 does not match the manifest")
        table = pq.read_table(pa.BufferReader(data), use_threads=False)  # threads are ours
        if not set(s["folds"]) <= wanted:
            table = table.filter(pa.array(fold_mask(table)))
        if table.num_rows != counts[k]:
            raise ShardChecksumError(s["file"], f"{table.num_rows} rows, manifest says {counts[k]}")
        signals_from_table(table, out=signals[offsets[k] : offsets[k + 1]])
        return _columns(table, n_labels, n_samples)

    n_threads = threads or min(4, os.cpu_count() or 1, max(len(shards), 1))
    with ThreadPoolExecutor(n_threads) as pool:  # decompression and hashing release the GIL
        parts = list(pool.map(read_one, range(len(shards))))
    cols: dict[str, Any]
    if parts:
        cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    else:
        cols = {
            "labels": np.zeros((0, n_labels), np.uint8), "records": np.array([], dtype=str),
            "folds": np.zeros(0, np.int8), "age": np.zeros(0, np.float32),
            "sex": np.array([], dtype=str), "lengths": np.zeros(0, np.int32),
            "sources": np.array([], dtype=str),
        }
    if np.any(np.diff(cols["folds"]) < 0):  # only multi-fold shards can leave rows unsorted
        order = np.argsort(cols["folds"], kind="stable")
        signals = signals[order]
        cols = {k: v[order] for k, v in cols.items()}
    cols["sources"] = record_sources(cols["records"], cols["sources"].tolist(),
                                     manifest.get("databases"))
    return ECGDataset(signals=signals, manifest=manifest, label_map=_label_map(manifest), **cols)


def fold_counts(
    data_dir: str | os.PathLike[str], folds: Sequence[int], verify: bool = True,
    threads: int | None = None,
) -> dict[int, int]:
    """Rows per fold of the shards holding `folds`, without decoding a signal: what a search
    driver checks before the data goes to the trials. With `verify`, each of those shards'
    sha256 is checked as `load_shards` does (ShardChecksumError naming the file), streamed
    in 1 MiB chunks so the check holds no shard in memory."""
    import pyarrow.parquet as pq

    from .errors import ShardChecksumError
    from .shards import read_manifest, sha256_file

    data_dir = Path(data_dir)
    wanted = {int(f) for f in folds}
    shards = [s for s in read_manifest(data_dir)["shards"] if wanted & set(s["folds"])]

    def count_one(s: dict[str, Any]) -> np.ndarray:
        path = data_dir / s["file"]
        if not path.is_file():
            raise ShardChecksumError(s["file"], "file is missing")
        if verify and sha256_file(path) != s["sha256"]:
            raise ShardChecksumError(s["file"], "sha256 does not match the manifest")
        return pq.read_table(path, columns=["fold"]).column("fold").to_numpy()

    n_threads = threads or min(4, os.cpu_count() or 1, max(len(shards), 1))
    with ThreadPoolExecutor(n_threads) as pool:  # hashing and reading release the GIL
        parts = list(pool.map(count_one, shards))
    every = np.concatenate(parts) if parts else np.zeros(0, np.int8)
    return {f: int(np.count_nonzero(every == f)) for f in sorted(wanted)}


def _columns(table: Any, n_labels: int, n_samples: int) -> dict[str, np.ndarray]:
    labels = table.column("labels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    # Shards written before prep stored real lengths hold full-length rows only as far as
    # anyone can tell: read them as full.
    lengths = (table.column("length").to_numpy().astype(np.int32)
               if "length" in table.column_names
               else np.full(table.num_rows, n_samples, np.int32))
    age = table.column("age").to_numpy(zero_copy_only=False).astype(np.float32)  # nulls -> NaN
    sex = [s or "" for s in table.column("sex").to_pylist()]
    sources = ([s or "" for s in table.column("source").to_pylist()]
               if "source" in table.column_names else [""] * table.num_rows)
    return {
        "labels": np.asarray(labels, dtype=np.uint8).reshape(-1, n_labels),
        "records": np.array(table.column("record").to_pylist(), dtype=str),
        "folds": table.column("fold").to_numpy().astype(np.int8),
        "age": age,
        "sex": np.array(sex, dtype=str),
        "lengths": lengths,
        "sources": np.array(sources, dtype=str),
    }
