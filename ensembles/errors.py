"""User-facing errors of the ensembles package (importable without torch or MLflow, for the CLI).

The console script prints these as one line and exits with status 1.
"""

from __future__ import annotations

__all__ = [
    "BundleChecksumError",
    "BundleError",
    "BundleFormatError",
    "EnsembleError",
    "MemberError",
    "SearchNotFoundError",
]


class EnsembleError(RuntimeError):
    """An ensemble that cannot be built or used; the message says what to do."""


class SearchNotFoundError(EnsembleError):
    """No search (or no usable finished trial) under the given name / run id."""


class MemberError(EnsembleError):
    """A member's checkpoint cannot be found or loaded; the message names its MLflow run."""


class BundleError(EnsembleError):
    """An exported bundle that cannot be written or loaded."""


class BundleChecksumError(BundleError):
    """A bundle file is missing or its sha256 differs from manifest.json (tampered or
    corrupted); ``path`` is the file, relative to the bundle directory."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"bundle file {path}: {detail}")
        self.path = path


class BundleFormatError(BundleError):
    """A bundle whose files verify but whose content is not a usable bundle."""
