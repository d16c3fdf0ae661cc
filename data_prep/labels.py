"""Label maps: SNOMED CT codes -> ordered target labels in groups.

Maps ship as CSV files in `data_prep/labelmaps/` (columns `code,label,group,count,description`;
`count` is the number of ecg-arrhythmia records with the code, used by `synth` to weight codes).
Label order and group order are the order of first appearance in the file, so the file itself
fixes the model's output order.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from .errors import LabelMapError

__all__ = ["LABEL_MAPS", "Label", "LabelMap", "get_label_map"]

# Registry: label-map name -> CSV file shipped in data_prep/labelmaps/.
LABEL_MAPS: Mapping[str, str] = {
    "seed20": "seed20.csv",
    # 59118001 (Nonspecific BBB) is scored as RBBB by the PhysioNet/CinC 2021 tables.
    "seed20-rbbb": "seed20-rbbb.csv",
}


@dataclass(frozen=True)
class Label:
    name: str
    codes: tuple[str, ...]
    group: str


@dataclass(frozen=True)
class LabelMap:
    name: str
    labels: tuple[Label, ...]
    # Per-code record counts from the source table (empty for maps rebuilt from a manifest).
    code_counts: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    _index: Mapping[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise LabelMapError(f"label map {self.name!r}: duplicate label names")
        for i, label in enumerate(self.labels):
            for code in label.codes:
                if code in index:
                    raise LabelMapError(
                        f"label map {self.name!r}: code {code} maps to both "
                        f"{self.labels[index[code]].name} and {label.name}"
                    )
                index[code] = i
        object.__setattr__(self, "_index", index)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(label.group for label in self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def group_indices(self) -> list[list[int]]:
        """Label indices of each group, in `group_names` order."""
        return [
            [i for i, label in enumerate(self.labels) if label.group == group]
            for group in self.group_names
        ]

    def index_of(self, code: str) -> int | None:
        return self._index.get(code)

    def encode(self, dx_codes: Iterable[str]) -> np.ndarray:
        """Multi-hot uint8 vector (n_labels,); codes outside the map are ignored."""
        out = np.zeros(len(self.labels), dtype=np.uint8)
        for code in dx_codes:
            i = self._index.get(str(code).strip())
            if i is not None:
                out[i] = 1
        return out

    def encode_many(self, dx_lists: Sequence[Iterable[str]]) -> np.ndarray:
        """(N, n_labels) uint8 for N code lists."""
        out = np.zeros((len(dx_lists), len(self.labels)), dtype=np.uint8)
        for row, codes in enumerate(dx_lists):
            for code in codes:
                i = self._index.get(code)
                if i is not None:
                    out[row, i] = 1
        return out

    def to_manifest(self) -> list[dict[str, Any]]:
        return [
            {"name": label.name, "codes": list(label.codes), "group": label.group}
            for label in self.labels
        ]

    @classmethod
    def from_manifest(cls, labels: Sequence[Mapping[str, Any]], name: str = "manifest") -> LabelMap:
        try:
            items = tuple(
                Label(str(item["name"]), tuple(str(c) for c in item["codes"]), str(item["group"]))
                for item in labels
            )
        except (KeyError, TypeError) as exc:
            raise LabelMapError(f"malformed label list in manifest: {exc!r}") from None
        return cls(name=name, labels=items)

    @classmethod
    def from_csv(cls, text: str, name: str) -> LabelMap:
        codes: dict[str, list[str]] = {}
        groups: dict[str, str] = {}
        counts: dict[str, int] = {}
        for row in csv.DictReader(io.StringIO(text)):
            code, label, group = row["code"].strip(), row["label"].strip(), row["group"].strip()
            if groups.setdefault(label, group) != group:
                raise LabelMapError(f"label map {name!r}: label {label} is in two groups")
            codes.setdefault(label, []).append(code)
            if row.get("count"):
                counts[code] = int(row["count"])
        labels = tuple(Label(lab, tuple(c), groups[lab]) for lab, c in codes.items())
        # Group members must be contiguous so group_indices() are ranges in output order.
        seen: list[str] = []
        for label in labels:
            if label.group in seen and seen[-1] != label.group:
                raise LabelMapError(f"label map {name!r}: group {label.group} is not contiguous")
            if label.group not in seen:
                seen.append(label.group)
        return cls(name=name, labels=labels, code_counts=counts)


@functools.cache
def get_label_map(name: str) -> LabelMap:
    """The registered label map `name` (see LABEL_MAPS)."""
    if name not in LABEL_MAPS:
        valid = ", ".join(sorted(LABEL_MAPS))
        raise LabelMapError(f"unknown label map {name!r}; valid names: {valid}")
    # one name per joinpath: several at once is Python 3.11+
    folder = resources.files(__package__).joinpath("labelmaps")
    text = folder.joinpath(LABEL_MAPS[name]).read_text("utf-8")
    return LabelMap.from_csv(text, name)
