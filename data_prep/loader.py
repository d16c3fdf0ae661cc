"""Batches for training and evaluation from an in-memory ECGDataset.

Every batch is built with whole-batch numpy operations: one gather through a sliding-window
view picks each record's crop (random start in training, the centred window in evaluation),
a cast and one multiply-add standardise it, labels come from one fancy index. No per-sample
Python work and no I/O inside the loop. Each batch is a pure function of (seed, epoch, batch
index), so batches can be built ahead in threads (numpy releases the GIL while copying) and
still come out identical and in order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .dataset import (
    RECORD_STD_FLOOR_MV,
    ECGDataset,
    _affine,
    dataset_affine,
    normalize,
    standardize_records,
    to_millivolts,
    window_starts,
)

__all__ = ["AugmentConfig", "BatchLoader", "DeviceBatchTransform"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied in mV before standardisation."""

    scale: tuple[float, float] | None = (0.9, 1.1)  # one amplitude factor per record
    noise_std: float = 0.01  # mV, white Gaussian noise
    baseline_shift_std: float = 0.0  # mV, one constant offset per record and lead


class BatchLoader:
    """Iterates (x, y): x float32 (B, 12, crop_len), y float32 (B, C).

    train=True: a new shuffle and new random crops each epoch (seeded by seed and epoch), with
    drop_last by default; train=False: dataset order, centred crops, deterministic.
    normalization: "dataset" (manifest train-fold per-lead mean/std, in mV) or "record"
    (per-record, per-lead z-score). threads > 1 builds batches in parallel; prefetch > 0 builds
    up to that many batches ahead in the background (useful while a GPU trains).
    raw=True yields the int16 crops unnormalised (and unaugmented): a `DeviceBatchTransform`
    then does that work on the GPU, and the host copies half the bytes.
    """

    def __init__(
        self,
        dataset: ECGDataset,
        batch_size: int,
        crop_len: int = 4096,
        train: bool = True,
        seed: int = 0,
        normalization: str = "dataset",
        augment: AugmentConfig | None = None,
        drop_last: bool | None = None,
        pin_memory: bool = False,
        prefetch: int = 0,
        threads: int = 1,
        raw: bool = False,
    ) -> None:
        n_samples = dataset.signals.shape[-1]
        if not 0 < crop_len <= n_samples:
            raise ValueError(f"crop_len must be in 1..{n_samples}, got {crop_len}")
        if batch_size < 1 or threads < 1 or prefetch < 0:
            raise ValueError("batch_size and threads must be >= 1, prefetch >= 0")
        if normalization not in ("dataset", "record"):
            raise ValueError(f"unknown normalization {normalization!r}; valid: dataset, record")
        self.dataset = dataset
        self.batch_size = batch_size
        self.crop_len = crop_len
        self.train = train
        self.seed = seed
        self.normalization = normalization
        self.augment = augment if train else None
        self.drop_last = train if drop_last is None else drop_last
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.prefetch = prefetch
        self.threads = threads
        self.raw = raw
        self.epoch = 0
        self._gain = dataset.gain
        self._stats = dataset.norm_stats if normalization == "dataset" else None
        if self._stats is not None:
            self._a, self._b = dataset_affine(self._stats, self._gain, crop_len)
        # A strided view of every window of every record: indexing it with (rows, starts)
        # is the whole-batch crop.
        self._windows = np.lib.stride_tricks.sliding_window_view(
            dataset.signals, crop_len, axis=-1
        )
        # Records shorter than the stored window (zero-padded by prep) are cropped within their
        # real signal; when every record is full length the crops are drawn as they always were.
        lengths = np.asarray(dataset.lengths)
        self._short = bool((lengths < n_samples).any())
        self._span = np.clip(lengths.astype(np.int64), crop_len, n_samples) - crop_len
        self._center = int(window_starts(n_samples, crop_len)[0])
        self._noise_bank: np.ndarray | None = None
        self._noise_lock = threading.Lock()

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        n = len(self.dataset)
        if self.train:  # the epoch's shuffle and every crop start, drawn up front
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            if self._short:
                starts = rng.integers(0, self._span[order] + 1)  # by position, as `order`
            else:
                starts = rng.integers(0, self.dataset.signals.shape[-1] - self.crop_len + 1, n)
        elif self._short:
            order, starts = np.arange(n), self._span // 2
        else:
            order, starts = np.arange(n), np.full(n, self._center)
        if self.threads == 1 and self.prefetch == 0:
            return (self._batch(epoch, b, order, starts) for b in range(len(self)))
        return self._ahead(epoch, order, starts)

    def _ahead(self, epoch: int, order: np.ndarray, starts: np.ndarray) -> Iterator[Batch]:
        """Batches built by a thread pool, up to max(prefetch, 2 * threads) ahead, in order."""
        depth = max(self.prefetch, 2 * self.threads)
        pending: deque[Future[Batch]] = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="BatchLoader") as pool:
            try:
                for b in range(len(self)):
                    pending.append(pool.submit(self._batch, epoch, b, order, starts))
                    if len(pending) >= depth:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # the consumer stopped early: drop what is queued
                for fut in pending:
                    fut.cancel()

    def _batch(self, epoch: int, b: int, order: np.ndarray, starts: np.ndarray) -> Batch:
        part = slice(b * self.batch_size, (b + 1) * self.batch_size)
        rows = order[part]
        crops = self._windows[rows, :, starts[part]]  # (B, 12, crop_len) int16, one gather
        if self.raw:
            x = np.ascontiguousarray(crops)
        elif self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, b])  # per batch: thread-safe
            x = self._augmented(crops, self.augment, rng)
        elif self._stats is not None:
            x = _affine(crops, self._a, self._b)  # what normalize() computes, constants cached
        else:
            x = normalize(crops, None, self._gain, self.normalization)
        y = self.dataset.labels[rows].astype(np.float32)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if self.pin_memory:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        return xt, yt

    def _augmented(
        self, crops: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
    ) -> np.ndarray:
        """Augmentation in mV, folded into the standardisation: (s x_mV + noise - mean) / std
        ("dataset"), or applied before the per-record z-score ("record")."""
        b = crops.shape[0]
        if self._stats is not None:
            x = crops.astype(np.float32)
            inv_std = self._a[:, :1] * np.float32(self._gain)  # 1 / std, (12, 1)
        else:
            x = to_millivolts(crops, self._gain)
            inv_std = np.ones((12, 1), np.float32)
        if cfg.scale is not None:
            x *= rng.uniform(*cfg.scale, size=(b, 1, 1)).astype(np.float32)
        if self._stats is not None:
            x *= self._a
            x += self._b
        if cfg.noise_std > 0:
            noise = self._noise(x.size, rng).reshape(x.shape)
            x += noise * (np.float32(cfg.noise_std) * inv_std)
        if cfg.baseline_shift_std > 0:
            shift = rng.standard_normal((b, 12, 1)).astype(np.float32)
            x += shift * (np.float32(cfg.baseline_shift_std) * inv_std)
        if self._stats is None:
            standardize_records(x)
        return x

    def _noise(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Standard normal values: a window at a random offset of a bank drawn once, because
        drawing 1.5M normals per batch would cost several times the rest of the batch."""
        with self._noise_lock:
            if self._noise_bank is None or self._noise_bank.size < 2 * size:
                self._noise_bank = np.random.default_rng([self.seed, 1 << 20]).standard_normal(
                    max(4 * size, 1 << 22), dtype=np.float32
                )
            bank = self._noise_bank
        start = int(rng.integers(0, bank.size - size + 1))
        return bank[start : start + size]


class DeviceBatchTransform:
    """The loader's normalisation and augmentation in torch, for raw int16 batches already on
    the device (a GPU): same formulas as `BatchLoader`, random draws from a torch generator
    seeded per (seed, epoch), so a resumed trial sees the same augmentation again.
    """

    def __init__(self, loader: BatchLoader, device: torch.device | str) -> None:
        device = torch.device(device)
        self.augment = loader.augment
        self.seed = loader.seed
        self.inv_gain = 1.0 / loader._gain
        self.generator = torch.Generator(device=device)
        self.set_epoch(0)
        if loader._stats is not None:  # "dataset": x * a + b, and 1/std for the noise
            a, b = dataset_affine(loader._stats, loader._gain)
            self.a: torch.Tensor | None = torch.tensor(a, device=device)  # (12, 1)
            self.b: torch.Tensor | None = torch.tensor(b, device=device)
            self.inv_std = self.a * loader._gain
        else:  # "record": noise in mV, then the per-record z-score
            self.a = self.b = None
            self.inv_std = torch.ones((12, 1), device=device)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, 1 << 21])
                                       .generate_state(1)[0]))

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.float()  # exact for int16
        cfg, b, gen, inv_std = self.augment, x.shape[0], self.generator, self.inv_std
        if self.a is None:
            x.mul_(self.inv_gain)  # mV
        if cfg is not None and cfg.scale is not None:
            lo, hi = cfg.scale
            x.mul_(torch.empty((b, 1, 1), device=x.device).uniform_(lo, hi, generator=gen))
        if self.a is not None and self.b is not None:  # set together ("dataset" stats)
            x.mul_(self.a).add_(self.b)
        if cfg is not None and cfg.noise_std > 0:
            noise = torch.randn(x.shape, device=x.device, generator=gen)
            x.add_(noise.mul_(inv_std * cfg.noise_std))
        if cfg is not None and cfg.baseline_shift_std > 0:
            shift = torch.randn((b, 12, 1), device=x.device, generator=gen)
            x.add_(shift.mul_(inv_std * cfg.baseline_shift_std))
        if self.a is None:
            mu = x.mean(dim=-1, keepdim=True)
            sd = x.std(dim=-1, keepdim=True, unbiased=False)
            x.sub_(mu).div_(sd.clamp_min(RECORD_STD_FLOOR_MV))
        return x
