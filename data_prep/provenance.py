"""Where records come from: the source database of each record, counted in the manifest.

A model's output is only as clinical as its training data. Records that ecgtune synthesises
carry a header comment saying so; real records are told apart by the PhysioNet/CinC 2021 name
prefixes. The manifest's `databases` count travels with every model trained on it (bundle
metadata, registered-model tags), so nothing trained on synthetic records passes for a
diagnosis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["SYNTHETIC", "SYNTHETIC_COMMENT", "count_databases", "is_synthetic",
           "record_database"]

SYNTHETIC = "synthetic"
# Written into every synthetic header (a WFDB comment line: "# Source: ...").
SYNTHETIC_COMMENT = "Source: ecgtune synthetic record, not a recording of a patient"

# CinC 2021 record-name prefixes; longer prefixes first so "JS" is not read as "S".
_PREFIXES = (
    ("JS", "ecg-arrhythmia"),  # Chapman-Shaoxing and Ningbo (PhysioNet ecg-arrhythmia)
    ("HR", "ptb-xl"),
    ("A", "cpsc"),
    ("Q", "cpsc-extra"),
    ("E", "georgia"),
    ("I", "incart"),
    ("S", "ptb"),
)


def record_database(name: str, comments: Iterable[str]) -> str:
    """The source database of a record from its name and header comment lines."""
    if any(c.strip().lower() == SYNTHETIC_COMMENT.lower() for c in comments):
        return SYNTHETIC
    for prefix, database in _PREFIXES:
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest[:1].isdigit():
            return database
    return "unknown"


def count_databases(databases: Iterable[str]) -> dict[str, int]:
    """Record counts per database, largest first (the manifest's `databases`)."""
    return dict(Counter(databases).most_common())


def is_synthetic(databases: dict[str, int] | None) -> bool:
    """True when any training record was synthetic: the model's output is not a diagnosis."""
    return bool(databases) and databases.get(SYNTHETIC, 0) > 0  # type: ignore[union-attr]
