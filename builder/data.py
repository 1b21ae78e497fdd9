"""Data layer: tokenizers, corpora, a memory-mapped token cache and the Lightning datamodule.

Overview
--------
* Tokenizers (``CharTokenizer``, ``WordTokenizer``, ``ByteBPETokenizer``, ``GPT2BPETokenizer``) share one interface:
  ``encode``, ``decode``, ``vocab_size``, ``to_dict`` (plain JSON-able containers, safe to store in a
  checkpoint loaded with ``torch.load(weights_only=True)``), ``fingerprint`` and the module function
  ``tokenizer_from_dict``.
* Corpora: the English text shipped with CPython (``pydoc_data.topics``), a UTF-8 file / folder, or the
  generated adjectives language (``builder/adjectives.py``).
* Token cache: the corpus is tokenised once into a flat ``uint16``/``uint32`` file under ``cache_dir``
  (written atomically) and read back with ``np.memmap``.
* ``TokenDataModule``: random training windows (deterministic in ``(seed, epoch, index)``) and fixed,
  evenly spaced validation windows.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "ACCEPTED_SOURCES",
    "ACCEPTED_TOKENIZERS",
    "ByteBPETokenizer",
    "CharTokenizer",
    "Corpus",
    "DataError",
    "EpochSampler",
    "GPT2BPETokenizer",
    "RandomWindowDataset",
    "TokenDataModule",
    "TokenFile",
    "ValWindowDataset",
    "WordTokenizer",
    "build_token_cache",
    "default_cache_dir",
    "embedded_text",
    "token_dtype",
    "tokenizer_from_dict",
]

ACCEPTED_TOKENIZERS = ("char", "word", "byte_bpe", "gpt2_bpe")
ACCEPTED_SOURCES = ("embedded", "text", "adjectives")
CACHE_ENV_VAR = "HYDRAFORMER_CACHE"
DOC_SEPARATOR = "\n\n"
_CACHE_FORMAT = "hydraformer-tokens-v1"
_CHUNK_CHARS = 1 << 20  # encode BPE text in ~1M-character pieces


from .errors import DataError  # noqa: E402  (re-exported: builder.data.DataError)

# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def _sha256_json(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


class CharTokenizer:
    """Character-level tokenizer; ids are positions in the sorted character vocabulary."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer vocabulary entries must be single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer vocabulary contains duplicate characters")
        if not chars:
            raise ValueError("CharTokenizer vocabulary is empty")
        self.chars: list[str] = sorted(chars)
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        # sorted str order == code point order, so ids can be found with searchsorted
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> CharTokenizer:
        """Vocabulary = sorted set of characters of ``text`` (a string or an iterable of strings)."""
        seen: set[str] = set()
        for piece in [text] if isinstance(text, str) else text:
            seen.update(piece)
        if not seen:
            raise ValueError("cannot build a CharTokenizer from empty text")
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised ``encode`` returning an ``int64`` numpy array."""
        if not text:
            return np.zeros(0, dtype=np.int64)
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, cps)
        ids_clipped = np.minimum(ids, len(self._codepoints) - 1)
        bad = self._codepoints[ids_clipped] != cps
        if bad.any():
            pos = int(np.argmax(bad))
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the tokenizer vocabulary "
                f"({self.vocab_size} characters)"
            )
        return ids.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        n = len(self.chars)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {n} characters")
            out.append(self.chars[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": list(self.chars)}

    def fingerprint(self) -> str:
        return _sha256_json(self.to_dict())

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class WordTokenizer:
    """Word-level tokenizer: whitespace-separated words; ids are positions in the sorted word vocabulary.

    ``decode`` joins words with single spaces, so ``decode(encode(text))`` gives ``text`` with its
    whitespace normalised. Meant for closed vocabularies (the adjectives language).
    """

    kind = "word"

    def __init__(self, words: Iterable[str]) -> None:
        words = list(words)
        for w in words:
            if not isinstance(w, str) or not w or len(w.split()) != 1 or w.strip() != w:
                raise ValueError(f"WordTokenizer vocabulary entries must be non-empty words without whitespace, got {w!r}")
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer vocabulary contains duplicate words")
        if not words:
            raise ValueError("WordTokenizer vocabulary is empty")
        self.words: list[str] = sorted(words)
        self._stoi = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> WordTokenizer:
        """Vocabulary = sorted set of the whitespace-split words of ``text`` (a string or an iterable of strings)."""
        seen: set[str] = set()
        for piece in [text] if isinstance(text, str) else text:
            seen.update(piece.split())
        if not seen:
            raise ValueError("cannot build a WordTokenizer from text without words")
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[w] for w in text.split()]
        except KeyError as e:
            raise ValueError(
                f"word {e.args[0]!r} is not in the tokenizer vocabulary ({self.vocab_size} words)"
            ) from None

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        n = len(self.words)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {n} words")
            out.append(self.words[i])
        return " ".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": list(self.words)}

    def fingerprint(self) -> str:
        return _sha256_json(self.to_dict())

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


class _HFByteLevelTokenizer:
    """Shared implementation for byte-level BPE tokenizers backed by ``tokenizers.Tokenizer``."""

    kind = "?"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        # ids of a hand-written vocab.json need not be contiguous: size embeddings by the largest id
        self._vocab_size = (max(vocab.values()) + 1) if vocab else 0

    @property
    def hf_tokenizer(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def encode_array(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, dtype=np.int64)
        pieces = _split_text(text, _CHUNK_CHARS)
        encs = self._tok.encode_batch(pieces) if len(pieces) > 1 else [self._tok.encode(pieces[0])]
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encs])

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_str(self) -> str:
        return self._tok.to_str()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self._tok.to_str()}

    def fingerprint(self) -> str:
        # canonicalise the tokenizer JSON so formatting differences do not change the hash
        return _sha256_json({"kind": self.kind, "tokenizer": json.loads(self._tok.to_str())})

    @classmethod
    def from_str(cls, tokenizer_json: str) -> _HFByteLevelTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(tokenizer_json))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _byte_level_pipeline(tok: Any) -> Any:
    from tokenizers import decoders, pre_tokenizers

    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class ByteBPETokenizer(_HFByteLevelTokenizer):
    """Byte-level BPE trained locally with the ``tokenizers`` library."""

    kind = "byte_bpe"

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int = 1024) -> ByteBPETokenizer:
        """Train on ``texts`` (a string or an iterable of strings) to at most ``vocab_size`` tokens.

        The 256 byte symbols are always in the vocabulary, so any text can be encoded.
        """
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise ValueError(f"byte-level BPE needs vocab_size >= 256 (the byte alphabet), got {vocab_size}")
        tok = _byte_level_pipeline(Tokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        pieces: Iterable[str] = _split_text(texts, _CHUNK_CHARS) if isinstance(texts, str) else texts
        tok.train_from_iterator(pieces, trainer)
        return cls(tok)


class GPT2BPETokenizer(_HFByteLevelTokenizer):
    """GPT-2 style byte-level BPE read from a local ``vocab.json`` + ``merges.txt``."""

    kind = "gpt2_bpe"

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> GPT2BPETokenizer:
        from tokenizers import Tokenizer, models

        for key, f in (("vocab_file", vocab_file), ("merges_file", merges_file)):
            if not Path(f).is_file():
                raise DataError(f"data.{key}: file {str(f)!r} does not exist")
        try:
            model = models.BPE.from_file(str(vocab_file), str(merges_file))
        except Exception as e:  # tokenizers raises a plain Exception on malformed files
            raise DataError(
                f"could not read GPT-2 BPE files vocab_file={str(vocab_file)!r}, merges_file={str(merges_file)!r}: {e}"
            ) from e
        return cls(_byte_level_pipeline(Tokenizer(model)))


_TOKENIZER_CLASSES = {"char": CharTokenizer, "word": WordTokenizer, "byte_bpe": ByteBPETokenizer,
                      "gpt2_bpe": GPT2BPETokenizer}

AnyTokenizer = CharTokenizer | WordTokenizer | ByteBPETokenizer | GPT2BPETokenizer


def tokenizer_from_dict(d: dict) -> AnyTokenizer:
    """Rebuild any tokenizer from its ``to_dict()`` output."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"not a tokenizer dict (expected a dict with a 'kind' key): {type(d).__name__}")
    kind = d["kind"]
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "word":
        return WordTokenizer(d["words"])
    if kind in ("byte_bpe", "gpt2_bpe"):
        return _TOKENIZER_CLASSES[kind].from_str(d["tokenizer_json"])
    raise ValueError(f"unknown tokenizer kind {kind!r}; accepted: {', '.join(ACCEPTED_TOKENIZERS)}")


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65536), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------


def _split_text(text: str, max_chars: int) -> list[str]:
    """Split into pieces of about ``max_chars`` characters, cutting just after a newline when possible."""
    if len(text) <= max_chars:
        return [text]
    pieces = []
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + max_chars // 2, end)
            if cut != -1:
                end = cut + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def embedded_text() -> str:
    """The English reference text that ships with CPython (``pydoc_data.topics``), ~465 KB."""
    from pydoc_data.topics import topics

    return DOC_SEPARATOR.join(topics[k] for k in sorted(topics))


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


class Corpus:
    """A text source: ``Corpus("embedded")``, ``Corpus("text", path)`` (a UTF-8 file or a folder) or
    ``Corpus("adjectives", n_sentences=..., seed=...)`` (the generated language of ``builder/adjectives.py``,
    one sentence per line).

    A folder contributes all its non-hidden files (recursively, sorted by relative path), joined with
    ``"\\n\\n"``. Files are read one at a time.
    """

    def __init__(self, source: str = "embedded", path: str | os.PathLike | None = None,
                 n_sentences: int = 20_000, seed: int = 0) -> None:
        if source not in ACCEPTED_SOURCES:
            raise DataError(_unknown_choice("source", source, ACCEPTED_SOURCES))
        self.source = source
        self.path: Path | None = None
        self._files: list[Path] = []
        self.n_sentences, self.seed = int(n_sentences), int(seed)
        if source == "text":
            if path is None or str(path) == "":
                raise DataError("data.path is required when data.source='text' (a UTF-8 file or a folder)")
            p = Path(path).expanduser()
            if not p.exists():
                raise DataError(f"data.path: {str(p)!r} does not exist")
            self.path = p
            if p.is_dir():
                self._files = sorted(
                    (f for f in p.rglob("*") if f.is_file() and not _is_hidden(f.relative_to(p))),
                    key=lambda f: f.relative_to(p).as_posix(),
                )
                if not self._files:
                    raise DataError(f"data.path: folder {str(p)!r} contains no (non-hidden) files: empty corpus")
            else:
                self._files = [p]

    @property
    def description(self) -> str:
        if self.source == "adjectives":
            return f"adjectives language ({self.n_sentences} sentences, seed {self.seed})"
        return "embedded pydoc_data.topics" if self.source == "embedded" else str(self.path)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @staticmethod
    def _read_file(f: Path) -> str:
        data = f.read_bytes()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"data.path: file {str(f)!r} is not valid UTF-8: bad byte 0x{data[e.start]:02x} "
                f"at byte offset {e.start} ({e.reason})"
            ) from None

    def _pieces(self) -> Iterator[tuple[bool, str]]:
        """(is_separator, text) pieces; their concatenation is the full corpus text."""
        if self.source == "embedded":
            yield False, embedded_text()
            return
        if self.source == "adjectives":
            from .adjectives import corpus_text

            yield False, corpus_text(self.n_sentences, self.seed)
            return
        for i, f in enumerate(self._files):
            if i:
                yield True, DOC_SEPARATOR
            yield False, self._read_file(f)

    def documents(self) -> Iterator[str]:
        """The corpus as a stream of pieces whose concatenation is the full text (separators included)."""
        for _, piece in self._pieces():
            yield piece

    def scan(self) -> tuple[str, int]:
        """Read everything once: return (sha256 of the UTF-8 text, number of characters).

        Validates UTF-8 and non-emptiness (separators alone do not count) along the way.
        """
        h = hashlib.sha256()
        n = content = 0
        for is_sep, piece in self._pieces():
            h.update(piece.encode("utf-8"))
            n += len(piece)
            if not is_sep:
                content += len(piece)
        if content == 0:
            raise DataError(f"data.path: corpus {self.description!r} is empty")
        return h.hexdigest(), n

    def text(self) -> str:
        """The whole corpus as one string (raises ``DataError`` if it is empty)."""
        self.scan()
        return "".join(self.documents())


# --------------------------------------------------------------------------------------------------
# Token cache
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$HYDRAFORMER_CACHE`` if set, else ``~/.cache/hydraformer/tokens``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/hydraformer/tokens").expanduser()


def _atomic_write(dest: Path, write_fn: Any, *, replace: bool = True) -> None:
    """Write via ``write_fn(fileobj)`` into a temp file next to ``dest``, then publish it atomically.

    ``replace=False`` keeps an existing ``dest`` (first writer wins), so that concurrent processes
    all end up using the same file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # atomic, fails if dest exists
            except FileExistsError:
                pass
            except OSError:  # filesystem without hard links
                if not dest.exists():
                    os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_token_cache(corpus: Corpus, tokenizer: AnyTokenizer, dest: Path) -> int:
    """Tokenise ``corpus`` piece by piece into the flat file ``dest``; return the number of tokens."""
    dtype = token_dtype(tokenizer.vocab_size)
    count = 0

    def write(f: Any) -> None:
        nonlocal count
        for piece in corpus.documents():
            for chunk in _split_text(piece, _CHUNK_CHARS * 8):
                if not chunk:
                    continue
                ids = tokenizer.encode_array(chunk)
                ids.astype(dtype).tofile(f)
                count += len(ids)

    _atomic_write(dest, write)
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


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


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


class EpochSampler(Sampler[int]):
    """Yields ``epoch * n .. (epoch + 1) * n - 1``, every ``world_size``-th one from ``rank``.

    Lightning calls ``set_epoch`` each epoch. Under DDP each process draws its own stride of one
    global order (the trainer is built with ``use_distributed_sampler=False``), so 2 processes with
    batch b see exactly the samples of 1 process with batch 2b. ``skip`` (a multiple of
    ``world_size``) drops the first samples of epoch ``skip_epoch`` only: a run resumed in the middle
    of an epoch continues with the very samples the uninterrupted run would have drawn next.
    """

    def __init__(self, num_samples: int, epoch: int = 0, skip: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = int(num_samples)
        self.epoch = int(epoch)
        self.skip_epoch, self.skip = int(epoch), int(skip)
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _skip(self) -> int:
        return min(self.skip, self.num_samples) if self.epoch == self.skip_epoch else 0

    def __len__(self) -> int:
        return (self.num_samples - self._skip()) // self.world_size

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.num_samples + self._skip() + self.rank
        return iter(range(start, start + len(self) * self.world_size, self.world_size))


# --------------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------------


def _unknown_choice(key: str, value: Any, accepted: Sequence[str]) -> str:
    msg = f"data.{key}={value!r} is not accepted: one of {', '.join(accepted)}"
    close = difflib.get_close_matches(str(value), accepted, n=1, cutoff=0.4)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg


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
            raise DataError(_unknown_choice("source", source, ACCEPTED_SOURCES))
        if tokenizer not in ACCEPTED_TOKENIZERS:
            raise DataError(_unknown_choice("tokenizer", tokenizer, ACCEPTED_TOKENIZERS))
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
        key = _sha256_json({"kind": kind, "source": source_hash, "vocab_size": self.bpe_vocab_size})
        tok_file = self.cache_dir / f"byte_bpe-{key[:24]}.json"
        if not tok_file.is_file():
            trained = ByteBPETokenizer.train(corpus.documents(), vocab_size=self.bpe_vocab_size)
            blob = trained.to_str().encode("utf-8")
            # first writer wins, so concurrent (DDP) processes share one tokenizer
            _atomic_write(tok_file, lambda f: f.write(blob), replace=False)
        self.tokenizer_file = tok_file
        return ByteBPETokenizer.from_str(tok_file.read_text(encoding="utf-8"))

    def _build(self) -> None:
        corpus = Corpus(self.source, self.path, n_sentences=self.n_sentences, seed=self.seed)
        source_hash, _ = corpus.scan()
        tokenizer = self._make_tokenizer(corpus, source_hash)
        dtype = token_dtype(tokenizer.vocab_size)
        key = _sha256_json(
            {"format": _CACHE_FORMAT, "source": source_hash, "tokenizer": tokenizer.fingerprint(), "dtype": dtype.name}
        )
        cache_file = self.cache_dir / f"tokens-{key[:32]}.{dtype.name}.bin"
        hit = cache_file.is_file() and cache_file.stat().st_size > 0 and cache_file.stat().st_size % dtype.itemsize == 0
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

    def _resume_position(self) -> tuple[int, int]:
        """(epoch, samples already drawn in it across all ranks) of a run restored from a checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return trainer.current_epoch, done * self.batch_size * trainer.world_size

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        epoch, skip = self._resume_position()
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(self.train_dataset), epoch=epoch, skip=skip, rank=rank, world_size=world),
            drop_last=len(self.train_dataset) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
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
