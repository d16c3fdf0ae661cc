"""One trial's training loop, independent of Ray: the trainable wraps it, benchmarks time it bare.

Per epoch: train on the training folds (vectorised random crops), predict the validation fold,
compute the objective and F1 at per-label thresholds tuned on those predictions. `save` and
`restore` move everything needed to continue (weights, optimizer, schedule, history) through a
checkpoint directory that loads with `weights_only=True`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgtune.components import (
    NUM_LEADS,
    SOURCE_FS,
    build_model,
    load_checkpoint,
    load_trunk_weights,
    set_layout,
    set_trunks_frozen,
)
from ecgtune.data_prep import AugmentConfig, BatchLoader, ECGDataset
from ecgtune.data_prep.loader import DeviceBatchTransform
from ecgtune.search import autotune, checkpoint
from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M
from ecgtune.search import thresholds as T
from ecgtune.search.config import TrialConfig
from ecgtune.search.devices import (
    AUTOCAST_DTYPES,
    estimate_training_memory,
    release_memory,
    resolve_device,
    select_precision,
)
from ecgtune.search.errors import NonRetryableTrialError
from ecgtune.search.losses import get_loss
from ecgtune.search.system_metrics import EpochMonitor

# torch.compile's backend for `train.compile` (tests use a cheaper one on the CPU).
COMPILE_BACKEND = "inductor"


class NonFiniteLossError(NonRetryableTrialError):
    """The training loss became NaN or infinite; the trial cannot continue, and a retry from
    its checkpoint would diverge the same way."""


@dataclass
class EpochResult:
    metrics: dict[str, float]
    val_probs: np.ndarray
    thresholds: np.ndarray
    per_label: dict[str, dict[str, float | int | None]]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay conv/linear weights only: decaying norms and biases hurts small-batch training.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Trainer:
    """Trains one `TrialConfig` on the train folds and scores it on the validation fold."""

    def __init__(
        self,
        trial: TrialConfig,
        train_data: ECGDataset,
        val_data: ECGDataset,
        *,
        label_groups: list[list[int]] | None = None,
        label_names: list[str] | None = None,
        device: str | torch.device | None = None,
        threads: int = 1,
        transform_on_device: bool | None = None,
        cudnn_benchmark: bool = True,
        objective: str = K.OBJECTIVE,
        memory_budget: int | None = None,
    ) -> None:
        self.trial = trial
        # The result key the best epoch (and the trial's best score) is judged by.
        self.objective = objective
        self.cfg = trial.train
        self.train_data = train_data
        self.val_data = val_data
        self.device = resolve_device(device)
        self.num_labels = int(train_data.labels.shape[1])
        self.label_groups = label_groups
        self.label_names = label_names or [f"label{i}" for i in range(self.num_labels)]
        torch.manual_seed(self.cfg.seed)
        # The label map names the groups: per-branch settings pick their branch by name.
        names = train_data.label_map.group_names
        group_names = names if label_groups is not None and len(names) == len(label_groups) \
            else ()
        inputs = trial.model.input
        if inputs.fs != SOURCE_FS and train_data.fs != SOURCE_FS:
            raise ValueError(
                f"input.fs={inputs.fs} resamples the {SOURCE_FS} Hz record; this data is at "
                f"{train_data.fs} Hz (prepare it with `ecgtune prep --fs {SOURCE_FS}`)")
        self.model = build_model(trial.model, self.num_labels, label_groups,
                                 group_names).to(self.device)
        # Pretrained trunks (`branch.init`) load before the optimizer sees the weights; a
        # resumed trial's checkpoint replaces them afterwards (`restore`).
        self.pretrained = (load_trunk_weights(self.model, trial.init.init)
                           if trial.init.init else [])
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr
        )
        self.loss_fn = get_loss(self.cfg.loss)
        self.group_names = tuple(group_names)
        cuda = self.device.type == "cuda"
        if cuda:
            # Safe here: every training batch has one shape (fixed crop, drop_last).
            torch.backends.cudnn.benchmark = cudnn_benchmark
        # Precision, layout and compile mode: `auto` measured on this GPU (search.autotune).
        self.execution = self._choose_execution(memory_budget)
        self.precision = self.execution.precision
        self.layout = self.execution.layout
        self.compile_mode = self.execution.compile
        self.autocast_dtype = AUTOCAST_DTYPES[self.precision]
        set_layout(self.model, self.layout)
        self._compile(self.compile_mode)
        # fp16 (GPUs without bf16) underflows small gradients without loss scaling.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.threads = max(1, int(threads))
        self.monitor = EpochMonitor(self.device, self.threads)
        self._epoch_samples = 0
        # On a GPU the loader ships int16 crops and the GPU normalises and augments them.
        self.transform_on_device = cuda if transform_on_device is None else transform_on_device
        # A host sync per step stalls the GPU's queue; a CPU runs in step anyway.
        self.check_every = 50 if cuda else 1
        full_steps = max(1, len(train_data.labels) // self.cfg.batch_size)
        self.steps_per_epoch = (
            min(full_steps, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else full_steps
        )
        total = self.steps_per_epoch * self.cfg.epochs
        warmup = max(1, int(self.cfg.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _warmup_cosine(step, warmup, total)
        )
        self.train_loader = self._loader(train_data, train=True)
        self.val_loader = self._loader(val_data, train=False)
        self._train_transform = self._transform(self.train_loader)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf
        self.best_epoch = -1

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, data: ECGDataset, train: bool) -> BatchLoader:
        cuda = self.device.type == "cuda"
        # The trial's CPUs build batches while the model computes elsewhere (a GPU); when
        # the CPU computes too, they belong to torch.
        threads = self.threads if self.transform_on_device else 1
        return BatchLoader(
            data,
            batch_size=self.cfg.batch_size if train else max(self.cfg.batch_size, 64),
            crop_len=self.cfg.crop_len,
            train=train,
            seed=self.cfg.seed,
            normalization=self.cfg.normalization,
            augment=AugmentConfig() if (train and self.cfg.augment) else None,
            pin_memory=cuda,
            # On a GPU the next batches are cropped on the CPU while the current one trains.
            prefetch=2 * threads if self.transform_on_device else 0,
            threads=threads,
            raw=self.transform_on_device,
        )

    def _to_device(self, x: torch.Tensor, transform: DeviceBatchTransform | None
                   ) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        return transform(x) if transform is not None else x

    def _transform(self, loader: BatchLoader) -> DeviceBatchTransform | None:
        return DeviceBatchTransform(loader, self.device) if loader.raw else None

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # -- how it computes ----------------------------------------------------------------------
    def _choose_execution(self, memory_budget: int | None) -> autotune.Execution:
        select_precision(self.cfg.precision, self.device)  # refuses what this device lacks
        cuda = self.device.type == "cuda"
        if not cuda:
            return autotune.choose_execution(self.cfg, cuda=False)

        def fits(precision: str) -> bool:
            if memory_budget is None:
                return True
            estimate = estimate_training_memory(
                self.trial.model, self.num_labels, self.label_groups, self.cfg.batch_size,
                self.cfg.crop_len, precision, self.group_names)
            return estimate.total_bytes <= memory_budget

        path = autotune.choices_path()
        return autotune.choose_execution(
            self.cfg, cuda=True, device_name=torch.cuda.get_device_name(self.device),
            has_bf16=select_precision("auto", self.device) == "bf16",
            measure=self.measure_rate, fits=fits, table=autotune.read_choices(path),
            table_source=str(path))

    def measure_rate(self, precision: str, layout: str, steps: int = 3, warmup: int = 2
                     ) -> float | None:
        """Training samples/s of this trial's model at `precision` and `layout`: `steps`
        timed steps after `warmup` (cuDNN's autotuning, the allocator's growth) on a copy of
        the model with a throwaway optimizer, on random input of the trial's batch and crop.
        The trial's weights, optimizer and random state are left as they were. None when the
        candidate runs out of memory."""
        device = self.device
        batch, crop = self.cfg.batch_size, self.cfg.crop_len
        dtype = AUTOCAST_DTYPES[precision]
        cuda = device.type == "cuda"
        model: torch.nn.Module | None = None
        optimizer: torch.optim.Optimizer | None = None
        try:
            with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):
                model = copy.deepcopy(self.model).train()
                set_layout(model, layout)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
                x = torch.randn(batch, NUM_LEADS, crop, device=device)
                y = (torch.rand(batch, self.num_labels, device=device) < 0.2).float()
                start = time.perf_counter()
                for step in range(warmup + steps):
                    if step == warmup:
                        if cuda:
                            torch.cuda.synchronize(device)
                        start = time.perf_counter()
                    with (torch.autocast(device.type, dtype=dtype) if dtype is not None
                          else nullcontext()):
                        logits = model(x)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(
                        logits.float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if cuda:
                    torch.cuda.synchronize(device)
                return batch * steps / max(time.perf_counter() - start, 1e-9)
        except torch.OutOfMemoryError:
            return None
        finally:
            del model, optimizer
            release_memory()

    def _compile(self, mode: str) -> None:
        """`train.compile`: each stem and branch compiled in place (`nn.Module.compile`), so
        that parameter names, checkpoints and the optimizer see the same model; the compile
        time falls in the first epoch (`system/epoch_s`)."""
        if mode == "off":
            return
        options: dict[str, Any] = {"mode": "reduce-overhead"} if mode == "trunk-graphs" else {}
        regions = [self.model.stem, *self.model.branches]
        for region in regions:
            if not isinstance(region, torch.nn.Identity):
                region.compile(backend=COMPILE_BACKEND, **options)

    # -- training -----------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """True while this epoch keeps the pretrained trunks frozen (`branch.freeze_epochs`)."""
        return bool(self.pretrained) and self.epoch < self.trial.init.freeze_epochs

    def train_epoch(self) -> dict[str, float]:
        """One epoch of `steps_per_epoch` optimizer steps; returns loss and throughput."""
        self.model.train()
        if self.pretrained:
            # Frozen weights get no gradient, so AdamW leaves them (and their moments) as
            # they are; the epoch after the last frozen one trains everything.
            set_trunks_frozen(self.model, self.frozen)
        # Batches depend on (seed, epoch) only, so a resumed trial sees the batches an
        # uninterrupted one would have.
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        transform = self._train_transform
        if transform is not None:
            transform.set_epoch(self.epoch)
        total = torch.zeros((), device=self.device)
        # The first non-finite step and its loss, kept on the device: checked every
        # `check_every` steps and before any checkpoint, not with a host sync per step.
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        bad_loss = torch.zeros((), device=self.device)
        n_samples = 0
        start = time.perf_counter()
        self._epoch_samples = 0
        for step, (x, y) in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            x = self._to_device(x, transform)
            y = y.to(self.device, non_blocking=self.device.type == "cuda")
            with self._autocast():
                logits = self.model(x)
            loss = self.loss_fn(logits, y, self.cfg)
            first = (bad_step < 0) & ~torch.isfinite(loss)
            bad_step = torch.where(first, step, bad_step)
            bad_loss = torch.where(first, loss.detach(), bad_loss)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.detach()
            n_samples += x.shape[0]
            if (step + 1) % self.check_every == 0:
                self._check_finite(bad_step, bad_loss)
        # Before the epoch's checkpoint: a diverged trial never writes a poisoned one.
        self._check_finite(bad_step, bad_loss)
        elapsed = time.perf_counter() - start
        self._epoch_samples = n_samples
        steps = max(1, min(self.steps_per_epoch, len(loader)))
        return {
            K.TRAIN_LOSS: float(total.item()) / steps,
            K.THROUGHPUT: n_samples / elapsed if elapsed > 0 else 0.0,
        }

    def _check_finite(self, bad_step: torch.Tensor, bad_loss: torch.Tensor) -> None:
        step = int(bad_step.item())
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss became {float(bad_loss.item())} at epoch {self.epoch} step "
                f"{step} (lr={self.scheduler.get_last_lr()[0]:.3g}, loss={self.cfg.loss}); "
                "the trial is stopped"
            )

    @torch.no_grad()
    def predict(self, data: ECGDataset) -> tuple[np.ndarray, float]:
        """Probabilities (N, C) for `data` (deterministic crops) and the mean loss."""
        self.model.eval()
        loader = self.val_loader if data is self.val_data else self._loader(data, train=False)
        transform = self._transform(loader)
        probs, losses, weights = [], [], []
        for x, y in loader:
            x = self._to_device(x, transform)
            y = y.to(self.device)
            with self._autocast():
                logits = self.model(x)
            logits = logits.float()
            # Kept on the device: one host copy at the end, not a sync per batch.
            losses.append(self.loss_fn(logits, y, self.cfg).detach() * x.shape[0])
            weights.append(x.shape[0])
            probs.append(torch.sigmoid(logits))
        if not losses:
            return np.zeros((0, self.num_labels), np.float32), float("nan")
        loss = float(torch.stack(losses).sum().item()) / sum(weights)
        return torch.cat(probs).cpu().numpy().astype(np.float32), loss

    def evaluate(self) -> EpochResult:
        probs, val_loss = self.predict(self.val_data)
        y = np.asarray(self.val_data.labels)
        thresholds = T.fit_thresholds(y, probs, objective=self.cfg.threshold_objective)
        per_label = M.per_label_report(y, probs, thresholds, self.label_names)
        metrics = {
            K.OBJECTIVE: M.macro_auprc(y, probs),
            K.VAL_AUROC: M.macro_auroc(y, probs),
            K.VAL_LOSS: val_loss,
            K.VAL_F1: M.macro_f1(y, probs, thresholds),
        }
        metrics.update(self._source_metrics(y, probs, metrics[K.OBJECTIVE]))
        return EpochResult(metrics, probs, thresholds, per_label)

    def _source_metrics(self, y: np.ndarray, probs: np.ndarray, macro: float
                        ) -> dict[str, float]:
        """Per-source macro AUPRC of the validation fold with its worst and mean, when the
        fold holds several sources or the objective asks for them (one source: both are the
        macro AUPRC)."""
        sources = np.asarray(self.val_data.sources)
        wanted = self.objective in (K.WORST_SOURCE_AUPRC, K.MEAN_SOURCE_AUPRC)
        if not wanted and len(np.unique(sources)) < 2:
            return {}
        per_source = M.per_source_macro_auprc(y, probs, sources)
        values = list(per_source.values())
        return {
            K.WORST_SOURCE_AUPRC: float(min(values)) if values else macro,
            K.MEAN_SOURCE_AUPRC: float(np.mean(values)) if values else macro,
            **{K.source_key(s): v for s, v in per_source.items()},
        }

    def run_epoch(self) -> EpochResult:
        self.monitor.start()
        train_metrics = self.train_epoch()
        result = self.evaluate()
        result.metrics.update(train_metrics)
        result.metrics.update(self.monitor.stop(self._epoch_samples))
        self.epoch += 1
        score = result.metrics[self.objective]
        if score > self.best_score:
            self.best_score, self.best_epoch = score, self.epoch
        result.metrics[K.EPOCH] = self.epoch
        result.metrics[K.BEST_OBJECTIVE] = self.best_score
        self.history.append({k: float(v) for k, v in result.metrics.items()})
        return result

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, directory: str | Path, result: EpochResult | None = None) -> None:
        """Write a resumable checkpoint (and, with `result`, the epoch's validation outputs);
        `search.checkpoint` owns its layout."""
        validation = None
        if result is not None:
            validation = checkpoint.Validation(
                label_names=self.label_names, thresholds=result.thresholds,
                threshold_objective=self.cfg.threshold_objective, metrics=result.metrics,
                per_label=result.per_label, probs=result.val_probs,
                labels=np.asarray(self.val_data.labels), records=np.asarray(self.val_data.records),
            )
        checkpoint.write_checkpoint(
            directory, self.model, self.trial, num_labels=self.num_labels,
            label_groups=self.label_groups, epoch=self.epoch,
            training_state=self._training_state(), validation=validation,
        )

    def _training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": json.dumps(self.history),
            # Dropout draws from the global generators: without their state a resumed
            # trial would diverge from an uninterrupted one.
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def restore(self, directory: str | Path) -> None:
        directory = Path(directory)
        model, _ = load_checkpoint(directory / checkpoint.MODEL_FILE, map_location=self.device)
        self.model.load_state_dict(model.state_dict(), strict=True)
        state = checkpoint.read_training_state(directory)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])

    def close(self) -> None:
        """Drop the model, optimizer and data so a reused Ray actor's next trial starts
        with the device memory free (`search.devices.release_memory` then frees it)."""
        for name in ("model", "optimizer", "scheduler", "scaler", "train_loader", "val_loader",
                     "_train_transform", "train_data", "val_data"):
            self.__dict__.pop(name, None)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
