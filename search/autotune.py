"""How a trial computes when `train.precision`, `train.layout` or `train.compile` is `auto`.

On a GPU the fastest precision and layout depend on the GPU and its libraries, not on a rule:
on an H200, `seed` trained at 2,036 samples/s in bf16 and 2,739 in fp32 (TF32 convolutions),
because PyTorch runs bf16 batch norms in its native kernels and cuDNN reorders plain (B, C, L)
tensors around every convolution. So `auto` is decided by measurement, in this order:
1. the table `make gpu-check` writes (`choices_path()`: $ECGTUNE_GPU_CHOICES, else
   ~/.cache/ecgtune/gpu-choices.json), when it holds this GPU's rates for every candidate;
2. rates measured earlier in this process on a GPU of the same name;
3. a measurement now: a few training steps of the trial's own model, batch and crop per
   candidate (`Trainer.measure_rate`), each on a copy, with the random state put back.
`train.compile=auto` is only ever taken from the table: compiling costs minutes per model,
too much to try in every trial.

On a CPU nothing is measured: `auto` is fp32, the `ncl` layout and no compiling. Everything
here is free of Ray and of real GPUs: the callers pass in what they know, and the tests fake
it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgtune.search.config import TrainConfig

__all__ = [
    "CHOICES_ENV",
    "Execution",
    "choices_path",
    "choose_execution",
    "forget_measurements",
    "rate_key",
    "read_choices",
    "write_choices",
]

log = logging.getLogger(__name__)

CHOICES_ENV = "ECGTUNE_GPU_CHOICES"
# GPU name -> {candidate key -> samples/s (None: did not fit or failed)}, this process only.
_MEASURED: dict[str, dict[str, float | None]] = {}


@dataclass(frozen=True)
class Execution:
    """What a trial runs: precision (fp32, bf16, fp16), layout (ncl, channels_last),
    compile mode (off, trunk, trunk-graphs), and one line saying why."""

    precision: str
    layout: str
    compile: str
    reason: str


def rate_key(precision: str, layout: str) -> str:
    return f"{precision}/{layout}"


def choices_path() -> Path:
    env = os.environ.get(CHOICES_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ecgtune" / "gpu-choices.json"


def read_choices(path: Path | None = None) -> dict[str, Any]:
    """The table (GPU name -> entry); empty when there is none. A table that cannot be read
    costs a warning and a measurement, never the trial."""
    path = path or choices_path()
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the GPU choices table %s: %s", path, exc)
        return {}
    return table if isinstance(table, dict) else {}


def write_choices(device_name: str, rates: Mapping[str, float | None], compile_mode: str,
                  measured_on: str, path: Path | None = None) -> Path:
    """Adds (or replaces) this GPU's entry: the samples/s of each precision/layout, the
    compile mode that measured fastest, and what was measured (model, batch, crop)."""
    path = path or choices_path()
    table = read_choices(path)
    table[device_name] = {"rates": {k: (None if v is None else round(float(v), 1))
                                    for k, v in rates.items()},
                          "compile": compile_mode, "measured_on": measured_on}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def forget_measurements() -> None:
    """Drops this process's measured rates (tests; a driver update)."""
    _MEASURED.clear()


def _label(precision: str, cuda_tf32: bool) -> str:
    # fp32 on an Ampere-or-newer GPU computes its convolutions in TF32 (cuDNN's default).
    return "tf32" if precision == "fp32" and cuda_tf32 else precision


def choose_execution(train: TrainConfig, *, cuda: bool, device_name: str = "cpu",
                     has_bf16: bool = False,
                     measure: Callable[[str, str], float | None] | None = None,
                     fits: Callable[[str], bool] = lambda precision: True,
                     table: Mapping[str, Any] | None = None,
                     table_source: str = "") -> Execution:
    """The precision, layout and compile mode `train` asks for, `auto` resolved as the module
    docstring says. `measure(precision, layout)`: samples/s of a few steps, None when that
    candidate cannot run (out of memory); `fits(precision)`: whether the trial's memory
    estimate at that precision fits its GPU share (fp32 holds twice bf16's activations).
    `train.precision` is already checked against the GPU (`devices.select_precision`)."""
    requested_compile = train.compile
    if not cuda:
        precision = "fp32" if train.precision == "auto" else train.precision
        layout = "ncl" if train.layout == "auto" else train.layout
        compile_mode = "off" if requested_compile == "auto" else requested_compile
        why = "auto on a CPU" if train.precision == "auto" else "requested"
        return Execution(precision, layout, compile_mode, f"{precision}: {why}")
    entry = (table or {}).get(device_name) or {}
    compile_mode = requested_compile
    if compile_mode == "auto":
        compile_mode = str(entry.get("compile", "off"))
        if compile_mode not in ("off", "trunk", "trunk-graphs"):
            compile_mode = "off"
    if train.precision == "auto":
        precisions = ["bf16", "fp32"] if has_bf16 else ["fp16"]
    else:
        precisions = [train.precision]
    too_big = [p for p in precisions if len(precisions) > 1 and not fits(p)]
    precisions = [p for p in precisions if p not in too_big] or precisions[:1]
    layouts = ["ncl", "channels_last"] if train.layout == "auto" else [train.layout]
    candidates = [(p, lay) for p in precisions for lay in layouts]
    note = "".join(f"; {_label(p, has_bf16)} would not fit this trial's GPU share"
                   for p in too_big)
    if len(candidates) == 1:
        precision, layout = candidates[0]
        if train.precision != "auto":
            why = "requested"
        elif has_bf16:
            why = "the only candidate that fits"
        else:
            why = "auto on a GPU without bf16 (loss-scaled)"
        return Execution(precision, layout, compile_mode,
                         f"{_label(precision, has_bf16)}/{layout}: {why}{note}")
    keys = [rate_key(p, lay) for p, lay in candidates]
    table_rates = entry.get("rates") or {}
    if all(k in table_rates for k in keys):
        rates = {k: table_rates[k] for k in keys}
        source = f"from make gpu-check's table{f' ({table_source})' if table_source else ''}"
    else:
        seen = _MEASURED.setdefault(device_name, {})
        fresh = [k for k in keys if k not in seen]
        if fresh and measure is None:
            raise ValueError("choose_execution needs `measure` when no table has the rates")
        for key in fresh:
            precision, layout = key.split("/")
            assert measure is not None
            seen[key] = measure(precision, layout)
        rates = {k: seen[k] for k in keys}
        source = "measured in this process" if fresh else "measured earlier in this process"
    runnable = {k: float(v) for k, v in rates.items() if v is not None and float(v) > 0}
    if not runnable:  # nothing ran: the static default, and the trial will say why it fails
        precision, layout = candidates[0]
        return Execution(precision, layout, compile_mode,
                         f"{_label(precision, has_bf16)}/{layout}: no candidate ran "
                         f"({source}){note}")
    best = max(runnable, key=lambda k: runnable[k])
    precision, layout = best.split("/")

    def shown(key: str) -> str:
        p, lay = key.split("/")
        return f"{_label(p, has_bf16)}/{lay}"

    others = ", ".join(f"{shown(k)} {runnable[k]:,.0f}" if k in runnable
                       else f"{shown(k)} did not run"
                       for k in sorted(rates, key=lambda k: -(runnable.get(k) or 0))
                       if k != best)
    reason = (f"{shown(best)}: {runnable[best]:,.0f} vs {others} samples/s, {source}{note}")
    return Execution(precision, layout, compile_mode, reason)
