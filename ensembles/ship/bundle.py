"""The exported ensemble: a pickle-free, checksummed directory.

Layout::

    BUNDLE_DIR/
      bundle.json              everything inference needs except weights: labels (names,
                               groups, label map), input spec (the manifest's preprocessing
                               block and normalisation statistics), number of windows, members
                               (ModelConfig, label layout, crop length, normalisation mode,
                               weight, provenance), calibrators, thresholds, selection record
      members/<name>.safetensors   weights of each member (safetensors, strict reload)
      source.json              provenance that changes between builds (time, run ids, versions)
      report/...               the test-fold report and figures (when the build includes them)
      manifest.json            sha256 and size of every other file; written last

`bundle.json` and the weights are deterministic for a given search, data and seed, so two
builds give identical checksums for them. `load_bundle` verifies every checksum before it
parses anything (a missing or modified file raises `BundleChecksumError` naming it), then holds
bundle.json and each member's weights file to the bundle contract (`ensembles.ship.bundle_schema`:
a `BundleFormatError` names the field), and loads the weights from the verified bytes. Writing
goes to ``DIR.tmp``, is held to the same contract and only then renamed into place; an existing
bundle is replaced, anything else at ``DIR`` is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ecgtune.ensembles.build.calibration import Calibrator, PerLabelCalibrator
from ecgtune.ensembles.build.referral import Referral
from ecgtune.ensembles.errors import BundleChecksumError, BundleError, BundleFormatError
from ecgtune.ensembles.ship.bundle_schema import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    check_bundle,
    check_bundle_json,
    member_metadata,
)
from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec
from ecgtune.search.provenance import library_versions

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "MANIFEST_FILE",
    "SOURCE_FILE",
    "Bundle",
    "check_bundle_target",
    "is_bundle",
    "load_bundle",
    "save_bundle",
    "verify_bundle",
]

MANIFEST_FORMAT = "ecgtune.bundle-manifest/1"
SOURCE_FILE = "source.json"
MANIFEST_FILE = "manifest.json"
MEMBERS_DIR = "members"
# What source.json records the versions of: what loading the bundle depends on.
BUNDLE_LIBRARIES = ("ecgtune", "torch", "numpy", "safetensors", "scikit-learn", "scipy")
_PARTIAL_MARKER = ".ecgtune-partial"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has a manifest.json of this bundle format (checksums unchecked)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT


def check_bundle_target(path: str | os.PathLike[str]) -> Path:
    """Fail early unless ``path`` can receive a bundle: absent, an empty directory, or an
    existing bundle (which is replaced)."""
    path = Path(path).absolute()
    if path.exists():
        if not path.is_dir():
            raise BundleError(f"{path} exists and is not a directory; choose another --output")
        if any(path.iterdir()) and not is_bundle(path):
            raise BundleError(
                f"refusing to overwrite {path}: it is not an ecgtune bundle (no bundle "
                "manifest.json); choose another --output"
            )
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists() and not (tmp / _PARTIAL_MARKER).exists() and not is_bundle(tmp):
        raise BundleError(f"{tmp} exists and is not a partial bundle; remove it first")
    return path


def _member_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone() gives every tensor its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_bundle(
    path: str | os.PathLike[str],
    predictor: EnsemblePredictor,
    *,
    fit: Mapping[str, Any] | None = None,
    member_info: Mapping[str, Mapping[str, Any]] | None = None,
    source: Mapping[str, Any] | None = None,
    include: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Write ``predictor`` as a bundle at ``path`` and return it.

    ``fit``: JSON-ready details of how it was fitted (selection record, threshold settings),
    stored in bundle.json; ``member_info``: provenance per member name (run id, score);
    ``source``: volatile provenance for source.json; ``include``: directories copied in under
    the given names (e.g. ``{"report": report_dir}``), covered by the manifest like the rest.
    """
    from safetensors.torch import save as save_safetensors

    path = check_bundle_target(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / MEMBERS_DIR).mkdir(parents=True)
    (tmp / _PARTIAL_MARKER).touch()
    member_info = member_info or {}
    members = []
    for (spec, model), weight in zip(predictor.members, predictor.weights, strict=True):
        rel = f"{MEMBERS_DIR}/{spec.name}.safetensors"
        entry = {**spec.to_dict(), "file": rel, "weight": float(weight),
                 **dict(member_info.get(spec.name, {}))}
        # The identity is hashed from the entry as bundle.json will hold it (tuples become
        # lists), which is what `load_bundle` hashes again.
        metadata = member_metadata(json.loads(json.dumps(entry)))
        (tmp / rel).write_bytes(save_safetensors(_member_state(model), metadata=metadata))
        members.append(entry)
    bundle = {
        "format": BUNDLE_FORMAT,
        "labels": {
            "map": predictor.label_map,
            "names": predictor.label_names,
            "groups": [
                {"name": name, "labels": [predictor.label_names[i] for i in idx]}
                for name, idx in zip(predictor.group_names, predictor.label_groups, strict=False)
            ],
        },
        "input": predictor.inputs.to_dict(),
        "inference": {
            "n_windows": predictor.n_windows,
            "windows": "evenly spaced windows of each member's crop length "
                       "(data_prep.fixed_windows); probabilities averaged over windows",
            "combine": "weighted mean of member probabilities, then per-label calibration",
            "decision": "label predicted when calibrated probability >= threshold",
            **_referral_entry(predictor),
        },
        "members": members,
        "calibration": predictor.calibrator.to_dict(),
        "thresholds": [float(t) for t in predictor.thresholds],
        "fit": dict(fit or {}),
    }
    try:
        text = json.dumps(bundle, indent=2, allow_nan=False)
    except ValueError:  # NaN or infinity: named by the contract where it covers the field
        _refuse(path, tmp, lambda: check_bundle_json(json.loads(json.dumps(bundle))))
        _refuse(path, tmp, _fail_non_finite)
        raise  # not reached: _fail_non_finite always raises
    (tmp / BUNDLE_FILE).write_text(text + "\n")
    versions = library_versions(BUNDLE_LIBRARIES, prefix="")
    (tmp / SOURCE_FILE).write_text(
        json.dumps({**dict(source or {}), "versions": versions}, indent=2, default=str) + "\n")
    for name, directory in (include or {}).items():
        shutil.copytree(directory, tmp / name)
    (tmp / _PARTIAL_MARKER).unlink()
    files = {}
    written: dict[str, bytes] = {}
    for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = file.relative_to(tmp).as_posix()
        written[rel] = file.read_bytes()
        files[rel] = {"sha256": _sha256(written[rel]), "bytes": len(written[rel])}
    # What was written, read back: a bug in code that builds bundles fails here, at build
    # time, instead of in whoever loads the bundle.
    _refuse(path, tmp, lambda: check_bundle(_json_file(written, BUNDLE_FILE), written))
    manifest = {"format": MANIFEST_FORMAT, "bundle_format": BUNDLE_FORMAT, "files": files}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    _replace(tmp, path)
    return path


def _referral_entry(predictor: EnsemblePredictor) -> dict[str, Any]:
    referral = getattr(predictor, "referral", None)
    return {} if referral is None else {"referral": referral.to_dict()}


def _fail_non_finite() -> None:
    raise BundleFormatError(f"bundle file {BUNDLE_FILE}: a NaN or infinite number outside "
                            "the checked fields (fit, members' provenance)")


def _refuse(path: Path, tmp: Path, check: Callable[[], None]) -> None:
    """Run ``check``; on a `BundleFormatError` remove the partial bundle and refuse to write."""
    try:
        check()
    except BundleFormatError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleFormatError(f"not writing {path}: {exc}") from None


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``; an existing bundle there is swapped out, then removed."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)


def _safe_relpath(name: Any) -> str:
    p = PurePosixPath(str(name))
    if not isinstance(name, str) or p.is_absolute() or ".." in p.parts or not p.parts:
        raise BundleFormatError(f"manifest.json lists an invalid file name {name!r}")
    return name


def verify_bundle(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Check every file of the bundle against manifest.json; returns their verified bytes."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path} not found (expected a directory)")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is not an ecgtune bundle (no {MANIFEST_FILE})") from None
    except (OSError, ValueError) as exc:
        raise BundleChecksumError(MANIFEST_FILE, f"unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BundleFormatError(f"{path / MANIFEST_FILE} is not a bundle manifest "
                                f"(format {MANIFEST_FORMAT!r} expected)")
    files = manifest.get("files")
    if not isinstance(files, dict) or BUNDLE_FILE not in files:
        raise BundleFormatError(f"{path / MANIFEST_FILE} does not list {BUNDLE_FILE}")
    verified: dict[str, bytes] = {}
    for name, entry in files.items():
        rel = _safe_relpath(name)
        try:
            data = (path / rel).read_bytes()
        except FileNotFoundError:
            raise BundleChecksumError(rel, "missing (listed in manifest.json)") from None
        except OSError as exc:
            raise BundleChecksumError(rel, f"unreadable: {exc}") from None
        if not isinstance(entry, dict) or _sha256(data) != entry.get("sha256"):
            raise BundleChecksumError(
                rel, "sha256 does not match manifest.json (modified or corrupted)"
            )
        verified[rel] = data
    return verified


class Bundle(EnsemblePredictor):
    """An `EnsemblePredictor` loaded from a verified bundle; ``metadata`` is bundle.json,
    ``source`` source.json."""

    path: Path
    metadata: dict[str, Any]
    source: dict[str, Any]


def _one_line(exc: BaseException) -> str:
    """`Type: message` on one line (load_state_dict's message spans many), kept short."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json_file(files: dict[str, bytes], rel: str) -> Any:
    try:
        return json.loads(files[rel])
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise BundleFormatError(f"bundle file {rel}: not valid JSON ({exc})") from None


def load_bundle(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", precision: str = "fp32"
) -> Bundle:
    """Verify every checksum, then rebuild the members (`components.build_model` + strict
    safetensors weights), calibrators and thresholds.

    Anything wrong with the content raises a BundleError naming the file (``bundle file
    members/m0.safetensors: ...``), never the library's own exception: files that verify can
    still be bad (written by another version, or edited and re-stamped)."""
    from safetensors.torch import load as load_safetensors

    from ecgtune.components import build_model

    path = Path(path)
    files = verify_bundle(path)
    meta = _json_file(files, BUNDLE_FILE)
    check_bundle(meta, files)
    current = BUNDLE_FILE  # the file being interpreted, for the error message
    try:
        members = []
        weights = []
        for entry in meta["members"]:
            current = BUNDLE_FILE
            spec = MemberSpec.from_dict(entry)
            rel = entry["file"]
            model = build_model(spec.config, spec.num_labels, [list(g) for g in spec.label_groups],
                                spec.group_names)
            current = rel
            try:
                state = load_safetensors(files[rel])
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise BundleFormatError(
                    f"bundle file {rel}: not a valid safetensors file ({_one_line(exc)})"
                ) from None
            # strict: missing, unexpected or mis-shaped weights raise RuntimeError
            model.load_state_dict(state, strict=True)
            current = BUNDLE_FILE
            members.append((spec, model.eval()))
            weights.append(float(entry["weight"]))
        calibrator = Calibrator.from_dict(meta["calibration"])
        if not isinstance(calibrator, PerLabelCalibrator):
            raise BundleFormatError(f"bundle file {BUNDLE_FILE}: calibration is not per label")
        labels = meta["labels"]
        names = list(labels["names"])
        index = {n: i for i, n in enumerate(names)}
        groups = labels.get("groups", [])
        bundle = Bundle(
            members, weights, calibrator, np.asarray(meta["thresholds"], dtype=np.float64),
            names, InputSpec.from_dict(meta["input"]), int(meta["inference"]["n_windows"]),
            label_map=str(labels.get("map", "manifest")),
            label_groups=[[index[n] for n in g["labels"]] for g in groups],
            group_names=[g["name"] for g in groups],
            device=device,
            precision=precision,
            referral=(Referral.from_dict(meta["inference"]["referral"])
                      if "referral" in meta["inference"] else None),
        )
    except BundleError:
        raise
    except Exception as exc:
        # Bad content of any kind (a missing key, a wrong type, a config the model builder
        # refuses, weights of the wrong shape): one line naming the file, not a traceback.
        raise BundleFormatError(f"bundle file {current}: cannot be loaded: {_one_line(exc)}"
                                ) from None
    bundle.path = path
    bundle.metadata = meta
    bundle.source = _json_file(files, SOURCE_FILE) if SOURCE_FILE in files else {}
    return bundle
