"""The Lightning datamodule: a tokenised corpus as random training windows and fixed validation windows.

The only module of ``builder.data`` that imports Lightning (loading a model for inference never reads it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ..errors import DataError
from ..files import atomic_write
from .cache import (
    TokenFile,
    build_token_cache,
    default_cache_dir,
    remove_stale_temp_files,
    token_cache_path,
    token_cache_problem,
)
from .corpus import ACCEPTED_SOURCES, Corpus, unknown_choice
from .tokenizers import (
    ACCEPTED_TOKENIZERS,
    AnyTokenizer,
    ByteBPETokenizer,
    CharTokenizer,
    GPT2BPETokenizer,
    WordTokenizer,
    sha256_json,
    token_dtype,
)
from .windows import EpochSampler, RandomWindowDataset, ValWindowDataset


class ResumableDataLoader(DataLoader):
    """The training loader, with its data position in every checkpoint.

    Lightning saves ``state_dict()`` of each training loader that has one in the checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and hands it back to ``load_state_dict()`` when a run
    resumes, before the first batch is drawn. The state is the epoch and the samples (across all processes)
    already trained on in it, so a run resumed from any checkpoint (mid-epoch, between validations, written
    by Ctrl-C) draws exactly the batches the uninterrupted run would have drawn next. ``position()`` says how
    far training has got: (epoch, batches of this process trained on in it).
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if self.position is None or not isinstance(sampler, EpochSampler):  # overfit_batches: Lightning's sampler
            return {}
        epoch, batches = self.position()
        return {"epoch": int(epoch), "samples": int(batches * self.batch_size * sampler.world_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state and isinstance(self.sampler, EpochSampler):
            self.sampler.resume(state["epoch"], state["samples"])


def _check_int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"data.{key}={value!r} is not accepted: an integer >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise DataError(f"data.{key}={value!r} is not accepted: an integer {rng}")
    return int(value)


class TokenDataModule(pl.LightningDataModule):
    """Tokenised corpus → random training windows + fixed validation windows.

    Call ``setup()`` (or let the Trainer do it) before using ``tokenizer`` / ``vocab_size``.
    """

    def __init__(
        self,
        source: str = "embedded",
        path: str | os.PathLike | None = None,
        tokenizer: str = "char",
        bpe_vocab_size: int = 1024,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        context_length: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        samples_per_epoch: int = 100_000,
        val_batches: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        n_sentences: int = 20_000,
    ) -> None:
        super().__init__()
        if source not in ACCEPTED_SOURCES:
            raise DataError(unknown_choice("source", source, ACCEPTED_SOURCES))
        if tokenizer not in ACCEPTED_TOKENIZERS:
            raise DataError(unknown_choice("tokenizer", tokenizer, ACCEPTED_TOKENIZERS))
        if source == "text" and (path is None or str(path) == ""):
            raise DataError("data.path is required when data.source='text' (a UTF-8 file or a folder)")
        if source in ("embedded", "adjectives") and path is not None:
            raise DataError(f"data.path={str(path)!r} is only used with data.source='text' (got source={source!r})")
        if tokenizer == "gpt2_bpe":
            for key, value in (("vocab_file", vocab_file), ("merges_file", merges_file)):
                if value is None or str(value) == "":
                    raise DataError(f"data.{key} is required when data.tokenizer='gpt2_bpe'")
        self.source = source
        self.path = None if path is None else str(path)
        self.tokenizer_kind = tokenizer
        self.bpe_vocab_size = _check_int("bpe_vocab_size", bpe_vocab_size, 256, 1 << 32)
        self.vocab_file = None if vocab_file is None else str(vocab_file)
        self.merges_file = None if merges_file is None else str(merges_file)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.context_length = _check_int("context_length", context_length, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, (int, float))
            or not (0.0 <= float(val_fraction) < 1.0)
        ):
            raise DataError(f"data.val_fraction={val_fraction!r} is not accepted: a number in [0, 1)")
        self.val_fraction = float(val_fraction)
        self.samples_per_epoch = _check_int("samples_per_epoch", samples_per_epoch, 1)
        self.val_batches = _check_int("val_batches", val_batches, 0)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.seed = _check_int("seed", seed, 0)
        self.n_sentences = _check_int("n_sentences", n_sentences, 1)  # source='adjectives' only

        # filled by setup()
        self.tokenizer: AnyTokenizer | None = None
        self.tokenizer_file: Path | None = None
        self.cache_file: Path | None = None
        self.cache_hit: bool | None = None
        self.num_tokens: int | None = None
        self.source_hash: str | None = None
        self._tokens: TokenFile | None = None
        self.train_tokens: TokenFile | None = None  # first (1 - val_fraction) of the stream
        self.val_tokens: TokenFile | None = None  # the rest
        self.train_dataset: RandomWindowDataset | None = None
        self.val_dataset: ValWindowDataset | None = None

    # ------------------------------------------------------------------ building
    def _make_tokenizer(self, corpus: Corpus, source_hash: str) -> AnyTokenizer:
        kind = self.tokenizer_kind
        if kind == "char":
            return CharTokenizer.from_text(corpus.documents())
        if kind == "word":
            return WordTokenizer.from_text(corpus.documents())
        if kind == "gpt2_bpe":
            return GPT2BPETokenizer.from_files(Path(self.vocab_file).expanduser(), Path(self.merges_file).expanduser())
        # byte_bpe: trained tokenizer is cached (keyed by source + vocab size) next to the token caches
        key = sha256_json({"kind": kind, "source": source_hash, "vocab_size": self.bpe_vocab_size})
        tok_file = self.cache_dir / f"byte_bpe-{key[:24]}.json"
        if not tok_file.is_file():
            trained = ByteBPETokenizer.train(corpus.documents(), vocab_size=self.bpe_vocab_size)
            blob = trained.to_str().encode("utf-8")
            # first writer wins, so concurrent (DDP) processes share one tokenizer
            atomic_write(tok_file, blob, replace=False)
        self.tokenizer_file = tok_file
        return ByteBPETokenizer.from_str(tok_file.read_text(encoding="utf-8"))

    def _build(self) -> None:
        corpus = Corpus(self.source, self.path, n_sentences=self.n_sentences, seed=self.seed)
        source_hash, _ = corpus.scan()
        tokenizer = self._make_tokenizer(corpus, source_hash)
        dtype = token_dtype(tokenizer.vocab_size)
        fingerprint = tokenizer.fingerprint()
        cache_file = token_cache_path(self.cache_dir, source_hash, fingerprint, dtype)
        remove_stale_temp_files(self.cache_dir)  # left by builds that were killed
        found = cache_file.is_file()
        problem = token_cache_problem(cache_file, fingerprint, dtype) if found else None
        if problem is not None:
            rank_zero_warn(f"token cache {cache_file} {problem}: rebuilding it")
        hit = found and problem is None
        if not hit:
            build_token_cache(corpus, tokenizer, cache_file)
        tokens = TokenFile(cache_file, dtype)

        n = len(tokens)
        n_train = int(n * (1.0 - self.val_fraction))
        span = self.context_length + 1
        if n_train < span:
            raise DataError(
                f"corpus {corpus.description!r} gives {n} tokens; the training split ({n_train} tokens) is shorter "
                f"than data.context_length + 1 = {span}; use a larger corpus, a smaller data.context_length "
                f"or a smaller data.val_fraction"
            )
        if self.val_fraction > 0 and self.val_batches > 0 and n - n_train < span:
            raise DataError(
                f"corpus {corpus.description!r} gives {n} tokens; the validation split ({n - n_train} tokens) is "
                f"shorter than data.context_length + 1 = {span}; raise data.val_fraction, lower "
                f"data.context_length, or set data.val_fraction=0"
            )

        self.tokenizer = tokenizer
        self.source_hash = source_hash
        self.cache_file = cache_file
        self.cache_hit = hit
        self.num_tokens = n
        self._tokens = tokens
        self.train_tokens = tokens.view(0, n_train)
        self.val_tokens = tokens.view(n_train, n)
        self.train_dataset = RandomWindowDataset(
            self.train_tokens, self.context_length, self.samples_per_epoch, self.seed
        )
        self.val_dataset = ValWindowDataset(self.val_tokens, self.context_length, self.val_batches * self.batch_size)

    def prepare_data(self) -> None:
        if self._tokens is None:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        # every (DDP) process calls this; the build is idempotent and all file writes are atomic
        if self._tokens is None:
            self._build()

    # ------------------------------------------------------------------ accessors
    def _require_setup(self) -> None:
        if self._tokens is None:
            raise RuntimeError("TokenDataModule.setup() must be called first")

    @property
    def vocab_size(self) -> int:
        self._require_setup()
        return self.tokenizer.vocab_size

    @property
    def tokens(self) -> np.ndarray:
        """The whole token stream (read-only ``np.memmap``)."""
        self._require_setup()
        return self._tokens.array

    def _train_position(self) -> tuple[int, int]:
        """(epoch, batches of it this process has trained on) as the trainer will count them when it resumes.

        Lightning continues a restored epoch at its ``processed`` batch count: a checkpoint written at a batch's
        end (or after validation) has processed that batch; Ctrl-C in the middle of a step has not (the step is
        run again). The counts belong to the epoch last started (``current_epoch`` is one ahead of it in
        ``on_train_end``). A finished epoch (``trainer.limit_train_batches`` included) is the next one, at 0."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop
        epoch, batches = max(0, loop.epoch_progress.current.started - 1), loop.epoch_loop.batch_progress.current.processed
        return (epoch + 1, 0) if batches >= trainer.num_training_batches else (epoch, batches)

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(self.train_dataset), rank=rank, world_size=world),
            drop_last=len(self.train_dataset) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            position=self._train_position,
        )

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )
