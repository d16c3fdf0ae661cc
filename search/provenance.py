"""Where a run's results come from: the code version and the libraries' versions, recorded on
every search run, bundle and exported graph (one collector for all of them)."""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SEARCH_LIBRARIES", "code_version", "library_versions"]

# What a search run records (`version.<lib>` params).
SEARCH_LIBRARIES = ("ray", "torch", "mlflow", "optuna", "numpy", "pyarrow")


def code_version() -> str:
    version = importlib.metadata.version("ecgtune")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version


def library_versions(libs: Sequence[str] = SEARCH_LIBRARIES, prefix: str = "version."
                     ) -> dict[str, str]:
    """Installed versions of `libs` (missing ones left out), keys prefixed with `prefix`."""
    out = {}
    for lib in libs:
        try:
            out[f"{prefix}{lib}"] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
