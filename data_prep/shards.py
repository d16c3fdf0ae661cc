"""Parquet shards: schema, atomic checksummed writes, verified reads.

`signal` is a fixed-size binary column holding the int16 (12, n) block of a record, lead by lead
(little-endian). Fixed-size binary is stored in Parquet as plain bytes, so reading it back is a
decompression plus one memcpy into the caller's array; a list<int16> column would go through
Parquet's repetition levels at ~60,000 values per row.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import PrepError, ShardChecksumError

__all__ = [
    "MANIFEST_NAME",
    "ZSTD_LEVEL",
    "atomic_write_bytes",
    "build_table",
    "manifest_sha256",
    "read_manifest",
    "read_shard",
    "sha256_file",
    "shard_schema",
    "signals_from_table",
    "verify_shards",
    "write_shard",
]

MANIFEST_NAME = "manifest.json"
# zstd level 1: on ECG int16 bytes higher levels gain a few percent of size for 2-4x the time.
ZSTD_LEVEL = 1
_N_LEADS = 12


def shard_schema(n_labels: int, n_samples: int) -> pa.Schema:
    signal = pa.field(
        "signal",
        pa.binary(_N_LEADS * n_samples * 2),
        nullable=False,
        metadata={"dtype": "<i2", "shape": f"{_N_LEADS},{n_samples}", "layout": "lead-major"},
    )
    return pa.schema([
        pa.field("record", pa.string(), nullable=False),
        signal,
        pa.field("labels", pa.list_(pa.uint8(), n_labels), nullable=False),
        pa.field("fold", pa.int8(), nullable=False),
        pa.field("age", pa.int16()),
        pa.field("sex", pa.string()),
        pa.field("dx_codes", pa.list_(pa.string())),
        # The record's site (`data_prep.provenance.record_source`): what folds hold out and
        # per-source objectives and reports group by.
        pa.field("source", pa.string()),
        # Samples of real signal at the start of `signal`; the rest is zero padding.
        pa.field("length", pa.int32(), nullable=False),
        # The header's path relative to prep's input folder.
        pa.field("path", pa.string()),
    ])


def build_table(
    records: Sequence[str], signals: np.ndarray, labels: np.ndarray, folds: Sequence[int],
    ages: Sequence[int | None], sexes: Sequence[str | None], dx_codes: Sequence[Sequence[str]],
    sources: Sequence[str], lengths: Sequence[int] | None = None,
    paths: Sequence[str | None] | None = None,
) -> pa.Table:
    """A shard table; `signals` is a C-contiguous int16 (n, 12, n_samples) array (not copied)."""
    n, n_leads, n_samples = signals.shape
    if signals.dtype != np.int16 or n_leads != _N_LEADS or not signals.flags.c_contiguous:
        raise ValueError("signals must be a C-contiguous int16 (n, 12, n_samples) array")
    schema = shard_schema(labels.shape[1], n_samples)
    data = signals.astype("<i2", copy=False)
    signal_col = pa.FixedSizeBinaryArray.from_buffers(
        schema.field("signal").type, n, [None, pa.py_buffer(data)]
    )
    label_col = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(labels, dtype=np.uint8).ravel()), labels.shape[1]
    )
    columns = [
        pa.array(list(records), pa.string()),
        signal_col,
        label_col,
        pa.array(np.asarray(folds, dtype=np.int8)),
        pa.array(list(ages), pa.int16()),
        pa.array(list(sexes), pa.string()),
        pa.array([list(c) for c in dx_codes], pa.list_(pa.string())),
        pa.array(list(sources), pa.string()),
        pa.array(np.full(n, n_samples, np.int32) if lengths is None
                 else np.asarray(lengths, np.int32)),
        pa.array([None] * n if paths is None else list(paths), pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview | pa.Buffer) -> None:
    """Write to a unique temporary name beside `path`, then rename over it. An OSError names
    `path` (a full disk fails the write itself, which names no file; the temporary name
    would mean nothing to a user)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_shard(
    table: pa.Table, path: str | os.PathLike[str], zstd_level: int = ZSTD_LEVEL,
    before_rename: Any = None,
) -> tuple[str, int]:
    """Write `table` atomically; returns (sha256 hex, size in bytes).

    `before_rename(sha256, size)` runs after the bytes are final but before the shard appears
    under its name (prep writes its sidecar there, so a visible shard always has one).
    """
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=zstd_level,
        use_dictionary=["sex", "dx_codes.list.element"],
        write_statistics=["record", "fold"],
        data_page_size=4 << 20,
        row_group_size=max(len(table), 1),
    )
    buf = sink.getvalue()
    digest = hashlib.sha256(memoryview(buf)).hexdigest()
    if before_rename is not None:
        before_rename(digest, buf.size)
    atomic_write_bytes(path, buf)
    return digest, buf.size


def sha256_file(path: str | os.PathLike[str]) -> str:
    # hashlib.file_digest is Python 3.11+; we support 3.10.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(data_dir: str | os.PathLike[str]) -> str:
    """sha256 of a prepared directory's manifest.json: the identity of the data that every
    search run, ensemble, bundle and evaluation records."""
    return sha256_file(Path(data_dir) / MANIFEST_NAME)


def read_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise PrepError(
            f"{path} not found: not a prep output directory, or prep has not finished"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrepError(f"{path} is not valid JSON: {exc}") from None


def _check(path: Path, expected_sha256: str, name: str) -> None:
    if not path.exists():
        raise ShardChecksumError(name, "file is missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ShardChecksumError(
            name, f"sha256 mismatch (expected {expected_sha256[:12]}…, got {actual[:12]}…)"
        )


def read_shard(
    path: str | os.PathLike[str], columns: Sequence[str] | None = None,
    expected_sha256: str | None = None,
) -> pa.Table:
    """Read one shard, checking its sha256 first when `expected_sha256` is given."""
    path = Path(path)
    if expected_sha256 is not None:
        _check(path, expected_sha256, str(path))
    return pq.read_table(path, columns=list(columns) if columns else None, memory_map=False)


def verify_shards(data_dir: str | os.PathLike[str], threads: int = 4) -> list[str]:
    """Check every shard listed in the manifest; returns the files, or raises
    ShardChecksumError naming the first bad one (in manifest order)."""
    from concurrent.futures import ThreadPoolExecutor

    data_dir = Path(data_dir)
    shards = read_manifest(data_dir)["shards"]
    with ThreadPoolExecutor(max(1, threads)) as pool:  # hashlib releases the GIL
        results = list(pool.map(
            lambda s: _try_check(data_dir / s["file"], s["sha256"], s["file"]), shards
        ))
    for err in results:
        if err is not None:
            raise err
    return [s["file"] for s in shards]


def _try_check(path: Path, sha: str, name: str) -> ShardChecksumError | None:
    try:
        _check(path, sha, name)
    except ShardChecksumError as exc:
        return exc
    return None


def signals_from_table(table: pa.Table, out: np.ndarray | None = None) -> np.ndarray:
    """The `signal` column as int16 (n, 12, n_samples), copied once into `out` if given."""
    column = table.column("signal")
    width = column.type.byte_width
    n_samples = width // (2 * _N_LEADS)
    if out is None:
        out = np.empty((len(column), _N_LEADS, n_samples), dtype=np.int16)
    row = 0
    for chunk in column.chunks:
        n = len(chunk)
        if n == 0:
            continue
        values = np.frombuffer(
            chunk.buffers()[1], dtype="<i2", count=n * width // 2, offset=chunk.offset * width
        )
        out[row : row + n] = values.reshape(n, _N_LEADS, n_samples)
        row += n
    return out
