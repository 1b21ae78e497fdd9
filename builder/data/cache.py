"""The token cache: a corpus tokenised once into a flat ``uint16``/``uint32`` file behind a fixed header, memory-mapped back.

A cache file is::

    bytes [0, HEADER_SIZE)   the header: the format string and a newline, one line of JSON, zero bytes up to 4096
    bytes [HEADER_SIZE, ..)  the tokens: ``count`` ids of ``dtype`` (native byte order), nothing after them

The JSON holds ``tokenizer`` (the tokenizer's fingerprint), ``dtype``, ``count``, ``sha256`` (of all the token
bytes, computed while writing) and ``sample`` (``blocks``, ``block_bytes`` and the ``sha256`` of those sampled
blocks). ``token_cache_problem`` says why a file cannot be used (no header, another format, tokenizer or dtype,
a size that disagrees with the count, a failed checksum); the datamodule rebuilds such a file. The tokens start
at 4096, a page boundary, so memory-mapping them stays aligned for every dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from .corpus import Corpus
from .stream import PIECE_CHARS, cut_rule, encode_pieces
from .tokenizers import AnyTokenizer, sha256_json, token_dtype

CACHE_ENV_VAR = "HYDRAFORMER_CACHE"
# The first line of every cache file, and part of the hashed file name: bump it when the layout changes, so
# older files are simply not found (and, found under a copied name, are refused for their first line).
CACHE_FORMAT = "hydraformer-tokens-v2"
FORMAT_FAMILY = b"hydraformer-tokens-"  # the first line of a cache file of any version (v1 had no header)
HEADER_SIZE = 4096
CACHE_PREFIX = "tokens-"
# Temporary files (``.<name>.<random>.tmp``, builder/files.py) of cache files whose mtime is older than this
# are left by killed builds; a build in progress writes at least once per tokenised chunk (seconds apart).
STALE_TEMP_AGE_S = 3600.0

# The checksum verified on every open covers SAMPLE_BLOCKS blocks of SAMPLE_BLOCK_BYTES, evenly spread from
# the first token to the last (at most 1 MiB read, page-aligned): a multi-GB file opens in milliseconds, where
# hashing all of it would read the whole file from disk on every run (seconds to minutes, and the page cache
# evicted). With the size and the count checked too, it catches truncation, extension, zeroing, replacement and
# any damaged run of bytes longer than the stride (1/256 of the file); files up to 1 MiB are checked entirely.
# The full ``sha256`` is stored for decisions that can afford it (``full=True``).
SAMPLE_BLOCKS = 256
SAMPLE_BLOCK_BYTES = 4096


def default_cache_dir() -> Path:
    """``$HYDRAFORMER_CACHE`` if set, else ``~/.cache/hydraformer/tokens``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/hydraformer/tokens").expanduser()


def token_cache_path(cache_dir: Path, source_hash: str, fingerprint: str, dtype: Any) -> Path:
    """The cache file of a corpus (by content hash) tokenised by a tokenizer (by fingerprint) into ``dtype``."""
    dtype = np.dtype(dtype)
    key = sha256_json({"format": CACHE_FORMAT, "source": source_hash, "tokenizer": fingerprint, "dtype": dtype.name})
    return Path(cache_dir) / f"{CACHE_PREFIX}{key[:32]}.{dtype.name}.bin"


def remove_stale_temp_files(cache_dir: Path, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove temporary cache files (``.tokens-*.tmp``) not written to for ``max_age_s``; return those removed.

    Younger ones may belong to a build in progress in another process, and are kept.
    """
    removed = []
    now = time.time()
    for tmp in Path(cache_dir).glob(f".{CACHE_PREFIX}*.tmp"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another process removed it (or published it) first
            pass
    return removed


def _sample_offsets(payload_bytes: int, blocks: int, block_bytes: int) -> list[int]:
    """File offsets of the sampled blocks: every block when there are at most ``blocks``, else evenly spread."""
    n = -(-payload_bytes // block_bytes)
    picks = range(n) if n <= blocks else np.unique(np.linspace(0, n - 1, blocks).round().astype(np.int64)).tolist()
    return [HEADER_SIZE + i * block_bytes for i in picks]


def _sample_digest(f: Any, payload_bytes: int, offsets: list[int], block_bytes: int) -> str:
    h = hashlib.sha256(payload_bytes.to_bytes(8, "little"))
    for offset in offsets:
        f.seek(offset)
        h.update(f.read(block_bytes))
    return h.hexdigest()


def write_token_cache(dest: Path, pieces: Iterable[np.ndarray], fingerprint: str, dtype: Any) -> int:
    """Write token arrays to the cache file ``dest`` (atomically) behind its header; return the number of tokens."""
    dtype = np.dtype(dtype)
    full = hashlib.sha256()
    count = 0
    with atomic_path(dest) as tmp, open(tmp, "w+b") as f:
        f.write(bytes(HEADER_SIZE))  # the header goes last: a file without one is never taken for finished
        for ids in pieces:
            block = np.ascontiguousarray(ids.astype(dtype, copy=False))
            full.update(block)
            f.write(block)
            count += len(block)
        f.flush()
        payload = count * dtype.itemsize
        fields = {
            "tokenizer": fingerprint,
            "dtype": dtype.name,
            "count": count,
            "sha256": full.hexdigest(),
            "sample": {
                "blocks": SAMPLE_BLOCKS,
                "block_bytes": SAMPLE_BLOCK_BYTES,
                "sha256": _sample_digest(
                    f, payload, _sample_offsets(payload, SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES), SAMPLE_BLOCK_BYTES
                ),
            },
        }
        header = (CACHE_FORMAT + "\n" + json.dumps(fields, sort_keys=True) + "\n").encode("ascii")
        assert len(header) <= HEADER_SIZE, f"token cache header of {len(header)} bytes exceeds {HEADER_SIZE}"
        f.seek(0)
        f.write(header)
        f.flush()
        os.fsync(f.fileno())
    return count


def build_token_cache(corpus: Corpus, tokenizer: AnyTokenizer, dest: Path, *, workers: int | None = None,
                      piece_chars: int = PIECE_CHARS) -> int:
    """Tokenise ``corpus`` into the cache file ``dest`` (atomically); return the number of tokens.

    The corpus is read in bounded blocks, cut into pieces that encode exactly as the whole text does
    (builder/data/stream.py) and encoded on ``workers`` cores (default all): memory stays bounded whatever the
    corpus's size, and the tokens are those of ``tokenizer.encode_array(corpus.text())``.
    """
    pieces = corpus.documents(cut_rule(tokenizer), piece_chars)
    return write_token_cache(
        dest, encode_pieces(tokenizer, pieces, workers), tokenizer.fingerprint(), token_dtype(tokenizer.vocab_size)
    )


def _read_header(raw: bytes) -> dict | str:
    """The header's fields, or why there are none (a phrase that follows the file's name)."""
    if not raw.startswith(FORMAT_FAMILY):
        if raw and not any(raw):
            return f"has no header (its first {len(raw):,} bytes are all zero)"
        return f"has no {CACHE_FORMAT} header (a cache of an older version, or not a token cache)"
    first, _, rest = raw.partition(b"\n")
    if first != CACHE_FORMAT.encode("ascii"):
        return f"was written in format {first[:40].decode('ascii', 'replace')!r}; this version reads {CACHE_FORMAT!r}"
    line, _, padding = rest.partition(b"\n")
    if len(raw) < HEADER_SIZE:
        return f"is truncated (shorter than its {HEADER_SIZE:,}-byte header)"
    damaged = "has a damaged header"
    if any(padding):
        return damaged
    try:
        fields = json.loads(line)
        sample = fields["sample"]
        ok = (
            isinstance(fields["tokenizer"], str)
            and isinstance(fields["dtype"], str)
            and isinstance(fields["sha256"], str)
            and isinstance(sample["sha256"], str)
            and all(type(v) is int and v >= 0 for v in (fields["count"], sample["blocks"], sample["block_bytes"]))
        )
    except (ValueError, KeyError, TypeError):
        return damaged
    return fields if ok and sample["block_bytes"] > 0 else damaged


def token_cache_problem(path: Path, fingerprint: str, dtype: Any, *, full: bool = False) -> str | None:
    """Why the cache file ``path`` cannot serve tokens of this tokenizer and dtype, or ``None`` when it can.

    The reason is a phrase to follow the file's name ("is truncated (...)"). Reads the header, compares it with
    the file's size and checks the sampled checksum; ``full=True`` also hashes every token.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            fields = _read_header(f.read(HEADER_SIZE))
            if isinstance(fields, str):
                return fields
            if fields["tokenizer"] != fingerprint:
                return (
                    f"was built by another tokenizer (fingerprint {fields['tokenizer'][:12]}..., expected {fingerprint[:12]}...)"
                )
            if fields["dtype"] != dtype.name:
                return f"holds {fields['dtype']} tokens, expected {dtype.name}"
            count, held = fields["count"], (size - HEADER_SIZE) / dtype.itemsize
            if size != HEADER_SIZE + count * dtype.itemsize:
                state = "is truncated" if held < count else "is longer than its header says"
                return f"{state} (header says {count:,} tokens, file holds {held:,.10g})"
            sample, payload = fields["sample"], size - HEADER_SIZE
            offsets = _sample_offsets(payload, sample["blocks"], sample["block_bytes"])
            if _sample_digest(f, payload, offsets, sample["block_bytes"]) != sample["sha256"]:
                return (
                    f"fails its checksum (of {len(offsets):,} blocks of {sample['block_bytes']:,} bytes sampled "
                    "across the file): its tokens changed after it was written"
                )
            if full:
                f.seek(HEADER_SIZE)
                h = hashlib.sha256()
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                if h.hexdigest() != fields["sha256"]:
                    return "fails its full checksum: its tokens changed after it was written"
    except OSError as err:
        return f"cannot be read ({type(err).__name__}: {err.strerror or err})"
    return None


class TokenFile:
    """Picklable, read-only view ``[start, stop)`` of the tokens of a cache file, memory-mapped lazily.

    Positions count tokens from the first one (the ``offset`` bytes before it, the header, are skipped; 0 for a
    flat token file such as nanoGPT's ``train.bin``). Pickling (e.g. to DataLoader workers under the ``spawn``
    start method) sends only the path and bounds; each process maps the file itself, so the file is never copied
    into memory.
    """

    def __init__(self, path: str | os.PathLike, dtype: Any, start: int = 0, stop: int | None = None,
                 offset: int = HEADER_SIZE) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        size = self.path.stat().st_size
        if size < self.offset:
            raise ValueError(f"{self.path} ({size} bytes) is shorter than a token cache header ({self.offset} bytes)")
        total = (size - self.offset) // self.dtype.itemsize
        self.start = int(start)
        self.stop = total if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"bad token range [{self.start}, {self.stop}) for a file of {total} tokens")
        self._mm: np.memmap | None = None

    @property
    def array(self) -> np.ndarray:
        """The view as a read-only ``np.memmap``."""
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset)
        return self._mm[self.start : self.stop]

    def view(self, start: int, stop: int) -> TokenFile:
        """A sub-view, with ``start``/``stop`` relative to this view."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"bad sub-range [{start}, {stop}) of a view of {len(self)} tokens")
        return TokenFile(self.path, self.dtype, self.start + start, self.start + stop, self.offset)

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
