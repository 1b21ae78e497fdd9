"""Throughput and MFU: tokens per second, and model FLOPs per second over a peak."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

# dense bf16/fp16 tensor-core peaks (FLOP/s) by device name, from the vendors' data sheets
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12,
             "4090": 165e12, "3090": 71e12, "T4": 65e12}


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


def peak_flops(precision: str, override: float | None = None) -> tuple[float, str]:
    """The denominator of MFU and where it came from."""
    if override:
        return float(override), "train.peak_flops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAKS.items():
            if key in name:
                return value if ("bf16" in precision or "16" in precision) else value / 2, f"{name} data sheet"
        dtype = torch.bfloat16 if "bf16" in precision else torch.float32
        return matmul_peak(dtype, 4096, device="cuda"), f"{name} matmul probe"
    dtype = torch.bfloat16 if "bf16" in precision else torch.float32
    return matmul_peak(dtype), f"CPU {str(dtype).split('.')[-1]} matmul probe, {torch.get_num_threads()} threads"


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/tokens_per_s`` and ``perf/mfu`` (training FLOPs per token × tokens/s ÷ peak)."""

    def __init__(self, flops_per_token: float, peak: float, window: int = 10):
        self.flops_per_token, self.peak, self.window = flops_per_token, peak, window
        self._tokens = 0
        self._start: float | None = None
        self.last_tokens_per_s: float | None = None
        self.total_tokens = 0
        self.total_time = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        tokens = batch[0].numel() * trainer.world_size
        self._tokens += tokens
        if (batch_idx + 1) % self.window:
            return
        elapsed = time.perf_counter() - self._start
        rate = self._tokens / elapsed
        self.total_tokens += self._tokens
        self.total_time += elapsed
        self.last_tokens_per_s = rate
        pl_module.log("perf/tokens_per_s", rate, prog_bar=True, on_step=True, on_epoch=False)
        pl_module.log("perf/mfu", rate * self.flops_per_token / self.peak, on_step=True, on_epoch=False)
        self._tokens, self._start = 0, None

    def on_validation_start(self, trainer, pl_module):
        # validation time is not training throughput: restart the window
        self._tokens, self._start = 0, None

    @property
    def mean_tokens_per_s(self) -> float | None:
        return self.total_tokens / self.total_time if self.total_time else None
