"""User-facing errors of the ensembles package (importable without torch or MLflow, for the CLI).

The console script prints these as one line and exits with status 1; `ecgtune predict` exits
with `EXIT_REJECTED` when it refused some records.
"""

from __future__ import annotations

# `ecgtune predict`: some records were refused (named on stderr); the others were written.
EXIT_REJECTED = 3

__all__ = [
    "EXIT_REJECTED",
    "BundleChecksumError",
    "BundleError",
    "BundleFormatError",
    "EnsembleError",
    "EnsembleOptionError",
    "EvaluationError",
    "MemberError",
    "ModelInputError",
    "SearchNotFoundError",
]


class EnsembleError(RuntimeError):
    """An ensemble that cannot be built or used; the message says what to do."""


class EnsembleOptionError(EnsembleError, ValueError):
    """Option values that break a declared constraint (`ensembles.options`); one message
    names every bad flag. A ValueError too, for library callers that pass bad values. The
    console script prints it as one line and exits 2, like any usage error."""

    exit_code = 2


class ModelInputError(EnsembleError, ValueError):
    """Data or signals that do not fit a bundle's model input (`ensembles.ship.input_spec`): a
    data manifest prepared at another rate, length, gain or label map, or an array of the
    wrong shape or dtype. A ValueError too, for library callers of `InputSpec.check`."""


class EvaluationError(EnsembleError):
    """Data or options `ecgtune evaluate` cannot use; the message says which and why."""


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
