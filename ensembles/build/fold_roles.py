"""Which folds play which role, read from the prepared data's manifest.

`ecgtune prep` writes the roles into ``manifest.json`` (``folds.roles``: train, val, ensemble,
test), and `ecgtune.data_prep.fold_roles` reads and checks them; the ensemble code asks it
for its two one-fold roles and never uses fold numbers of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecgtune.ensembles.errors import EnsembleError

__all__ = ["ENSEMBLE", "EXTERNAL", "TEST", "fold_of_role"]

ENSEMBLE = "ensemble"  # selection, calibration and thresholds of the ensemble
TEST = "test"  # reported once, never fitted on
EXTERNAL = "external"  # held-out sources: reported beside the test fold, never fitted on


def fold_of_role(manifest: Mapping[str, Any], role: str) -> int:
    """The one fold that has ``role`` in the manifest's fold roles."""
    from ecgtune.data_prep import fold_roles

    folds = fold_roles(manifest)[role]
    if len(folds) != 1:
        raise EnsembleError(f"the data manifest gives the {role} role to folds {folds}; the "
                            "ensemble needs exactly one")
    return int(folds[0])
