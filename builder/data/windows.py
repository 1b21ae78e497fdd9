"""Training and validation windows over a token stream, and the sampler that makes data order exact."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import DataError
from .cache import TokenFile


class RandomWindowDataset(Dataset):
    """``samples_per_epoch`` random windows of ``context_length + 1`` tokens from ``tokens``.

    Index ``i`` may exceed ``len(self)``: it is read as ``epoch = i // len(self)``, ``k = i % len(self)``
    and the window start is drawn from ``np.random.default_rng([seed, epoch, k])``, so the same index
    always yields the same window and data order is reproducible. ``EpochSampler`` produces such indices.
    """

    def __init__(
        self, tokens: np.ndarray | TokenFile, context_length: int, samples_per_epoch: int, seed: int = 0
    ) -> None:
        if len(tokens) < context_length + 1:
            raise DataError(
                f"training split has {len(tokens)} tokens, fewer than data.context_length + 1 = {context_length + 1}"
            )
        self.tokens = tokens
        self.context_length = int(context_length)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self._num_starts = len(tokens) - self.context_length  # valid starts: 0 .. len - L - 1

    def __len__(self) -> int:
        return self.samples_per_epoch

    def window_start(self, index: int) -> int:
        if index < 0:
            raise IndexError(f"negative sample index {index}")
        epoch, k = divmod(int(index), self.samples_per_epoch)
        rng = np.random.default_rng([self.seed, epoch, k])
        return int(rng.integers(self._num_starts))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.window_start(index)
        window = torch.from_numpy(self.tokens[s : s + self.context_length + 1].astype(np.int64))
        return window[:-1], window[1:]


class ValWindowDataset(Dataset):
    """Fixed, non-overlapping, evenly spaced windows over ``tokens`` (at most ``max_windows``)."""

    def __init__(self, tokens: np.ndarray | TokenFile, context_length: int, max_windows: int) -> None:
        self.tokens = tokens
        self.context_length = int(context_length)
        span = self.context_length + 1
        n = min(int(max_windows), len(tokens) // span)
        if n <= 0:
            self.starts = np.zeros(0, dtype=np.int64)
        elif n == 1:
            self.starts = np.zeros(1, dtype=np.int64)
        else:
            # spacing (len - span) / (n - 1) >= span because n <= len // span: windows never overlap
            self.starts = np.floor(np.linspace(0, len(tokens) - span, n)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[index])
        window = torch.from_numpy(self.tokens[s : s + self.context_length + 1].astype(np.int64))
        return window[:-1], window[1:]


def data_parallel(trainer) -> tuple[int, int]:
    """(this process's place among the data-parallel replicas, their number) under ``trainer`` (None: one process).
    Each replica draws its own share of the batches; under tensor parallelism (fsdp2's ``trainer.tensor_parallel``)
    the processes of one tensor-parallel group are one replica, and read the same batch."""
    if trainer is None:
        return 0, 1
    split = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    return (split["rank"], split["num_replicas"]) if split else (trainer.global_rank, trainer.world_size)


class EpochSampler(Sampler[int]):
    """Yields ``epoch * n .. (epoch + 1) * n - 1``, every ``world_size``-th one from ``rank``.

    Lightning calls ``set_epoch`` each epoch. Under DDP each process draws its own stride of one
    global order (the trainer is built with ``use_distributed_sampler=False``), so 2 processes with
    batch b see exactly the samples of 1 process with batch 2b.

    ``resume(epoch, samples)`` (what a checkpoint's data position restores, see
    ``builder/data/datamodule.py`` ``ResumableDataLoader``) drops the first ``samples`` (across all
    ranks) of epoch ``epoch`` only: a run resumed in the middle of an epoch continues with the very
    samples the uninterrupted run would have drawn next. ``len()`` stays the whole epoch's share, as
    Lightning counts a resumed epoch's batches from where it stopped, not from zero.
    """

    def __init__(self, num_samples: int, epoch: int = 0, skip: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = int(num_samples)
        self.rank, self.world_size = int(rank), int(world_size)
        self.resume(epoch, skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, samples: int) -> None:
        """Start at sample ``samples`` (counted across all ranks) of epoch ``epoch``."""
        if samples < 0:
            raise ValueError(f"cannot resume at a negative sample count ({samples})")
        self.epoch = self.skip_epoch = int(epoch)
        self.skip = int(samples)

    def _skip(self) -> int:
        return min(self.skip, self.num_samples) if self.epoch == self.skip_epoch else 0

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.num_samples
        stop = first + len(self) * self.world_size
        return iter(range(first + self._skip() + self.rank, stop, self.world_size))
