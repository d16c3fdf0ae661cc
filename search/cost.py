"""What a trial's model costs to run: parameters, forward GFLOP per 10 s record and measured
CPU inference milliseconds per record. Measured once per trial (the architecture does not
change while it trains) and logged beside its quality, so that a search can trade one for
the other (`--objective auprc,gflops`) and an ensemble can be held to a budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ecgtune.components import NUM_LEADS, ModelConfig, build_model
from ecgtune.components._torch_compat import fft_ops
from ecgtune.search import metric_keys as K

__all__ = ["RECORD_SAMPLES", "ModelCost", "count_gflops", "measure_cpu_ms", "model_cost"]

# A 10 s record at 500 Hz, as `prep` stores it: the unit costs are quoted in. Every model
# reads this record and makes its own input from it (`input.fs`, `input.leads`), so its cost
# is that of its input, front end included.
RECORD_SAMPLES = 5000


def _fft_flops(real_shape: Sequence[int], dims: Sequence[int]) -> int:
    # A real FFT of n points: 2.5 n log2(n) FLOP (half a complex FFT's 5 n log2 n), per
    # transformed row. torch's counter counts matrix products and convolutions only; the
    # state-space trunk's sequence convolutions are FFTs.
    total = 1
    for size in real_shape:
        total *= int(size)
    flops = 0.0
    for d in dims:
        n = int(real_shape[d])
        flops += 2.5 * (total // n) * n * math.log2(n) if n > 1 else 0.0
    return int(flops)


def _r2c_flops(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None,
               **kwargs: Any) -> int:
    return _fft_flops(x_shape, dim)


def _c2r_flops(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None,
               **kwargs: Any) -> int:
    return _fft_flops(out_shape, dim)


_R2C, _C2R = fft_ops()
_FFT_FLOPS = {_R2C: _r2c_flops, _C2R: _c2r_flops}


@dataclass(frozen=True)
class ModelCost:
    params: int
    gflops: float  # forward, one 12 x 5,000 record
    cpu_ms: float  # measured forward on this CPU, per record (fp32, small fixed batch)

    def metrics(self) -> dict[str, float]:
        """The cost as the trial reports it (`metric_keys.COST_*`)."""
        return {K.COST_PARAMS: float(self.params), K.COST_GFLOPS: self.gflops,
                K.COST_CPU_MS: self.cpu_ms}

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def count_gflops(model: nn.Module, n_samples: int = RECORD_SAMPLES) -> float:
    """Forward GFLOP (2 per multiply-add, as torch's counter counts, plus 2.5 n log2 n per
    real FFT of n points) for one stored record, on the model's device. Use the meta device
    (shapes only, as `model_cost` does): on the CPU in eval mode nn.MultiheadAttention takes a
    fused fast path the counter does not see."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, NUM_LEADS, n_samples, device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_FFT_FLOPS)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def measure_cpu_ms(model: nn.Module, n_samples: int = RECORD_SAMPLES, batch: int = 2,
                   repeats: int = 3) -> float:
    """Median wall ms per record of an eval forward on the CPU, after one warm-up pass.
    Small and fixed so that it is cheap next to an epoch and comparable between trials of
    one search (it measures the machine too: compare within a search, not across)."""
    model = model.eval()
    x = torch.randn(batch, NUM_LEADS, n_samples, generator=torch.Generator().manual_seed(0))
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * sorted(times)[len(times) // 2] / batch


def model_cost(config: ModelConfig, num_labels: int,
               label_groups: Sequence[Sequence[int]] | None,
               group_names: Sequence[str] = (), *, time_it: bool = True,
               threads: int | None = None) -> ModelCost:
    """The cost of the model `config` describes, built afresh on the CPU (its weights do
    not change the cost). `time_it=False` skips the timed passes (cpu_ms is then 0)."""
    groups = [list(g) for g in label_groups] if label_groups else None
    with torch.device("meta"):
        meta = build_model(config, num_labels, groups, group_names)
    params = sum(p.numel() for p in meta.parameters())
    gflops = count_gflops(meta)
    del meta
    cpu_ms = 0.0
    if time_it:
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            cpu_ms = measure_cpu_ms(build_model(config, num_labels, groups, group_names))
        finally:
            torch.set_num_threads(previous)
    return ModelCost(params=params, gflops=gflops, cpu_ms=cpu_ms)
