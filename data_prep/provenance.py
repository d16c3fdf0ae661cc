"""Where records come from: the source database of each record, counted in the manifest, and
the site (source) each record was recorded at.

A model's output is only as clinical as its training data. Records that ecgtune synthesises
carry a header comment saying so; real records are told apart by the PhysioNet/CinC 2021 name
prefixes. The manifest's `databases` count travels with every model trained on it (bundle
metadata, registered-model tags), so nothing trained on synthetic records passes for a
diagnosis.

A record's *source* is the site it comes from: a `#Source: NAME` header comment when it names
one (`record_contract.parse_source`), else its database. Prep stores it in the shards' `source`
column and counts it in the manifest's `sources`; folds (`prep --holdout-source`), the search's
per-source objective and the reports group records by it (`record_sources` reads it back,
also from shards written when that column held the header's path).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .record_contract import parse_source

__all__ = ["SYNTHETIC", "SYNTHETIC_COMMENT", "count_databases", "is_synthetic",
           "record_database", "record_source", "record_sources"]

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


def record_source(name: str, comments: Iterable[str]) -> str:
    """The site a record comes from: the first `Source:` comment that names one, else its
    database (`record_database`)."""
    comments = list(comments)
    for comment in comments:
        key, sep, value = comment.partition(":")
        if sep and key.strip().lower() == "source":
            site = parse_source(value)
            if site is not None:
                return site
    return record_database(name, comments)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(".hea")


def record_sources(records: Sequence[str] | Any, source_column: Sequence[str],
                   databases: dict[str, int] | None) -> Any:
    """The source of each record (numpy str array), first rule that applies:

    1. the shard's ``source`` column when it holds a name rather than a header path (a path
       has a ``/`` or ends in ``.hea``: shards written before prep stored sources);
    2. the manifest's ``databases`` when it counts only one (synthetic data, one-database
       preps);
    3. the CinC record-name prefix (`record_database`) when the manifest counts that database;
    4. else the one database the manifest counts that no record's prefix names (e.g.
       ``synthetic`` beside ``georgia``: synthetic records are named JS but counted apart),
       else ``unknown``.
    """
    import numpy as np

    counted = set(databases or {})
    by_prefix = [record_database(str(r), ()) for r in records]
    leftover = sorted(counted - set(by_prefix))
    out = []
    for prefixed, source in zip(by_prefix, source_column, strict=True):
        if source and not _looks_like_path(source):
            out.append(source)
        elif len(counted) == 1:
            out.append(next(iter(counted)))
        elif not counted or prefixed in counted:
            out.append(prefixed)
        else:
            out.append(leftover[0] if len(leftover) == 1 else "unknown")
    return np.array(out, dtype=str)


def count_databases(databases: Iterable[str]) -> dict[str, int]:
    """Record counts per database, largest first (the manifest's `databases`)."""
    return dict(Counter(databases).most_common())


def is_synthetic(databases: dict[str, int] | None) -> bool:
    """True when any training record was synthetic: the model's output is not a diagnosis."""
    return bool(databases) and databases.get(SYNTHETIC, 0) > 0  # type: ignore[union-attr]
