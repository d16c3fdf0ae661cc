"""Fixtures for the data_prep tests: real sample records, synthetic records, prepared shards,
fault injection and in-memory datasets.

The suite runs with --import-mode=importlib, so helpers are handed out as fixtures.
"""

from __future__ import annotations

import shutil
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from data_prep.labels import get_label_map
from data_prep.reader import STANDARD_LEADS
from data_prep.synth import make_record, synthesize, write_record

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
    from data_prep.prep import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(synth_dir, out, workers=1, shard_size=10, progress=False)
    return out


@pytest.fixture
def copy_tree() -> Callable[[Path, Path], Path]:
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy


def _put_mat(mat_path: Path, digital: np.ndarray) -> None:
    n_sig, n = digital.shape
    data = struct.pack("<5i", 30, n_sig, n, 0, 4) + b"val\x00"
    mat_path.write_bytes(data + np.ascontiguousarray(digital.T).astype("<i2").tobytes())


FAULTS = (
    "missing_signal", "truncated_signal", "unparsable_header", "wrong_lead_set", "no_samples",
    "invalid_samples", "flat_lead", "saturated_lead", "duplicate_record", "unreadable",
)


@pytest.fixture
def make_faulty() -> Callable[[Path, str, int], Path]:
    """make_faulty(root, kind, index): write one synthetic record broken in the way the
    quarantine reason `kind` names; returns its header path."""

    def make(root: Path, kind: str, index: int) -> Path:
        spec, digital = make_record(11, index)
        name = f"BAD{index:03d}"
        folder = root / "bad" / kind
        leads = list(STANDARD_LEADS)
        if kind == "wrong_lead_set":
            leads[11] = "V7"
        if kind == "flat_lead":
            digital[7] = 0
        if kind == "saturated_lead":
            digital[3, ::3] = 32767
        if kind == "invalid_samples":
            digital[5, 100:110] = -32768
        hea = write_record(folder, name, digital, dx_codes=spec.dx_codes, age=spec.age,
                           sex=spec.sex, lead_names=leads)
        mat = hea.with_suffix(".mat")
        if kind == "missing_signal":
            mat.unlink()
        elif kind == "truncated_signal":
            mat.write_bytes(mat.read_bytes()[: 24 + 12 * 2 * 2500])
        elif kind == "unparsable_header":
            hea.write_text("this is not\na WFDB header\n")
        elif kind == "no_samples":
            hea.write_text(hea.read_text().replace(f"{name} 12 500 5000", f"{name} 12 500 0"))
        elif kind == "duplicate_record":
            # the same record name again in another folder
            write_record(root / "bad" / "dup2", name, digital, dx_codes=spec.dx_codes)
        elif kind == "unreadable":
            # a WFDB format we read through wfdb, with a data file wfdb cannot decode
            text = hea.read_text().replace(f"{name}.mat 16x1+24", f"{name}.dat 508")
            hea.write_text(text)
            (folder / f"{name}.dat").write_bytes(b"\x00" * 1000)
        return hea

    return make


@pytest.fixture
def make_dataset() -> Callable[..., object]:
    """make_dataset(signals, labels=None, folds=None, mean=0, std=1): an ECGDataset in memory
    with a minimal manifest (gain 1000, 500 Hz)."""
    from data_prep.dataset import ECGDataset

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
