"""The Lightning datamodule: a tokenised corpus as random training windows and fixed validation windows.

The only module of ``builder.data`` that imports Lightning (loading a model for inference never reads it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ..config.schema import DataConfig
from ..errors import ConfigError, DataError
from ..files import atomic_write
from .cache import (
    TokenFile,
    build_token_cache,
    default_cache_dir,
    remove_stale_temp_files,
    token_cache_path,
    token_cache_problem,
)
from .corpus import Corpus
from .settings import check_data_settings
from .stream import build_lock, char_vocabulary
from .token_files import FlatTokens, open_flat_tokens
from .tokenizers import (
    AnyTokenizer,
    ByteBPETokenizer,
    CharTokenizer,
    GPT2BPETokenizer,
    WordTokenizer,
    sha256_json,
    token_dtype,
    tokenizer_from_dict,
)
from .windows import EpochSampler, RandomWindowDataset, ValWindowDataset, data_parallel


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
        text_field: str = "text",
        vocab_size: int | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        self._settle(check_data_settings(dict(
            source=source, path=path, tokenizer=tokenizer, bpe_vocab_size=bpe_vocab_size, vocab_file=vocab_file,
            merges_file=merges_file, cache_dir=cache_dir, context_length=context_length, batch_size=batch_size,
            val_fraction=val_fraction, samples_per_epoch=samples_per_epoch, val_batches=val_batches,
            num_workers=num_workers, seed=seed, n_sentences=n_sentences, text_field=text_field, vocab_size=vocab_size,
            dtype=dtype)))

    @classmethod
    def from_settings(cls, settings: DataConfig) -> TokenDataModule:
        """The datamodule of settings already checked (builder/config/checks.py: the command line's one check)."""
        module = cls.__new__(cls)
        pl.LightningDataModule.__init__(module)
        module._settle(settings)
        return module

    def _settle(self, checked: DataConfig) -> None:
        self.source = checked.source
        self.path = None if checked.path is None else str(checked.path)
        self.tokenizer_kind = checked.tokenizer
        self.bpe_vocab_size = checked.bpe_vocab_size
        self.vocab_file = None if checked.vocab_file is None else str(checked.vocab_file)
        self.merges_file = None if checked.merges_file is None else str(checked.merges_file)
        cache_dir = checked.cache_dir
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        for key in ("context_length", "batch_size", "val_fraction", "samples_per_epoch", "val_batches",
                    "seed", "n_sentences", "text_field"):  # n_sentences: source='adjectives' / 'lecture' only
            setattr(self, key, getattr(checked, key))
        self.num_workers = checked.num_workers or 0
        self.vocab_size_setting = checked.vocab_size
        self.dtype_setting = checked.dtype  # source='tokens' only

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
        self.flat: FlatTokens | None = None  # source='tokens': the files read and what they hold
        self.setup_seconds: float | None = None  # how long the last _build took
        self.train_dataset: RandomWindowDataset | None = None
        self.val_dataset: ValWindowDataset | None = None

    # ------------------------------------------------------------------ building
    def _saved_tokenizer(self, corpus: Corpus, key: str) -> tuple[AnyTokenizer, Path]:
        """The tokenizer of this corpus (by key): read from the cache folder, else built from the corpus and saved.

        char and word read the corpus once for their vocabulary, byte_bpe trains; a second run reads the file."""
        kind = self.tokenizer_kind
        cls = {"char": CharTokenizer, "word": WordTokenizer, "byte_bpe": ByteBPETokenizer}[kind]
        fields = {"kind": kind, "source": key}
        if kind == "byte_bpe":
            fields["vocab_size"] = self.bpe_vocab_size
        tok_file = self.cache_dir / f"{kind}-{sha256_json(fields)[:24]}.json"
        if tok_file.is_file():
            try:
                text = tok_file.read_text(encoding="utf-8")
                return (cls.from_str(text) if kind == "byte_bpe" else tokenizer_from_dict(json.loads(text))), tok_file
            except Exception as err:  # a damaged file: built again, never trusted
                rank_zero_warn(f"tokenizer file {tok_file} cannot be read ({type(err).__name__}: {err}): rebuilding it")
        try:
            if kind == "byte_bpe":
                blob = ByteBPETokenizer.train(corpus.documents(), vocab_size=self.bpe_vocab_size).to_str()
            elif kind == "char":
                blob = json.dumps(char_vocabulary(corpus.documents("any")).to_dict())
            else:
                blob = json.dumps(WordTokenizer.from_text(corpus.documents("space")).to_dict())
        except ValueError as err:  # no characters or words (e.g. .jsonl records whose text fields are all empty)
            if isinstance(err, (DataError, ConfigError)):  # a file's own message
                raise
            raise DataError(f"data.path: corpus {corpus.description!r} gives no text to tokenise: {err}") from None
        atomic_write(tok_file, blob.encode("utf-8"))
        text = tok_file.read_text(encoding="utf-8")
        return (cls.from_str(text) if kind == "byte_bpe" else tokenizer_from_dict(json.loads(text))), tok_file

    def _make_tokenizer(self, corpus: Corpus, key: str) -> AnyTokenizer:
        if self.tokenizer_kind == "gpt2_bpe":
            return GPT2BPETokenizer.from_files(Path(self.vocab_file).expanduser(), Path(self.merges_file).expanduser())
        tokenizer, self.tokenizer_file = self._saved_tokenizer(corpus, key)
        return tokenizer

    def _build_tokens(self) -> tuple[AnyTokenizer, TokenFile, TokenFile | None, str, str]:
        """source='tokens': (tokenizer, training tokens, validation tokens or None, key, description)."""
        flat = open_flat_tokens(
            self.path, self.cache_dir, vocab_size=self.vocab_size_setting, dtype=self.dtype_setting,
            tokenizer=self.tokenizer_kind, vocab_file=self.vocab_file, merges_file=self.merges_file,
        )
        self.flat = flat
        return flat.tokenizer, flat.train, flat.val, flat.key, str(flat.train.path)

    def _build_corpus(self) -> tuple[AnyTokenizer, TokenFile, str, str, bool, Path]:
        corpus = Corpus(self.source, self.path, n_sentences=self.n_sentences, seed=self.seed, text_field=self.text_field)
        key = corpus.key()  # the files' paths, sizes and times: no file is read
        remove_stale_temp_files(self.cache_dir)  # left by builds that were killed

        def waiting(seconds: float) -> None:  # every rank says it: the one waiting is not the one building
            if seconds == 0.0:
                print(f"waiting for another process to build the token cache of {corpus.description!r}",
                      file=sys.stderr, flush=True)

        # one process builds (the first to take the lock: Lightning's local rank 0 in prepare_data); the others
        # wait here, then find the cache valid
        with build_lock(self.cache_dir, key, waiting):
            tokenizer = self._make_tokenizer(corpus, key)
            dtype = token_dtype(tokenizer.vocab_size)
            fingerprint = tokenizer.fingerprint()
            cache_file = token_cache_path(self.cache_dir, key, fingerprint, dtype)
            found = cache_file.is_file()
            problem = token_cache_problem(cache_file, fingerprint, dtype) if found else None
            if problem is not None:
                rank_zero_warn(f"token cache {cache_file} {problem}: rebuilding it")
            hit = found and problem is None
            if not hit:
                build_token_cache(corpus, tokenizer, cache_file)
        return tokenizer, TokenFile(cache_file, dtype), key, corpus.description, hit, cache_file

    def _build(self) -> None:
        start = time.perf_counter()
        val_file: TokenFile | None = None
        if self.source == "tokens":
            tokenizer, tokens, val_file, key, description = self._build_tokens()
            hit, cache_file = True, tokens.path
        else:
            tokenizer, tokens, key, description, hit, cache_file = self._build_corpus()

        n = len(tokens)
        if val_file is not None:  # val.bin beside train.bin: all of train.bin trains
            n_train = n
        else:
            n_train = int(n * (1.0 - self.val_fraction))
        span = self.context_length + 1
        if n_train < span:
            raise DataError(
                f"corpus {description!r} gives {n} tokens; the training split ({n_train} tokens) is shorter "
                f"than data.context_length + 1 = {span}; use a larger corpus, a smaller data.context_length "
                f"or a smaller data.val_fraction"
            )
        n_val = len(val_file) if val_file is not None else n - n_train
        if self.val_fraction > 0 and self.val_batches > 0 and n_val < span:
            raise DataError(
                f"corpus {description!r} gives {n_val} validation tokens, fewer than data.context_length + 1 = "
                f"{span}; raise data.val_fraction, lower data.context_length, or set data.val_fraction=0"
            )

        self.tokenizer = tokenizer
        self.source_hash = key
        self.cache_file = cache_file
        self.cache_hit = hit
        self.num_tokens = n
        self._tokens = tokens
        self.train_tokens = tokens.view(0, n_train)
        self.val_tokens = val_file if val_file is not None else tokens.view(n_train, n)
        self.train_dataset = RandomWindowDataset(
            self.train_tokens, self.context_length, self.samples_per_epoch, self.seed
        )
        self.val_dataset = ValWindowDataset(self.val_tokens, self.context_length, self.val_batches * self.batch_size)
        self.setup_seconds = time.perf_counter() - start

    def prepare_data(self) -> None:
        if self._tokens is None:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        # every (DDP) process calls this, after local rank 0's prepare_data built the cache; without a Trainer
        # (or with a cache folder that is not shared) the first process to take the build lock builds it, the
        # others wait for it; all file writes are atomic
        if self._tokens is None:
            self._build()

    # ------------------------------------------------------------------ accessors
    def _require_setup(self) -> None:
        if self._tokens is None:
            raise RuntimeError("TokenDataModule.setup() must be called first")

    @property
    def vocab_size(self) -> int:
        self._require_setup()
        if self.flat is not None:
            return self.flat.vocab_size
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
        rank, world = data_parallel(trainer)
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
