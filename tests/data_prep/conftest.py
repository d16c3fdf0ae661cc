"""Fixtures for the data_prep tests: real sample records, synthetic records, prepared shards,
fault injection and in-memory datasets.

The suite runs with --import-mode=importlib, so helpers are handed out as fixtures.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ecgtune.data_prep.labels import get_label_map
from ecgtune.data_prep.synth import synthesize, write_faulty_record

# wfdb 4.3 calls pandas APIs that pandas 3 deprecates (at import and in rdrecord): not ours.
_WFDB_NOISE = "ignore:The inplace keyword:DeprecationWarning"
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import wfdb  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings(_WFDB_NOISE))

REPO = Path(__file__).resolve().parents[2]
REAL_DIR = (REPO / "../shared/data/ecg-arrhythmia-sample").resolve()
REFERENCE_CSV = (REPO / "../shared/reference/snomed_label_groups.csv").resolve()
# Sample records whose V2, V4 and V6 hold only zeros (a known defect of some Ningbo records).
REAL_FLAT = {"JS20004", "JS20008"}


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"real sample records not available ({REAL_DIR})")
    return REAL_DIR


@pytest.fixture(scope="session")
def reference_csv() -> Path:
    if not REFERENCE_CSV.is_file():
        pytest.skip(f"reference label table not available ({REFERENCE_CSV})")
    return REFERENCE_CSV


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 synthetic records (seed 7) in the ecg-arrhythmia layout."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, 200, seed=7)
    return out


@pytest.fixture(scope="session")
def prepared(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prep` output for synth_dir: shards of at most 10 records, in-process."""
    from ecgtune.data_prep.prep import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(synth_dir, out, workers=1, shard_size=10, progress=False)
    return out


@pytest.fixture
def copy_tree() -> Callable[[Path, Path], Path]:
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture
def make_faulty() -> Callable[[Path, str, int], Path]:
    """make_faulty(root, kind, index): write one synthetic record broken in the way the
    quarantine reason or warning `kind` names (data_prep.synth.FAULT_KINDS); returns its header
    path."""
    return write_faulty_record


@pytest.fixture
def make_dataset() -> Callable[..., object]:
    """make_dataset(signals, labels=None, folds=None, mean=0, std=1): an ECGDataset in memory
    with a minimal manifest (gain 1000, 500 Hz)."""
    from ecgtune.data_prep.dataset import ECGDataset

    def make(signals: np.ndarray, labels: np.ndarray | None = None,
             folds: np.ndarray | None = None, mean: float = 0.0, std: float = 1.0) -> ECGDataset:
        n = len(signals)
        lm = get_label_map("seed20")
        labels = np.zeros((n, len(lm)), np.uint8) if labels is None else labels
        folds = (np.arange(n) % 10).astype(np.int8) if folds is None else folds
        order = np.argsort(folds, kind="stable")
        manifest = {
            "labels": lm.to_manifest(),
            "label_map": lm.name,
            "preprocessing": {"fs": 500, "gain": 1000, "n_samples": signals.shape[-1]},
            "normalization": {"mean": [mean] * 12, "std": [std] * 12},
            "folds": {"n": 10},
        }
        return ECGDataset(
            signals=np.ascontiguousarray(signals[order]), labels=labels[order],
            records=np.array([f"R{i:04d}" for i in order]), folds=folds[order].astype(np.int8),
            age=np.full(n, np.nan, np.float32), sex=np.array([""] * n), manifest=manifest,
            label_map=lm,
        )

    return make
