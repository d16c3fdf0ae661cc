"""Which folds play which role, read from the prepared data's manifest.

`ecgtune prep` writes the roles into ``manifest.json`` (``folds.roles``: train, val, ensemble,
test); the ensemble code asks for folds by role and never by number. A stop-gap until
`ecgtune.data_prep` offers a public reader of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecgtune.ensembles.errors import EnsembleError

__all__ = ["ENSEMBLE", "TEST", "fold_of_role"]

ENSEMBLE = "ensemble"  # selection, calibration and thresholds of the ensemble
TEST = "test"  # reported once, never fitted on


def fold_of_role(manifest: Mapping[str, Any], role: str) -> int:
    """The one fold that has ``role`` in the manifest's fold roles."""
    from ecgtune.data_prep import FOLD_ROLES

    # Manifests written before the roles were stored used the very roles FOLD_ROLES lists.
    roles = manifest.get("folds", {}).get("roles", FOLD_ROLES)
    folds = roles.get(role)
    if not folds or len(folds) != 1:
        raise EnsembleError(f"the data manifest gives the {role} role to folds {folds}; the "
                            "ensemble needs exactly one")
    return int(folds[0])
