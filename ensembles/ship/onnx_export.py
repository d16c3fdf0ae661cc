"""Portable export: a whole calibrated ensemble bundle as one ONNX graph.

The graph takes what the pyfunc model takes, int16 records (N, 12, n_samples) at the bundle's
gain (and, optionally, ``lengths``: each record's real samples before prep's zero padding),
and returns ``probabilities`` (N, C) float64, calibrated, label-map order, and
``decisions`` (N, C) bool (probability >= the label's threshold); a bundle with a referral
(`ensemble --refer-rate`) adds ``refer`` (N,) bool, computed in float64 as
`ensembles.build.referral` does. Inside, in the bundle's own
order: normalisation (each member's mode), the evenly spaced inference windows, every member
(sigmoid, averaged over windows), the weighted member average, each label's calibrator and the
thresholds. The post-member part runs in float64, as `EnsemblePredictor` does, so decisions
near a threshold agree with the bundle's.

Calibrators are translated into exact ONNX arithmetic: identity (clip), temperature and Platt
(logit, affine, sigmoid, clip), isotonic as its piecewise-linear map (``np.interp``: segment
lookup by comparison count, then the same slope formula). Anything else, or an isotonic map
with repeated knots (where ``np.interp``'s result is not a single formula), is refused with an
error naming the label and the method; nothing is approximated.

`export_onnx` writes the graph with the bundle's metadata (labels, thresholds and their policy,
input contract, bundle and data-manifest sha256, ecgtune version, the operator sets it uses)
and checks it against the bundle on sample records before it is moved into place: a difference
above the tolerance raises `OnnxExportError` and leaves no file behind. The members are traced
from an export-ready copy, and the graph rewritten for ONNX Runtime's CPU kernels, without
changing what it computes (`onnx_rewrites`; tests/benchmarks/bench_export.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgtune.data_prep.dataset import RECORD_STD_FLOOR_MV
from ecgtune.data_prep.heartbeat import stage
from ecgtune.ensembles.build.calibration import (
    EPS,
    Calibrator,
    IdentityCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
)
from ecgtune.ensembles.errors import EnsembleError
from ecgtune.ensembles.ship.bundle import MANIFEST_FILE, Bundle, load_bundle
from ecgtune.ensembles.ship.inference import NUM_LEADS, EnsemblePredictor, MemberSpec
from ecgtune.ensembles.ship.onnx_rewrites import attention_heads, for_export, rewrite_graph
from ecgtune.search.provenance import library_versions

__all__ = [
    "INPUT_NAME",
    "LENGTHS_NAME",
    "ONNX_FORMAT",
    "OUTPUT_NAMES",
    "REFER_NAME",
    "ExportOptions",
    "ExportResult",
    "OnnxExportError",
    "UnsupportedCalibratorError",
    "build_graph_module",
    "check_onnx",
    "export_onnx",
    "log_onnx_artifact",
    "onnx_metadata",
    "open_session",
    "read_metadata",
    "resolve_bundle",
    "run_session",
    "run_session_refer",
    "sample_signals",
    "shard_signals",
]

log = logging.getLogger(__name__)

ONNX_FORMAT = "ecgtune.onnx/1"
INPUT_NAME = "signals"
# Optional: real samples per record (prep's `length` column); the graph's default is every
# record at full length, an initializer a caller may override.
LENGTHS_NAME = "lengths"
OUTPUT_NAMES = ("probabilities", "decisions")
REFER_NAME = "refer"  # a third output when the bundle refers uncertain records
ONNX_ARTIFACT_DIR = "onnx"
ONNX_FILE = "model.onnx"


class OnnxExportError(EnsembleError):
    """The bundle cannot be exported, or the exported graph disagrees with it."""


class UnsupportedCalibratorError(OnnxExportError):
    """A label's calibrator has no exact ONNX form."""


@dataclass(frozen=True)
class ExportOptions:
    """``opset``: ONNX opset of the graph; ``check_records``: synthetic records the graph is
    checked on when no data is given; ``tolerance``: largest accepted |probability
    difference| against the bundle; ``seed``: of the synthetic records; ``standard_ops``: keep
    to standard ONNX operators (the attention then unfused) for runtimes other than ONNX
    Runtime, instead of its fused ``com.microsoft.MultiHeadAttention``."""

    opset: int = 18
    check_records: int = 8
    tolerance: float = 1e-4
    seed: int = 0
    batch_size: int = 32  # records per ONNX Runtime call during the check
    standard_ops: bool = False


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float
    n_checked: int
    decisions_agree: float  # fraction of (record, label) decisions equal to the bundle's
    metadata: dict[str, str]


# --------------------------------------------------------------------------------------------
# Calibrators as torch ops (exported to ONNX as they are written).


def _clip(p: torch.Tensor, lo: float = EPS, hi: float = 1.0 - EPS) -> torch.Tensor:
    return torch.clamp(p, lo, hi)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = _clip(p)
    return torch.log(p) - torch.log1p(-p)


class _Affine(nn.Module):
    """``clip(sigmoid(a * logit(p) + b))``: temperature (a = 1/T, b = 0) and Platt."""

    def __init__(self, a: float, b: float, add_b: bool) -> None:
        super().__init__()
        self.a, self.b, self.add_b = float(a), float(b), add_b

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        z = _logit(p) * self.a
        if self.add_b:
            z = z + self.b
        return _clip(torch.sigmoid(z))


class _Identity(nn.Module):
    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return torch.clamp(p, 0.0, 1.0)


class _Interp(nn.Module):
    """``clip(np.interp(p, x, y))`` for strictly increasing knots ``x``: segment j = number of
    knots <= p, minus one (kept inside the table); value ``slope_j * (p - x_j) + y_j`` with
    numpy's own slope; constant ``y_0`` / ``y_-1`` outside [x_0, x_-1]."""

    x: torch.Tensor
    y: torch.Tensor
    slope: torch.Tensor

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1]) if len(x) > 1 else np.zeros(0)
        self.register_buffer("x", torch.from_numpy(x.copy()))
        self.register_buffer("y", torch.from_numpy(y.copy()))
        # One pad entry so a one-knot map has a (never selected) segment to gather.
        self.register_buffer("slope", torch.from_numpy(np.append(slope, 0.0)))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        n = self.x.shape[0]
        count = (p.unsqueeze(-1) >= self.x).sum(-1)
        j = torch.clamp(count - 1, 0, max(n - 2, 0))
        inside = self.slope[j] * (p - self.x[j]) + self.y[j]
        value = torch.where(p < self.x[0], self.y[0], inside)
        value = torch.where(p >= self.x[n - 1], self.y[n - 1], value)
        return _clip(value)


def _calibrator_module(cal: Calibrator, label: str) -> nn.Module:
    """The exact torch form of one label's calibrator, or `UnsupportedCalibratorError`."""
    kind = type(cal)  # exact types: a subclass may compute something else
    c: Any = cal
    if kind is IdentityCalibrator:
        return _Identity()
    if kind is TemperatureCalibrator:
        return _Affine(1.0 / c.temperature_, 0.0, add_b=False)
    if kind is PlattCalibrator:
        return _Affine(c.a_, c.b_, add_b=True)
    if kind is IsotonicCalibrator:
        x = np.asarray(c.x_thresholds_, np.float64)
        ok = x.ndim == 1 and x.size >= 1 and x.shape == np.shape(c.y_thresholds_)
        if not ok or not np.isfinite(x).all() or (np.diff(x) <= 0).any():
            raise UnsupportedCalibratorError(
                f"label {label}: isotonic calibrator with repeated or unordered knots has no "
                "exact piecewise-linear form; refusing to approximate it"
            )
        return _Interp(x, c.y_thresholds_)
    raise UnsupportedCalibratorError(
        f"label {label}: calibrator {getattr(cal, 'name', kind.__name__)!r} "
        f"({kind.__name__}) cannot be expressed exactly in ONNX; supported: identity, "
        "temperature, platt, isotonic"
    )


# --------------------------------------------------------------------------------------------
# The whole ensemble as one module.


def _spread_starts(span: torch.Tensor, n_windows: int) -> torch.Tensor:
    """`data_prep.spread_starts` in integer tensor arithmetic: (N,) spans -> (N, W) starts."""
    span = span[:, None]
    if n_windows == 1:
        return torch.div(span, 2, rounding_mode="floor")
    d = n_windows - 1
    prod = span * torch.arange(n_windows, dtype=torch.int64)
    q = torch.div(prod, d, rounding_mode="floor")
    r = prod - q * d
    up = (2 * r > d) | ((2 * r == d) & (q % 2 == 1))
    return q + up.to(torch.int64)


class _Inputs(nn.Module):
    """int16 records and their real lengths -> (N * W, 12, L) float32 windows over the real
    signal (`data_prep.record_window_starts`), normalised as `data_prep.normalize`."""

    a: torch.Tensor
    b: torch.Tensor

    def __init__(self, spec: MemberSpec, predictor: EnsemblePredictor) -> None:
        super().__init__()
        inputs = predictor.inputs
        self.mode = spec.normalization
        self.length = spec.crop_len
        self.n_samples = inputs.n_samples
        self.n_windows = predictor.n_windows
        self.scale = float(np.float32(1.0 / inputs.gain))
        if self.mode == "dataset":
            # Same float32 constants as data_prep.dataset_affine.
            std = np.asarray(inputs.norm_std, np.float64)
            a = (1.0 / (inputs.gain * std)).astype(np.float32)
            b = (-np.asarray(inputs.norm_mean, np.float64) / std).astype(np.float32)
            self.register_buffer("a", torch.from_numpy(a).reshape(NUM_LEADS, 1))
            self.register_buffer("b", torch.from_numpy(b).reshape(NUM_LEADS, 1))

    def forward(self, signals: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = signals.to(torch.float32)
        if self.mode == "dataset":
            # Elementwise, so normalising the whole record once equals normalising windows.
            x = x * self.a + self.b
        n, w, length = x.shape[0], self.n_windows, self.length
        span = torch.clamp(lengths, min=length, max=self.n_samples) - length
        index = (_spread_starts(span, w)[:, :, None]
                 + torch.arange(length, dtype=torch.int64))  # (N, W, L)
        windows = torch.gather(
            x[:, None].expand(n, w, NUM_LEADS, self.n_samples), 3,
            index[:, :, None, :].expand(n, w, NUM_LEADS, length))
        if self.mode == "record":
            windows = windows * self.scale
            mu = windows.mean(dim=-1, keepdim=True)
            sd = torch.sqrt(((windows - mu) ** 2).mean(dim=-1, keepdim=True))
            windows = (windows - mu) / torch.clamp(sd, min=RECORD_STD_FLOOR_MV)
        return windows.reshape(-1, NUM_LEADS, self.length)


class EnsembleGraph(nn.Module):
    """`EnsemblePredictor.predict_signals` and its threshold decisions as one module."""

    thresholds: torch.Tensor
    member_weights: torch.Tensor

    def __init__(self, predictor: EnsemblePredictor) -> None:
        super().__init__()
        cal = predictor.calibrator
        names = predictor.label_names
        calibrators = getattr(cal, "calibrators_", None)
        if calibrators is None or len(calibrators) != len(names):
            raise UnsupportedCalibratorError(
                f"calibrator {getattr(cal, 'name', type(cal).__name__)!r} is not one fitted "
                "calibrator per label"
            )
        self.calibrators = nn.ModuleList(
            _calibrator_module(c, n) for c, n in zip(calibrators, names, strict=True))
        self.n_windows = predictor.n_windows
        keys = sorted({(s.crop_len, s.normalization) for s, _ in predictor.members})
        self.input_keys = keys
        self.inputs = nn.ModuleList(
            _Inputs(next(s for s, _ in predictor.members
                         if (s.crop_len, s.normalization) == k), predictor) for k in keys)
        self.member_input = [keys.index((s.crop_len, s.normalization))
                             for s, _ in predictor.members]
        self.members = nn.ModuleList(m.cpu().eval() for _, m in predictor.members)
        self.weights = [float(w) for w in predictor.weights]
        self.register_buffer("thresholds", torch.from_numpy(
            np.asarray(predictor.thresholds, np.float64).copy()))
        referral = getattr(predictor, "referral", None)
        self.refers = referral is not None
        self.refer_at = float(referral.threshold) if referral is not None else 0.0
        w = np.asarray(self.weights, np.float64)
        self.register_buffer("member_weights", torch.from_numpy(w / w.sum()))

    def forward(self, signals: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        n = signals.shape[0]
        # One length per record, also when the graph's default (a single full length) is used.
        lengths = lengths.to(torch.int64) + torch.zeros_like(signals[:, 0, 0], dtype=torch.int64)
        windows = [inputs(signals, lengths) for inputs in self.inputs]  # shared by members
        total = None
        means = []
        for model, which, w in zip(self.members, self.member_input, self.weights, strict=True):
            probs = torch.sigmoid(model(windows[which]).float())
            mean = probs.to(torch.float64).reshape(n, self.n_windows, -1).mean(dim=1)
            means.append(mean)
            total = mean * w if total is None else total + mean * w
        assert total is not None
        calibrated = torch.stack(
            [c(total[:, i]) for i, c in enumerate(self.calibrators)], dim=1)
        decisions = calibrated >= self.thresholds
        if not self.refers:
            return calibrated, decisions
        # `ensembles.build.referral.referral_scores`: member spread minus threshold margin.
        z = torch.stack([_logit(m) for m in means])  # (M, N, C)
        share = self.member_weights[:, None, None]
        centre = (share * z).sum(dim=0)
        spread = torch.sqrt((share * (z - centre) ** 2).sum(dim=0))
        margin = torch.abs(_logit(calibrated) - _logit(self.thresholds))
        score = (spread - margin).amax(dim=1)
        return calibrated, decisions, score >= self.refer_at


def build_graph_module(predictor: EnsemblePredictor) -> EnsembleGraph:
    """The ensemble as one eval-mode CPU module (raises `UnsupportedCalibratorError` first)."""
    return EnsembleGraph(predictor).eval()


# --------------------------------------------------------------------------------------------
# Export, metadata, check.


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SYNTHETIC_NOTE = ("trained on synthetic records only: its outputs show the pipeline working, "
                  "they are not diagnoses")


def onnx_metadata(bundle: Bundle) -> dict[str, str]:
    """The graph's metadata_props (strings; JSON where structured). ``bundle_sha256`` is the
    sha256 of the bundle's manifest.json, which holds the sha256 of every other bundle file."""
    from ecgtune.data_prep import is_synthetic

    meta = bundle.metadata
    fit = meta.get("fit", {}) if isinstance(meta.get("fit"), dict) else {}
    trained_on = dict(fit.get("trained_on") or {})
    spec = bundle.inputs
    calibrators = bundle.calibrator.calibrators_
    contract = {
        "name": INPUT_NAME, "dtype": "int16", "shape": ["N", NUM_LEADS, spec.n_samples],
        "fs": spec.fs, "seconds": spec.seconds, "gain_units_per_mV": spec.gain,
        "leads": "I II III aVR aVL aVF V1 V2 V3 V4 V5 V6",
        "preprocessing": "as `ecgtune prep` stores records: resampled to fs, centre-cropped or "
                         "zero-padded to n_samples",
        "optional": {LENGTHS_NAME: "int64 (N,): samples of real signal per record before the "
                                   "zero padding (prep's `length` column); windows cover the "
                                   "real signal only; default: every record full length"},
    }
    outputs = {
        OUTPUT_NAMES[0]: "float64 (N, labels): calibrated probabilities, label order as labels",
        OUTPUT_NAMES[1]: "bool (N, labels): probability >= the label's threshold",
    }
    referral = getattr(bundle, "referral", None)
    if referral is not None:
        outputs[REFER_NAME] = (f"bool (N,): refer the record (uncertainty >= "
                               f"{referral.threshold:.6g}, chosen to refer {referral.rate:g} "
                               "of the calibration fold)")
    return {
        "ecgtune.format": ONNX_FORMAT,
        "ecgtune.version": library_versions(("ecgtune",), prefix="").get("ecgtune", "unknown"),
        "labels": json.dumps(list(bundle.label_names)),
        "label_map": str(bundle.label_map),
        "thresholds": json.dumps([float(t) for t in bundle.thresholds]),
        "threshold_policy": json.dumps(fit.get("thresholds")),
        "calibration": json.dumps([c.name for c in calibrators]),
        "members": json.dumps({s.name: float(w) for (s, _), w
                               in zip(bundle.members, bundle.weights, strict=True)}),
        "n_windows": str(bundle.n_windows),
        **({"referral": json.dumps(referral.to_dict())} if referral is not None else {}),
        "input": json.dumps(contract),
        "outputs": json.dumps(outputs),
        "bundle_sha256": _sha256_file(bundle.path / MANIFEST_FILE),
        "data_manifest_sha256": str(fit.get("data_manifest_sha256") or ""),
        # Where the training records came from, and for synthetic ones what that means: the
        # graph travels without its bundle, so it says so itself.
        "trained_on": json.dumps(trained_on),
        **({"note": SYNTHETIC_NOTE} if is_synthetic(trained_on) else {}),
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """metadata_props of an exported graph, without loading its weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _to_onnx(module: EnsembleGraph, n_samples: int, opset: int) -> Any:
    """torch.onnx (dynamo) export with a dynamic batch dimension -> onnx.ModelProto."""
    import warnings

    example = torch.zeros((2, NUM_LEADS, n_samples), dtype=torch.int16)
    lengths = torch.full((2,), n_samples, dtype=torch.int64)
    # "torchvision is not installed", and hundreds of INFO lines from the graph optimiser
    # when the CLI logs at INFO.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                module, (example, lengths), dynamo=True, input_names=[INPUT_NAME, LENGTHS_NAME],
                output_names=[*OUTPUT_NAMES, *([REFER_NAME] if module.refers else [])],
                opset_version=opset, verbose=False,
                dynamic_shapes=({0: batch}, {0: batch}), optimize=True,
            )
    except Exception as exc:
        raise OnnxExportError(f"torch.onnx.export failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    assert program is not None  # dynamo=True always returns the program
    model = program.model_proto
    _default_lengths(model, n_samples)
    return model


def _default_lengths(model: Any, n_samples: int) -> None:
    """Make the lengths input optional: an initializer of the same name (one full length,
    broadcast to every record in the graph) that a caller's own lengths override."""
    import onnx

    graph = model.graph
    graph.initializer.append(onnx.numpy_helper.from_array(
        np.array([n_samples], np.int64), LENGTHS_NAME))
    for value in graph.input:
        if value.name == LENGTHS_NAME:  # any number of lengths: N, or the default's one
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = "n_lengths"


def open_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Errors only: ONNX Runtime warns on every load that the optional `lengths` input, an
    # initializer that a caller may override, is not constant-folded; that is the point of it.
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, signals: np.ndarray, batch_size: int = 32,
                lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, decisions) of an exported graph for int16 records, in batches;
    `lengths`: real samples per record (None: the graph's default, full length)."""
    probs, decisions, _ = _run(session, signals, batch_size, lengths, refer=False)
    return probs, decisions


def run_session_refer(session: Any, signals: np.ndarray, batch_size: int = 32,
                      lengths: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, decisions, refer) of a graph exported from a bundle with a
    referral."""
    probs, decisions, refer = _run(session, signals, batch_size, lengths, refer=True)
    assert refer is not None
    return probs, decisions, refer


def _run(session: Any, signals: np.ndarray, batch_size: int, lengths: np.ndarray | None,
         refer: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    names = [*OUTPUT_NAMES, *([REFER_NAME] if refer else [])]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(signals), batch_size):
        feed = {INPUT_NAME: signals[start:start + batch_size]}
        if lengths is not None:
            feed[LENGTHS_NAME] = np.asarray(lengths[start:start + batch_size], np.int64)
        for part, value in zip(parts, session.run(names, feed), strict=True):
            part.append(value)
    out = [np.concatenate(p) for p in parts]
    return out[0], out[1], out[2] if refer else None


def sample_signals(n_records: int, n_samples: int, fs: int, seconds: float, seed: int = 0
                   ) -> np.ndarray:
    """Synthetic records (`data_prep.make_record`), int16 (n, 12, n_samples)."""
    from ecgtune.data_prep import make_record

    out = np.zeros((n_records, NUM_LEADS, n_samples), np.int16)
    for i in range(n_records):
        sig = make_record(seed, i, fs=fs, seconds=seconds)[1][:, :n_samples]
        out[i, :, : sig.shape[1]] = sig
    return out


def shard_signals(data_dir: str | os.PathLike[str], n_records: int) -> np.ndarray:
    """The first ``n_records`` records of prepared shards (manifest order), checksums
    verified."""
    from ecgtune.data_prep.shards import read_manifest, read_shard, signals_from_table

    data_dir = Path(data_dir)
    parts: list[np.ndarray] = []
    have = 0
    for shard in read_manifest(data_dir)["shards"]:
        if have >= n_records:
            break
        table = read_shard(data_dir / shard["file"], ["signal"], shard["sha256"])
        parts.append(signals_from_table(table)[: n_records - have])
        have += len(parts[-1])
    if not have:
        raise OnnxExportError(f"{data_dir}: the shards hold no records to check the graph on")
    return np.concatenate(parts)


def check_lengths(n_records: int, n_samples: int, crop_len: int, seed: int = 0) -> np.ndarray:
    """Real lengths that walk the window policy: full, between one window and full, and
    shorter than one window (one window from the start)."""
    rng = np.random.default_rng(seed)
    choices = [n_samples, max(crop_len // 2, 1), crop_len]
    drawn = rng.integers(crop_len, n_samples + 1, size=max(n_records - len(choices), 0))
    return np.concatenate([choices, drawn])[:n_records].astype(np.int64)


def check_onnx(path: str | os.PathLike[str], bundle: EnsemblePredictor, signals: np.ndarray,
               batch_size: int = 32) -> tuple[float, float]:
    """(max |probability difference|, fraction of equal decisions) of the graph against the
    bundle on ``signals``, at full length (the graph's default) and at real lengths that
    exercise the short-record windows. With a referral the refer flags count as decisions
    too."""
    try:
        bundle.inputs.check(signals)
    except ValueError as exc:  # e.g. --check-data prepared at another rate or length
        raise OnnxExportError(f"check records do not fit the bundle: {exc}") from None
    session = open_session(path)
    crop = min(spec.crop_len for spec, _ in bundle.members)
    short = signals[: min(len(signals), 4)]
    cases = [(signals, None),
             (short, check_lengths(len(short), bundle.inputs.n_samples, crop))]
    diff, agree, total = 0.0, 0.0, 0
    refers = getattr(bundle, "referral", None) is not None
    for records, lengths in cases:
        expected, expected_refer = bundle.predict_with_referral(records, lengths=lengths)
        probs, decisions, refer = _run(session, records, batch_size, lengths, refers)
        if probs.shape != expected.shape:
            raise OnnxExportError(f"the graph returned {probs.shape} probabilities, the "
                                  f"bundle {expected.shape}")
        if probs.size:
            worst = float(np.max(np.abs(probs - expected)))
            diff = worst if (np.isnan(worst) or worst > diff) else diff  # NaN must fail
            agree += float(np.sum(decisions == (expected >= bundle.thresholds)))
            total += decisions.size
            if refer is not None:
                agree += float(np.sum(refer == expected_refer))
                total += refer.size
    return diff, agree / total if total else 1.0


def export_onnx(bundle_dir: str | os.PathLike[str], output: str | os.PathLike[str],
                options: ExportOptions = ExportOptions(),
                check_signals: np.ndarray | None = None,
                check_data: str | os.PathLike[str] | None = None) -> ExportResult:
    """Export a bundle directory as one ONNX graph at ``output`` and check it against the
    bundle (on ``check_signals``, else the first ``options.check_records`` records of the
    prepared data ``check_data``, else as many synthetic records). The file appears only when
    the check passes; otherwise `OnnxExportError` says by how much. Data prepared for another
    input than the bundle's is refused first (`ModelInputError`, one line)."""
    import onnx

    from ecgtune.data_prep.shards import read_manifest

    stage(f"loading the bundle {bundle_dir}")
    bundle = load_bundle(bundle_dir, device="cpu")
    if check_data is not None:  # before the trace, which takes a while
        bundle.inputs.check_data(read_manifest(Path(check_data)), data=str(check_data),
                                 model=str(bundle_dir))
        if check_signals is None:
            check_signals = shard_signals(check_data, options.check_records)
    module = build_graph_module(bundle)  # refuses inexpressible calibrators before exporting
    metadata = onnx_metadata(bundle)
    spec = bundle.inputs
    exported = for_export(module)
    stage(f"tracing the {len(bundle.members)}-member ensemble into an ONNX graph "
          "(torch.onnx.export)")
    model = _to_onnx(exported, spec.n_samples, options.opset)
    rewrites = rewrite_graph(model, None if options.standard_ops else attention_heads(exported))
    log.debug("graph rewrites: %s", rewrites)
    metadata["operators"] = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}"
                                      for o in sorted(model.opset_import, key=lambda o: o.domain))
    model.producer_name = "ecgtune"
    model.producer_version = metadata["ecgtune.version"]
    model.doc_string = (f"ecgtune ensemble of {len(bundle.members)} members: int16 records "
                        f"(N, 12, {spec.n_samples}) -> calibrated probabilities, decisions"
                        + (f". {metadata['note']}" if "note" in metadata else ""))
    onnx.helper.set_model_props(model, metadata)
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        try:
            onnx.save_model(model, str(tmp))
        except OSError as exc:  # name the file the user asked for, not its temporary twin
            raise OSError(exc.errno, exc.strerror, str(output)) from None
        stage("checking the graph (onnx.checker, full check)")
        onnx.checker.check_model(str(tmp), full_check=True)
        signals = check_signals if check_signals is not None else sample_signals(
            options.check_records, spec.n_samples, spec.fs, spec.seconds, options.seed)
        stage(f"running the graph and the bundle on {len(signals)} records")
        diff, agree = check_onnx(tmp, bundle, signals, options.batch_size)
        if not diff <= options.tolerance:  # NaN fails too
            raise OnnxExportError(
                f"the ONNX graph differs from the bundle by up to {diff:.3g} in probability "
                f"on {len(signals)} records (tolerance {options.tolerance:g}); not written")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(output, diff, len(signals), agree, metadata)


def resolve_bundle(source: str, tracking_uri: str | None, workdir: str | os.PathLike[str]
                   ) -> Path:
    """A bundle directory for ``source``: a directory as is (MLflow is not touched), or
    ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) downloaded into ``workdir`` from the
    registry of ``tracking_uri``, else of MLFLOW_TRACKING_URI (MLFLOW_REGISTRY_URI when set),
    else of `mlflow.db` in the working folder, which must exist: reading a model never
    creates a store."""
    if not source.startswith("models:/"):
        return Path(source)
    from mlflow.artifacts import download_artifacts

    from ecgtune.ensembles.ship.bundle import is_bundle
    from ecgtune.ensembles.ship.registry import quiet_mlflow
    from ecgtune.search import tracking
    from ecgtune.search.errors import TrackingError

    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        tracking.check_tracking_uri(uri, must_exist=True)
    except TrackingError as exc:
        raise OnnxExportError(f"cannot fetch {source}: {exc}") from None
    stage(f"fetching {source} from {uri}")
    try:
        # MLflow resolves `models:/` with clients of its own, built from the process-wide
        # URIs, not from the ones a download is given.
        with tracking.mlflow_uris(uri), quiet_mlflow():
            local = Path(download_artifacts(artifact_uri=source, dst_path=str(workdir),
                                            tracking_uri=uri,
                                            registry_uri=tracking.resolve_registry_uri(uri)))
    except Exception as exc:  # MLflow raises its own exception types
        raise OnnxExportError(f"cannot fetch {source} from {uri}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from None
    found = [p.parent for p in sorted(local.rglob(MANIFEST_FILE)) if is_bundle(p.parent)]
    if not found:
        raise OnnxExportError(f"{source} holds no ecgtune bundle (an ensemble pyfunc model "
                              "logged by `ecgtune ensemble` is expected)")
    return found[0]


def log_onnx_artifact(client: Any, run_id: str, bundle_dir: str | os.PathLike[str],
                      options: ExportOptions = ExportOptions()) -> Path | None:
    """Export the bundle and log the graph to the run as ``onnx/model.onnx``, with the check's
    max difference as a metric. The pyfunc model stays the primary artifact, so a failed
    export is a warning and a run tag (``ecgtune.onnx_export_error``), not a failed build."""
    with tempfile.TemporaryDirectory(prefix="ecgtune-onnx-") as tmp:
        try:
            result = export_onnx(bundle_dir, Path(tmp) / ONNX_FILE, options)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:5000]
            log.warning("ONNX export of the ensemble skipped: %s", message)
            client.set_tag(run_id, "ecgtune.onnx_export_error", message)
            return None
        client.log_artifact(run_id, str(result.path), ONNX_ARTIFACT_DIR)
        client.log_metric(run_id, "onnx/max_abs_diff", result.max_abs_diff)
    return Path(ONNX_ARTIFACT_DIR) / ONNX_FILE
