"""Corpora of any size: files read in bounded blocks, cut into pieces a tokenizer encodes exactly as it would the
whole text, and tokenised on all cores.

    read_text_blocks   a UTF-8 file as decoded blocks (``READ_BYTES`` at a time); bad bytes name the file and offset
    jsonl_texts        the named text field of each line of a ``.jsonl`` file
    parquet_texts      the named text column of a ``.parquet`` file (pyarrow), record batch by record batch
    char_vocabulary    the characters of a stream of pieces (vectorised)
    cut_pieces         a stream of text blocks recut into pieces of about ``chunk_chars`` characters, cut only where
                       the tokenizer's pre-tokenisation already cuts (``cut_rule``)
    encode_pieces      token arrays of those pieces: the ``tokenizers`` batch encoder (all cores) for byte-level BPE,
                       a lookup table for characters, worker processes for words
    build_lock         one process builds a cache (``fcntl.flock``); the others wait for it, then read it

Why the cuts are exact. ``CharTokenizer`` maps each character on its own: any cut is exact. ``WordTokenizer`` is
``str.split()``: a cut just before a whitespace character is exact. Byte-level BPE (``ByteBPETokenizer``,
``GPT2BPETokenizer``: the ``ByteLevel`` pre-tokenizer, GPT-2's regex, no prefix space, no normalizer) merges only
inside the words of the regex ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``; at
position ``i`` with ``text[i]`` a space or newline and either ``text[i-1]`` not whitespace (no word runs from a
non-space into a space) or ``text[i+1]`` not whitespace (a run of whitespace gives all but its last character to
one word and the last to the word after it), a word always ends, and since the regex has no look-behind and only
looks ahead at whitespace, both sides are split into the same words on their own. Python's ``str.isspace`` holds
for every character the regex's ``\\s`` matches (Unicode White_Space), so "not ``isspace``" is never a space to it.
tests/test_data_stream.py checks equality with a whole-text encode on generated text (hypothesis).
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .tokenizers import CharTokenizer, WordTokenizer

READ_BYTES = 1 << 20  # bytes read from a file at a time
PIECE_CHARS = 1 << 16  # characters per piece handed to the encoder
MAX_PIECE_CHARS = 1 << 24  # a piece grows past PIECE_CHARS only to reach a cut; never past this
WORD_POOL_AFTER = 256  # words: pieces encoded in this process before worker processes take over (16M chars)
BATCH_PIECES_PER_CORE = 8  # pieces encoded per batch = this x cores (bounded memory, every core busy)


class NotTextError(ConfigError, DataError):
    """A corpus file that is not UTF-8 text (a ``ConfigError`` for ``data.path``, and a ``DataError`` as before)."""


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------ reading files


def read_text_blocks(path: str | os.PathLike, block_bytes: int = READ_BYTES) -> Iterator[str]:
    """The UTF-8 text of ``path`` as decoded blocks; never more than ``block_bytes`` (+3) bytes in memory.

    A block never ends inside a character (the incremental decoder keeps a partial one for the next block).
    Invalid UTF-8 or a NUL byte (a binary file) raises ``NotTextError`` naming the file and the byte offset.
    """
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0  # bytes of the file handed to the decoder before this block
    with open(path, "rb") as f:
        while True:
            block = f.read(block_bytes)
            final = not block
            pending = decoder.getstate()[0]  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(block, final=final)
                error = None
            except UnicodeDecodeError as e:
                error = e
            nul = block.find(b"\x00")  # the first problem is reported: a NUL, or a bad byte before it
            if nul != -1 and (error is None or len(pending) + nul < error.start):
                raise NotTextError(
                    "data.path", str(path), "a UTF-8 text file",
                    f"a NUL byte at byte offset {consumed + nul}: a binary file, not text",
                )
            if error is not None:
                data = pending + block
                bad = f"bad byte 0x{data[error.start]:02x}" if error.start < len(data) else "a character cut short"
                raise NotTextError(
                    "data.path", str(path), "a UTF-8 text file",
                    f"not valid UTF-8: {bad} at byte offset {consumed - len(pending) + error.start} ({error.reason})",
                )
            consumed += len(block)
            if text:
                yield text
            if final:
                return


def jsonl_texts(path: str | os.PathLike, field: str) -> Iterator[str]:
    """The string ``field`` of each JSON line of ``path`` (blank lines skipped), one line in memory at a time."""
    path = Path(path)
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line_offset, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise NotTextError(
                    "data.path", str(path), "a UTF-8 JSON-lines file",
                    f"not valid UTF-8: bad byte 0x{raw[e.start]:02x} at byte offset {line_offset + e.start} "
                    f"(line {number})",
                ) from None
            try:
                record = json.loads(line)
            except ValueError as e:
                raise NotTextError(
                    "data.path", str(path), "a JSON-lines file (one JSON object per line)",
                    f"line {number} (byte offset {line_offset}) is not JSON: {e}",
                ) from None
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise ConfigError(
                    "data.text_field", field, f"a key of every record of {str(path)!r}",
                    f"line {number} has {keys or 'no keys'}",
                )
            text = record[field]
            if not isinstance(text, str):
                raise ConfigError(
                    "data.text_field", field, "a field holding text",
                    f"{str(path)!r} line {number}: it holds {type(text).__name__}",
                )
            yield text


def parquet_texts(path: str | os.PathLike, field: str, batch_rows: int = 1024) -> Iterator[str]:
    """The string column ``field`` of the Parquet file ``path``, ``batch_rows`` rows in memory at a time."""
    path = Path(path)
    try:
        import pyarrow.parquet as pq  # optional: only .parquet corpora need it
    except ImportError:
        raise ConfigError(
            "data.path", str(path), "a .parquet file read with pyarrow, which is not installed",
            "pip install pyarrow",
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow.lib.ArrowInvalid and friends
        raise NotTextError("data.path", str(path), "a Parquet file", f"{type(e).__name__}: {e}") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise ConfigError("data.text_field", field, f"a column of {str(path)!r}: {', '.join(names)}")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[field]):
        for text in batch.column(0).to_pylist():
            if text is None:
                continue
            if not isinstance(text, str):
                raise ConfigError(
                    "data.text_field", field, "a column of strings", f"{str(path)!r} holds {type(text).__name__}"
                )
            yield text


# ------------------------------------------------------------------------------------------ cutting


def cut_rule(tokenizer: Any) -> str:
    """Where pieces of text may be cut for ``tokenizer``: ``"any"`` (characters) or ``"space"`` (words, byte BPE).

    Refuses a ``tokenizers`` pipeline whose pieces would not encode as the whole (a normalizer, a prefix space,
    a pre-tokenizer other than GPT-2's byte-level regex).
    """
    if isinstance(tokenizer, CharTokenizer):
        return "any"
    if isinstance(tokenizer, WordTokenizer):
        return "space"
    hf = getattr(tokenizer, "hf_tokenizer", None)
    if hf is None:
        raise DataError(f"cannot cut text into pieces for {tokenizer!r}: not a known tokenizer")
    spec = json.loads(hf.to_str())
    pre = spec.get("pre_tokenizer") or {}
    exact = (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space", False)
        and pre.get("use_regex", True)
    )
    if not exact:
        raise DataError(
            f"{type(tokenizer).__name__}'s pipeline (normalizer {spec.get('normalizer')!r}, pre-tokenizer "
            f"{pre.get('type')!r}) cannot be encoded in pieces exactly; only byte-level BPE without a prefix space can"
        )
    return "space"


# a space or newline with a non-whitespace character before or after it (Python's \s is str.isspace)
_CUT = re.compile(r"(?<=\S)[ \n]|[ \n](?=\S)")


def _find_cut(text: str, lo: int, hi: int) -> int:
    """The first position ``i`` in ``[lo, hi)``, ``lo >= 1``, where a "space" cut is exact, or -1 (the character
    after ``i`` must be in ``text[:hi]``; the one before it may be before ``lo``)."""
    m = _CUT.search(text, lo, hi)
    return -1 if m is None else m.start()


def cut_pieces(blocks: Iterable[str], rule: str, piece_chars: int = PIECE_CHARS,
               max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """Recut a stream of text blocks into pieces of about ``piece_chars`` characters whose encodings, joined, are
    the encoding of the whole stream (see the module's docstring); a piece longer than ``max_chars`` without a
    place to cut raises ``DataError``."""
    if rule not in ("any", "space"):
        raise ValueError(f"unknown cut rule {rule!r}")
    seen = 0  # characters already yielded
    buf, pos = "", 0  # the text not yet yielded is buf[pos:]
    for block in blocks:
        buf = buf[pos:] + block if pos < len(buf) else block
        pos = 0
        while len(buf) - pos > piece_chars:
            if rule == "any":
                cut = pos + piece_chars
            else:
                cut = _find_cut(buf, pos + max(1, piece_chars // 2), pos + piece_chars)
                if cut == -1:
                    cut = _find_cut(buf, pos + max(1, piece_chars), len(buf))
                if cut == -1:
                    if len(buf) - pos > max_chars:
                        raise DataError(
                            f"the corpus has {len(buf) - pos:,} characters without a space or newline between "
                            "words after its first "
                            f"{seen:,}: text this long without a break cannot be tokenised in bounded pieces"
                        )
                    break  # read more
            yield buf[pos:cut]
            seen += cut - pos
            pos = cut
    if pos < len(buf):
        yield buf[pos:]


# ------------------------------------------------------------------------------------------ encoding


class _CharTable:
    """``CharTokenizer`` by a lookup table from code point to id: one gather per piece."""

    MISSING = np.iinfo(np.uint32).max

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer
        cps = tokenizer._codepoints
        self.table = np.full(int(cps.max()) + 1, self.MISSING, dtype=np.uint32)
        self.table[cps] = np.arange(len(cps), dtype=np.uint32)

    def __call__(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self.table[np.minimum(cps, len(self.table) - 1)]
        bad = (ids == self.MISSING) | (cps >= len(self.table))
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"character {text[pos]!r} is not in the tokenizer vocabulary ({self.tokenizer.vocab_size} characters): "
                "the corpus changed while it was read"
            )
        return ids


def char_vocabulary(pieces: Iterable[str]) -> CharTokenizer:
    """``CharTokenizer.from_text(pieces)``, vectorised: a flag per code point (one scatter per piece)."""
    seen = np.zeros(0x110000, dtype=bool)
    for piece in pieces:
        seen[np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)] = True
    codepoints = np.flatnonzero(seen)
    if not len(codepoints):
        raise ValueError("cannot build a CharTokenizer from empty text")
    return CharTokenizer(chr(c) for c in codepoints.tolist())


_WORKER_TOKENIZER: Any = None


def _worker_context() -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _init_word_worker(d: dict) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = WordTokenizer(d["words"])


def _words_to_ids(tokenizer: WordTokenizer, text: str) -> np.ndarray:
    """``tokenizer.encode_array(text)``, without a list in between."""
    try:
        return np.fromiter(map(tokenizer._stoi.__getitem__, text.split()), dtype=np.uint32)
    except KeyError as e:
        raise DataError(
            f"word {e.args[0]!r} is not in the tokenizer vocabulary ({tokenizer.vocab_size} words): "
            "the corpus changed while it was read"
        ) from None


def _encode_words(text: str) -> np.ndarray:
    return _words_to_ids(_WORKER_TOKENIZER, text)


def _batches(pieces: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for piece in pieces:
        batch.append(piece)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_pieces(tokenizer: Any, pieces: Iterable[str], workers: int | None = None,
                  pool_after: int = WORD_POOL_AFTER) -> Iterator[np.ndarray]:
    """Token arrays of ``pieces``, in order, on ``workers`` cores (default: all this process may use).

    Byte-level BPE: the ``tokenizers`` batch encoder (Rust threads). Characters: a lookup table (one vectorised
    gather, faster than worker processes could be fed). Words: the first ``pool_after`` pieces here, the rest (a
    big corpus) in ``workers`` processes when there are more than one (starting them costs seconds).
    """
    workers = cpu_count() if workers is None else max(1, int(workers))
    if isinstance(tokenizer, CharTokenizer):
        table = _CharTable(tokenizer)
        for piece in pieces:
            yield table(piece)
        return
    if isinstance(tokenizer, WordTokenizer):
        pieces = iter(pieces)
        for piece in itertools.islice(pieces, None if workers == 1 else pool_after):
            yield _words_to_ids(tokenizer, piece)
        first = next(pieces, None)
        if first is None:
            return
        # not fork: the parent may hold threads (torch, tokenizers) that a forked child would inherit locked. The fork
        # server imports this module once (torch with it: ~4 s, ~230 MB); the workers fork from it, sharing that
        with ProcessPoolExecutor(workers, _worker_context(), _init_word_worker, (tokenizer.to_dict(),)) as pool:
            for batch in _batches(itertools.chain([first], pieces), workers * BATCH_PIECES_PER_CORE):
                yield from pool.map(_encode_words, batch)
        return
    hf = tokenizer.hf_tokenizer
    encode = getattr(hf, "encode_batch_fast", hf.encode_batch)  # _fast: no offsets (tokenizers >= 0.20)
    for batch in _batches(pieces, workers * BATCH_PIECES_PER_CORE):
        for enc in encode(batch, add_special_tokens=False):
            yield np.asarray(enc.ids, dtype=np.uint32)


# ------------------------------------------------------------------------------------------ one builder


@contextlib.contextmanager
def build_lock(cache_dir: Path, key: str, on_wait: Any = None) -> Iterator[None]:
    """Hold an exclusive lock named by ``key`` in ``cache_dir`` (``.lock-<key>``; ``fcntl.flock``, released when
    the process dies). Another process holding it is building the same cache: ``on_wait(seconds)`` is called once,
    and this one waits for it. Without ``fcntl`` (Windows) nothing is locked: the writes are atomic anyway."""
    try:
        import fcntl  # POSIX only: without it (Windows) nothing is locked
    except ImportError:
        yield
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / f".lock-{key[:32]}", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            start = time.monotonic()
            if on_wait is not None:
                on_wait(0.0)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if on_wait is not None:
                on_wait(time.monotonic() - start)
        yield
    finally:
        os.close(fd)  # releases the lock
