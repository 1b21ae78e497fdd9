"""The token cache: a corpus tokenised once into a flat ``uint16``/``uint32`` file, memory-mapped back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from .corpus import Corpus
from .tokenizers import CHUNK_CHARS, AnyTokenizer, split_text, token_dtype

CACHE_ENV_VAR = "HYDRAFORMER_CACHE"
CACHE_FORMAT = "hydraformer-tokens-v1"


def default_cache_dir() -> Path:
    """``$HYDRAFORMER_CACHE`` if set, else ``~/.cache/hydraformer/tokens``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/hydraformer/tokens").expanduser()


def build_token_cache(corpus: Corpus, tokenizer: AnyTokenizer, dest: Path) -> int:
    """Tokenise ``corpus`` piece by piece into the flat file ``dest`` (atomically); return the number of tokens."""
    dtype = token_dtype(tokenizer.vocab_size)
    count = 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        for piece in corpus.documents():
            for chunk in split_text(piece, CHUNK_CHARS * 8):
                if not chunk:
                    continue
                ids = tokenizer.encode_array(chunk)
                ids.astype(dtype).tofile(f)
                count += len(ids)
        f.flush()
        os.fsync(f.fileno())
    return count


class TokenFile:
    """Picklable, read-only view ``[start, stop)`` of a flat token file, memory-mapped lazily.

    Pickling (e.g. to DataLoader workers under the ``spawn`` start method) sends only the path and
    bounds; each process maps the file itself, so the file is never copied into memory.
    """

    def __init__(self, path: str | os.PathLike, dtype: Any, start: int = 0, stop: int | None = None) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        total = self.path.stat().st_size // self.dtype.itemsize
        self.start = int(start)
        self.stop = total if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"bad token range [{self.start}, {self.stop}) for a file of {total} tokens")
        self._mm: np.memmap | None = None

    @property
    def array(self) -> np.ndarray:
        """The view as a read-only ``np.memmap``."""
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._mm[self.start : self.stop]

    def view(self, start: int, stop: int) -> TokenFile:
        """A sub-view, with ``start``/``stop`` relative to this view."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"bad sub-range [{start}, {stop}) of a view of {len(self)} tokens")
        return TokenFile(self.path, self.dtype, self.start + start, self.start + stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.asarray(self.array)
        return a if dtype is None else a.astype(dtype)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

