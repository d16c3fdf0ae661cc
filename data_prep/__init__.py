"""data_prep: WFDB records -> quality gates -> folds -> Parquet shards; loader; synthetic data.

Public names resolve lazily (PEP 562) so `import data_prep` stays cheap: numpy, pyarrow,
scipy and torch load only with the module that needs them (torch: `BatchLoader` only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    REASON_CODES,
    WARNING_CODES,
    LabelMapError,
    PrepError,
    RecordError,
    ShardChecksumError,
)
from .lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and IDEs; at runtime __getattr__ resolves these
    from .dataset import (
        ECGDataset,
        NormStats,
        fixed_windows,
        load_shards,
        normalize,
        record_window_starts,
        to_millivolts,
        window_starts,
    )
    from .folds import FOLD_ROLES, assign_folds, fold_roles
    from .labels import LABEL_MAPS, Label, LabelMap, get_label_map
    from .loader import AugmentConfig, BatchLoader
    from .prep import PrepResult, format_summary, prepare
    from .preprocess import PreprocessInfo, preprocess_record, preprocessing_spec
    from .provenance import is_synthetic
    from .quality import check_output, check_raw
    from .reader import (
        STANDARD_LEADS,
        Header,
        RawRecord,
        parse_header,
        read_header,
        read_record,
        scan_records,
    )
    from .shards import read_manifest, read_shard, verify_shards
    from .synth import draw_spec, make_record, synthesize, write_record
    from .validation import CheckedRecord, validate_record

_EXPORTS: dict[str, str] = {
    "LABEL_MAPS": "labels", "Label": "labels", "LabelMap": "labels", "get_label_map": "labels",
    "STANDARD_LEADS": "reader", "Header": "reader", "RawRecord": "reader",
    "parse_header": "reader", "read_header": "reader", "read_record": "reader",
    "scan_records": "reader",
    "PreprocessInfo": "preprocess", "preprocess_record": "preprocess",
    "preprocessing_spec": "preprocess",
    "check_raw": "quality", "check_output": "quality",
    "FOLD_ROLES": "folds", "assign_folds": "folds", "fold_roles": "folds",
    "read_manifest": "shards", "read_shard": "shards", "verify_shards": "shards",
    "PrepResult": "prep", "prepare": "prep", "format_summary": "prep",
    "ECGDataset": "dataset", "NormStats": "dataset", "load_shards": "dataset",
    "normalize": "dataset", "to_millivolts": "dataset",
    "fixed_windows": "dataset", "window_starts": "dataset", "record_window_starts": "dataset",
    "AugmentConfig": "loader", "BatchLoader": "loader",
    "synthesize": "synth", "draw_spec": "synth", "make_record": "synth",
    "write_record": "synth",
    "CheckedRecord": "validation", "validate_record": "validation",
    "is_synthetic": "provenance",
}

__all__ = [
    "FOLD_ROLES",
    "LABEL_MAPS",
    "REASON_CODES",
    "STANDARD_LEADS",
    "WARNING_CODES",
    "AugmentConfig",
    "BatchLoader",
    "CheckedRecord",
    "ECGDataset",
    "Header",
    "Label",
    "LabelMap",
    "LabelMapError",
    "NormStats",
    "PrepError",
    "PrepResult",
    "PreprocessInfo",
    "RawRecord",
    "RecordError",
    "ShardChecksumError",
    "assign_folds",
    "check_output",
    "check_raw",
    "draw_spec",
    "fixed_windows",
    "fold_roles",
    "format_summary",
    "get_label_map",
    "is_synthetic",
    "load_shards",
    "make_record",
    "normalize",
    "parse_header",
    "prepare",
    "preprocess_record",
    "preprocessing_spec",
    "read_header",
    "read_manifest",
    "read_record",
    "read_shard",
    "record_window_starts",
    "scan_records",
    "synthesize",
    "to_millivolts",
    "validate_record",
    "verify_shards",
    "window_starts",
    "write_record",
]


assert set(__all__) == set(_EXPORTS) | {
    "REASON_CODES", "WARNING_CODES", "LabelMapError", "PrepError", "RecordError",
    "ShardChecksumError",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
