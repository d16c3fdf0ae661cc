"""The external fold (`prep --holdout-source`) never reaches training, validation or
calibration: proved from the shards each step reads. Every shard file the search's data paths
(object store and memory map) and the ensemble's fitting folds open is checked row by row,
and so are the datasets those steps hand on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from ecgtune.data_prep import fold_roles, prepare, read_manifest
from ecgtune.data_prep.folds import EXTERNAL, EXTERNAL_FOLD
from ecgtune.data_prep.synth import synthesize

HELD_OUT = "site-d"


@pytest.fixture(scope="module")
def held_out_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = tmp_path_factory.mktemp("records")
    synthesize(records, 120, seed=3, sources=4)
    out = tmp_path_factory.mktemp("shards")
    prepare(records, out, workers=1, progress=False, shard_size=8, holdout_sources=[HELD_OUT])
    return out


class _ShardReads:
    """Every shard file opened while it is active (the loaders read a shard's bytes once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[Path] = []
        read_bytes, read_table = Path.read_bytes, pq.read_table

        def spy_bytes(path: Path) -> bytes:
            if path.suffix == ".parquet":
                self.files.append(Path(path))
            return read_bytes(path)

        def spy_table(source, *args, **kwargs):
            if isinstance(source, str | Path) and str(source).endswith(".parquet"):
                self.files.append(Path(source))
            return read_table(source, *args, **kwargs)

        monkeypatch.setattr(Path, "read_bytes", spy_bytes)
        monkeypatch.setattr(pq, "read_table", spy_table)

    def rows(self) -> Iterator[dict]:
        for path in dict.fromkeys(self.files):
            yield from pq.ParquetFile(path).read(columns=["source", "fold"]).to_pylist()


def _assert_no_external(reads: _ShardReads, what: str) -> int:
    rows = list(reads.rows())
    assert rows, f"{what} read no shard"
    held = [r for r in rows if r["source"] == HELD_OUT or r["fold"] == EXTERNAL_FOLD]
    assert not held, f"{what} read {len(held)} rows of the external fold"
    return len(rows)


def test_the_data_has_an_external_fold(held_out_data: Path) -> None:
    roles = fold_roles(read_manifest(held_out_data))
    assert roles[EXTERNAL] == (EXTERNAL_FOLD,)
    external = [s for s in read_manifest(held_out_data)["shards"]
                if s["folds"] == [EXTERNAL_FOLD]]
    assert sum(s["rows"] for s in external) == 30  # every fourth record


def test_search_trains_and_validates_without_it(held_out_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from ecgtune.search.data import _load_for_store, _materialise
    from ecgtune.search.run import check_search_data, load_search_data

    reads = _ShardReads(monkeypatch)
    data, dataset = load_search_data(held_out_data)  # what a local trial loads
    assert EXTERNAL_FOLD not in data.folds
    _, stored = _load_for_store(str(held_out_data), data.folds)  # the object store's copy
    _materialise(str(held_out_data), data.folds, tmp_path / "cache")  # the memmap cache
    check_search_data(held_out_data)  # the driver's checks (row counts)
    _assert_no_external(reads, "the search")
    for ds in (dataset, stored):
        assert HELD_OUT not in set(ds.sources.tolist()) and EXTERNAL_FOLD not in set(ds.folds)
        assert {"site-a", "site-b", "site-c"} <= set(ds.sources.tolist())
    # The trial's two parts: the train folds and the validation fold the objective is on.
    val = dataset.select(data.val_folds)
    assert len(val) and HELD_OUT not in set(val.sources.tolist())


def test_ensemble_selects_and_calibrates_without_it(held_out_data: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ecgtune.ensembles.build.ensemble import _load_external, _load_folds
    from ecgtune.ensembles.build.fold_roles import ENSEMBLE, TEST

    opts = SimpleNamespace(data=held_out_data)
    reads = _ShardReads(monkeypatch)
    folds = _load_folds(opts, SimpleNamespace(data_manifest_sha256=""))  # type: ignore[arg-type]
    n = _assert_no_external(reads, "the ensemble's fitting folds")
    assert n == len(folds.data)
    # Selection, calibration and thresholds see the ensemble fold's rows of this data only.
    assert HELD_OUT not in set(folds.sources(ENSEMBLE).tolist())
    assert HELD_OUT not in set(folds.sources(TEST).tolist())
    # The external fold is read apart, for the report, and holds the held-out source only.
    reads.files.clear()
    external = _load_external(opts)  # type: ignore[arg-type]
    assert external is not None and set(external.sources.tolist()) == {HELD_OUT}
    assert {r["source"] for r in reads.rows()} == {HELD_OUT}


def test_evaluate_reports_the_test_fold_by_default(held_out_data: Path) -> None:
    from ecgtune.ensembles.evaluate.run import _folds

    manifest = read_manifest(held_out_data)
    opts = SimpleNamespace(all_folds=False, folds=None, data=held_out_data)
    assert _folds(opts, manifest) == list(fold_roles(manifest)["test"])  # type: ignore[arg-type]
    everything = _folds(SimpleNamespace(all_folds=True, folds=None), manifest)  # type: ignore
    assert EXTERNAL_FOLD in everything and len(everything) == EXTERNAL_FOLD + 1


def test_a_role_may_not_name_the_external_fold() -> None:
    from ecgtune.data_prep import PrepError

    roles = {"train": [0, 1], "val": [2], "ensemble": [3], "test": [4], EXTERNAL: [4]}
    with pytest.raises(PrepError, match="two roles"):
        fold_roles({"folds": {"n": 5, "roles": roles}})
    np.testing.assert_equal(fold_roles({"folds": {"n": 5, "roles": {**roles, EXTERNAL: []}}})
                            [EXTERNAL], ())
