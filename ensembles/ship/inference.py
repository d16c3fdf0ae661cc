"""Member -> probabilities for int16 signals, and the ensemble predictor built on it.

`member_probabilities` is the only implementation of a member's inference: the ensemble build
uses it on the ensemble and test folds; the exported bundle, the MLflow pyfunc model and
`ecgtune predict` all go through `EnsemblePredictor`, which calls it. So the in-process
ensemble, the bundle and the served model cannot drift apart.

Per member, deterministically: ``n_windows`` evenly spaced windows of the member's own crop
length (`data_prep.fixed_windows`; one window is centred, as in validation), normalised exactly
as the batch loader did in training (`data_prep.normalize` with the manifest's train-fold
statistics and the member's mode), sigmoid probabilities averaged over the windows. All
windows of a batch of records go through the model as one tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgtune.components import ModelConfig
from ecgtune.data_prep import fixed_windows, normalize
from ecgtune.ensembles.build.calibration import PerLabelCalibrator
from ecgtune.ensembles.build.referral import Referral, referral_scores
from ecgtune.ensembles.options import DEFAULT_BATCH_SIZE, DEFAULT_WINDOWS, PRECISIONS
from ecgtune.ensembles.ship.input_spec import NUM_LEADS, InputSpec
from ecgtune.search.devices import resolve_device

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WINDOWS",
    "EnsemblePredictor",
    "InputSpec",
    "MemberSpec",
    "member_probabilities",
    "resolve_device",
]

# Windows per forward pass: on CPU, time per window falls up to ~100 windows and rises beyond
# (activations outgrow the caches); a GPU takes many more (`forward_windows`).
MAX_FORWARD = 96
GPU_MAX_FORWARD = 1024


def forward_windows(device: torch.device, crop_len: int) -> int:
    """Windows per forward pass: MAX_FORWARD on a CPU; on a GPU as many as a quarter of its
    free memory holds at ~2.5 KiB per input sample (10 MiB per 4,096-sample window; without
    autograd only a few layers' activations are alive at once). `make gpu-check` ran `seed`
    at 768 windows per pass this way on an H200."""
    if device.type != "cuda":
        return MAX_FORWARD
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(free / 4 / (2560 * crop_len))
    return max(MAX_FORWARD, min(GPU_MAX_FORWARD, fit))


@contextmanager
def _numerics(device: torch.device, precision: str) -> Iterator[None]:
    """fp32 means fp32: TF32 convolutions (cuDNN's default on Ampere+) would move GPU
    probabilities ~1e-3 away from the CPU's and the bundle's. bf16 is the opt-in fast path."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield
        return
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@dataclass(frozen=True)
class MemberSpec:
    """Everything needed to rebuild one member and feed it: its model config and label
    layout, and the crop length and normalisation mode its trial trained with."""

    name: str
    config: ModelConfig
    num_labels: int
    label_groups: tuple[tuple[int, ...], ...]
    crop_len: int
    normalization: str
    group_names: tuple[str, ...] = ()  # lower-case; pick per-branch architectures

    def __post_init__(self) -> None:
        if self.normalization not in ("dataset", "record"):
            raise ValueError(f"member {self.name}: unknown normalization {self.normalization!r}")
        if self.crop_len < 1:
            raise ValueError(f"member {self.name}: crop_len must be >= 1")

    @property
    def is_seed_style(self) -> bool:
        """Like the seed multi-model: one branch per label group, each predicting its own
        group's labels (`independent` fusion)."""
        groups = len(self.label_groups)
        branches = self.config.n_branches or groups
        return self.config.fusion == "independent" and groups > 1 and branches == groups

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "num_labels": self.num_labels,
            "label_groups": [list(g) for g in self.label_groups],
            "crop_len": self.crop_len,
            "normalization": self.normalization,
            # only where a branch has its own architecture: other bundles stay byte-identical
            **({"group_names": list(self.group_names)} if self.config.branches else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberSpec:
        return cls(
            name=str(data["name"]),
            config=ModelConfig.from_dict(data["config"]),
            num_labels=int(data["num_labels"]),
            label_groups=tuple(tuple(int(i) for i in g) for g in data["label_groups"]),
            crop_len=int(data["crop_len"]),
            normalization=str(data["normalization"]),
            group_names=tuple(str(n) for n in data.get("group_names") or ()),
        )


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def member_probabilities(
    model: nn.Module,
    spec: MemberSpec,
    signals: np.ndarray,
    inputs: InputSpec,
    n_windows: int = DEFAULT_WINDOWS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    max_forward: int | None = None,
    precision: str = "fp32",
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities (N, C) float64 of one member for int16 signals (N, 12, n_samples).

    ``lengths``: samples of real signal per record (None: all full length); the windows of a
    shorter record cover its real signal only (`data_prep.record_window_starts`).
    ``batch_size`` records are cropped and normalised at once; their windows go through the
    model in forward passes of at most ``max_forward`` windows (None: sized for the
    device)."""
    device = torch.device(device)
    if max_forward is None:
        max_forward = forward_windows(device, spec.crop_len)
    inputs.check(signals)
    lengths = inputs.check_lengths(lengths, len(signals))
    if spec.crop_len > inputs.n_samples:
        raise ValueError(
            f"member {spec.name}: crop length {spec.crop_len} exceeds the signal length "
            f"{inputs.n_samples}"
        )
    if n_windows < 1 or batch_size < 1 or max_forward < 1:
        raise ValueError("n_windows, batch_size and max_forward must be >= 1")
    model.eval()
    stats = inputs.norm_stats if spec.normalization == "dataset" else None
    out = np.empty((len(signals), spec.num_labels), dtype=np.float64)
    for part in _batches(len(signals), batch_size):
        windows = fixed_windows(signals[part], spec.crop_len, n_windows,
                                None if lengths is None else lengths[part])  # (B, W, 12, L)
        x = normalize(windows, stats, inputs.gain, spec.normalization)
        b = x.shape[0]
        flat = torch.from_numpy(x.reshape(b * n_windows, NUM_LEADS, spec.crop_len))
        with _numerics(device, precision):
            probs = torch.cat([
                torch.sigmoid(model(flat[i : i + max_forward].to(device)).float())
                for i in range(0, len(flat), max_forward)
            ]).cpu().numpy().astype(np.float64)
        out[part] = probs.reshape(b, n_windows, -1).mean(axis=1)
    return out


class EnsemblePredictor:
    """Weighted average of member probabilities, then per-label calibration; thresholds give
    label sets. Built in process by the ensemble build and rebuilt by `load_bundle`.

    ``weights`` (one per member, > 0) are normalised to sum to one; the average is the same
    ``tensordot`` the `EnsembleSelector` computes, so both agree to the last bit. With a
    ``referral`` (`ensembles.build.referral`), `predict_with_referral` also flags the records
    to refer.
    """

    def __init__(
        self,
        members: Sequence[tuple[MemberSpec, nn.Module]],
        weights: Sequence[float],
        calibrator: PerLabelCalibrator,
        thresholds: Sequence[float] | np.ndarray,
        label_names: Sequence[str],
        inputs: InputSpec,
        n_windows: int = DEFAULT_WINDOWS,
        label_map: str = "manifest",
        label_groups: Sequence[Sequence[int]] = (),
        group_names: Sequence[str] = (),
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        referral: Referral | None = None,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(members),) or not (w > 0).all():
            raise ValueError("need one positive weight per member")
        self.label_names = [str(x) for x in label_names]
        n_labels = len(self.label_names)
        for spec, _ in members:
            if spec.num_labels != n_labels:
                raise ValueError(
                    f"member {spec.name} predicts {spec.num_labels} labels, the ensemble "
                    f"{n_labels}"
                )
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.shape != (n_labels,):
            raise ValueError(f"need {n_labels} thresholds, got {self.thresholds.shape}")
        if getattr(calibrator, "n_labels_", n_labels) != n_labels:
            raise ValueError("calibrator and label names disagree on the number of labels")
        self.device = resolve_device(device)
        self.precision = precision
        self.members = [(spec, model.to(self.device).eval()) for spec, model in members]
        self.weights = w / w.sum()
        self.calibrator = calibrator
        self.inputs = inputs
        self.n_windows = int(n_windows)
        self.label_map = label_map
        self.label_groups = [list(g) for g in label_groups]
        self.group_names = list(group_names)
        self.referral = referral

    @property
    def member_names(self) -> list[str]:
        return [spec.name for spec, _ in self.members]

    def member_probabilities(
        self, signals: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
        lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """(M, N, C) probabilities of every member."""
        signals = np.asarray(signals)
        return np.stack([
            member_probabilities(model, spec, signals, self.inputs, self.n_windows, batch_size,
                                 self.device, precision=self.precision, lengths=lengths)
            for spec, model in self.members
        ])

    def predict_uncalibrated(
        self, signals: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
        lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        return np.tensordot(
            self.weights, self.member_probabilities(signals, batch_size, lengths), axes=1)

    def predict_signals(
        self, signals: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
        lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Calibrated probabilities (N, C), label-map order, for int16 (N, 12, n_samples);
        `lengths`: real samples per record (None: all full length)."""
        return self.calibrator.predict(self.predict_uncalibrated(signals, batch_size, lengths))

    def predict_with_referral(
        self, signals: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
        lengths: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, C) and the refer flags (N,) bool (all False without a
        referral), from one pass of the members."""
        members = self.member_probabilities(signals, batch_size, lengths)
        probs = self.calibrator.predict(np.tensordot(self.weights, members, axes=1))
        if self.referral is None:
            return probs, np.zeros(len(probs), dtype=bool)
        scores = referral_scores(members, self.weights, probs, self.thresholds)
        return probs, self.referral.refer(scores)

    def predicted_labels(self, probs: np.ndarray) -> list[list[str]]:
        """Label names with ``p >= threshold``, per record, in label-map order."""
        hits = np.asarray(probs) >= self.thresholds
        return [[self.label_names[j] for j in np.flatnonzero(row)] for row in hits]
