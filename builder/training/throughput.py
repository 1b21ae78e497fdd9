"""Throughput and MFU: tokens per second, and model FLOPs per second over a peak; progress lines in logs."""

from __future__ import annotations

import math
import sys
import time
from typing import get_args

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.precision.precision import (
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
    _PRECISION_INPUT_STR_ALIAS_CONVERSION,
)
from lightning_fabric.utilities.throughput import get_available_flops

from ..config.compose import accelerator_named
from ..data.windows import data_parallel
from ..errors import ConfigError


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.3, device="cpu") -> float:
    """FLOP/s of a square matmul at the current thread count: the CPU's practical peak."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        a @ b
        n += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * n / (time.perf_counter() - start)


def lightning_precision(value) -> str:
    """``trainer.precision`` as Lightning's full name: what the Trainer accepts (``"bf16-mixed"``, ``"32-true"``,
    ... and the short forms ``32``, ``16``, ``64``, ``"bf16"``, integers too: Hydra reads ``trainer.precision=32``
    as one), or a ConfigError listing them."""
    short = {str(v) for v in get_args(_PRECISION_INPUT_INT)} | set(get_args(_PRECISION_INPUT_STR_ALIAS))
    full = get_args(_PRECISION_INPUT_STR)
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    if text in full:
        return text
    if text in short:
        return _PRECISION_INPUT_STR_ALIAS_CONVERSION[text]
    aliases = ", ".join(f"{k} = {v}" for k, v in _PRECISION_INPUT_STR_ALIAS_CONVERSION.items())
    raise ConfigError("trainer.precision", value, f"one of {', '.join(full)}, or a short form ({aliases})")


def half_precision(precision: str) -> bool:
    """Whether a Lightning precision name computes its matmuls in 16 bits (tensor cores' dense peak)."""
    return precision.startswith(("bf16", "16", "transformer-engine"))


def peak_flops(precision, override: float | None = None) -> tuple[float, str]:
    """The denominator of MFU and where it came from (``precision``: any form ``lightning_precision`` accepts)."""
    precision = lightning_precision(precision)
    if override:
        return float(override), "callbacks.throughput.peak_flops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        found = gpu_peak(name, precision)
        if found:
            return found
        dtype = torch.bfloat16 if "bf16" in precision else torch.float32
        # Lightning's table next (it lists more devices; some of its entries are sparse or two-GPU figures,
        # which is why conf/plan/default.yaml's dense data-sheet ones come first), else a measured matmul
        listed = get_available_flops(torch.device("cuda"), torch.bfloat16 if half_precision(precision) else dtype)
        if listed:
            return float(listed), f"{name}: Lightning's table"
        return matmul_peak(dtype, 4096, device="cuda"), f"{name} matmul probe"
    dtype = torch.bfloat16 if "bf16" in precision else torch.float32
    return matmul_peak(dtype), f"CPU {str(dtype).split('.')[-1]} matmul probe, {torch.get_num_threads()} threads"


def gpu_peak(device_name: str, precision) -> tuple[float, str] | None:
    """The data-sheet peak (FLOP/s) of the GPU ``torch.cuda.get_device_name()`` calls ``device_name``, from the one
    table of accelerators (conf/plan/default.yaml, which task=plan reads too), and where it came from; None for a
    GPU the table does not name. 16-bit precisions: the bf16/fp16 tensor-core peak; 32 bits: the TF32 tensor-core
    peak where torch lets fp32 matmuls use TF32 (``torch.set_float32_matmul_precision("high")``) and the GPU has
    one, else the fp32 peak."""
    found = accelerator_named(device_name)
    if found is None:
        return None
    key, acc = found
    if half_precision(lightning_precision(precision)):
        return acc.bf16_tflops * 1e12, f"{device_name}: plan.accelerators.{key}.bf16_tflops"
    if acc.tf32_tflops and torch.get_float32_matmul_precision() != "highest":
        return acc.tf32_tflops * 1e12, f"{device_name}: plan.accelerators.{key}.tf32_tflops"
    return acc.fp32_tflops * 1e12, f"{device_name}: plan.accelerators.{key}.fp32_tflops"


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/tokens_per_s`` and ``perf/mfu`` (training FLOPs per token × tokens/s ÷ peak), measured over
    ``window`` training batches.

    Where no progress bar shows how training goes (standard output is not a terminal: a log file, SLURM, CI;
    or ``trainer.enable_progress_bar=false``), it prints one line every ``trainer.log_every_n_steps`` optimizer
    steps instead: step, train/loss, tokens/s and the time left.
    """

    def __init__(self, flops_per_token: float, peak: float, window: int = 10):
        self.flops_per_token, self.peak, self.window = flops_per_token, float(peak), window
        self._tokens = self._batches = 0  # in the current window
        self._start: float | None = None
        self.last_tokens_per_s: float | None = None
        self.total_tokens = 0
        self.total_time = 0.0
        # progress lines (on_train_start decides whether this run prints them)
        self.print_every: int | None = None
        self._last_printed = -1
        self._clock: tuple[float, int] | None = None  # (time, global step) when training (re)started

    def on_train_start(self, trainer, pl_module):
        no_bar = trainer.progress_bar_callback is None or not _is_terminal(sys.stdout)
        self.print_every = max(1, int(trainer.log_every_n_steps or 1)) if no_bar and trainer.is_global_zero else None
        self._clock = (time.perf_counter(), trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is None:
            _wait_for_device(pl_module)
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tokens += batch[0].numel() * data_parallel(trainer)[1]  # (a tensor-parallel group: one batch)
        self._batches += 1  # counted here, not from batch_idx: a window may span epochs shorter than it
        if self._batches == self.window:
            _wait_for_device(pl_module)  # the window's kernels done: once a window, never once a step
            elapsed = time.perf_counter() - self._start
            rate = self._tokens / elapsed
            self.total_tokens += self._tokens
            self.total_time += elapsed
            self.last_tokens_per_s = rate
            pl_module.log("perf/tokens_per_s", rate, prog_bar=True, on_step=True, on_epoch=False)
            pl_module.log("perf/mfu", rate * self.flops_per_token / self.peak, on_step=True, on_epoch=False)
            self._tokens, self._batches, self._start = 0, 0, None
        step = trainer.global_step
        if self.print_every and step and step % self.print_every == 0 and step != self._last_printed:
            self._last_printed = step  # (accumulated batches share a step: one line)
            print(self.progress_line(trainer), flush=True)

    def progress_line(self, trainer) -> str:
        """``step 40/2000  train/loss 2.1234  12,345 tokens/s  ETA 0:03:10``."""
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        loss = trainer.callback_metrics.get("train/loss")  # the latest batch's, as logged
        rate = self.last_tokens_per_s
        if rate is None and self._start is not None and self._tokens:  # the first window is not complete yet
            rate = self._tokens / max(time.perf_counter() - self._start, 1e-9)
        parts = [f"step {step}" + (f"/{int(total)}" if math.isfinite(total) else ""),
                 f"train/loss {float(loss):.4f}" if isinstance(loss, torch.Tensor) else "train/loss n/a",
                 f"{rate:,.0f} tokens/s" if rate is not None else "tokens/s n/a"]
        started, first_step = self._clock if self._clock else (time.perf_counter(), 0)
        if math.isfinite(total) and step > first_step:
            left = (time.perf_counter() - started) / (step - first_step) * max(total - step, 0)
            parts.append(f"ETA {_duration(left)}")
        return "  ".join(parts)

    def on_validation_start(self, trainer, pl_module):
        # validation time is not training throughput: restart the window
        self._tokens, self._batches, self._start = 0, 0, None

    @property
    def mean_tokens_per_s(self) -> float | None:
        return self.total_tokens / self.total_time if self.total_time else None


def _wait_for_device(pl_module) -> None:
    """On a GPU the host runs ahead of the kernels it queued: wait for them, so the clock measures the work.
    (Lightning's own ThroughputMonitor does this after every batch; here it is at a window's two ends only.)"""
    device = getattr(pl_module, "device", None)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
