"""Tokenizers: character, word, byte-level BPE (trained here) and GPT-2 BPE (read from local files).

All share one interface: ``encode``, ``encode_array``, ``decode``, ``vocab_size``, ``to_dict`` (plain
JSON-able containers, safe inside a checkpoint loaded with ``torch.load(weights_only=True)``) and
``fingerprint``; ``tokenizer_from_dict`` rebuilds any of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import DataError, first_line

CHUNK_CHARS = 1 << 20  # encode BPE text in ~1M-character pieces




def not_in_vocabulary(pieces: list[str], vocab_size: int, first_at: int | None = None) -> str:
    """The one message of every tokenizer for text it cannot encode: each distinct character (or word) it lacks, and
    where the first is (a character position) when known."""
    pieces = list(dict.fromkeys(pieces))
    what = "characters" if all(len(p) == 1 for p in pieces) else "words"
    shown = ", ".join(repr(p) for p in pieces[:12]) + (f" and {len(pieces) - 12} more" if len(pieces) > 12 else "")
    where = f" (the first at position {first_at})" if first_at is not None else ""
    return f"{what} not in the tokenizer's vocabulary ({vocab_size} tokens): {shown}{where}"


def sha256_json(obj: Any) -> str:
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
            at = np.flatnonzero(bad)
            raise ValueError(not_in_vocabulary([text[i] for i in at], self.vocab_size, int(at[0])))
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
        return sha256_json(self.to_dict())

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
        except KeyError:
            raise ValueError(not_in_vocabulary([w for w in text.split() if w not in stoi], self.vocab_size)) from None

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
        return sha256_json(self.to_dict())

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
        try:
            return list(self._tok.encode(text).ids)
        except Exception as err:  # the library's plain Exception: "WordLevel error: Missing [UNK] token ..."
            raise ValueError(self._cannot_encode(text, err)) from None

    def encode_array(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, dtype=np.int64)
        pieces = split_text(text, CHUNK_CHARS)
        try:
            encs = self._tok.encode_batch(pieces) if len(pieces) > 1 else [self._tok.encode(pieces[0])]
        except Exception as err:  # as in encode
            raise ValueError(self._cannot_encode(text, err)) from None
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encs])

    def _cannot_encode(self, text: str, err: Exception) -> str:
        """What of ``text`` the vocabulary lacks (a tokenizer with no unknown token, such as an exported character or
        word model's): each piece the pre-tokenizer cuts (a character, a word) that does not encode on its own."""
        pre = self._tok.pre_tokenizer
        spans = [span for _, span in pre.pre_tokenize_str(text)] if pre is not None else \
            [(i, i + 1) for i in range(len(text))]
        missing: dict[str, int] = {}  # piece -> where it first is
        tried: set[str] = set()
        for a, b in spans:
            if text[a:b] in tried:
                continue
            tried.add(text[a:b])
            try:
                self._tok.encode(text[a:b])
            except Exception:  # noqa: BLE001 - the library raises nothing narrower
                missing[text[a:b]] = a
        if not missing:  # no one piece is to blame: the library's own words
            return f"the tokenizer could not encode it: {first_line(err)}"
        return not_in_vocabulary(list(missing), self.vocab_size, next(iter(missing.values())))

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_str(self) -> str:
        return self._tok.to_str()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self._tok.to_str()}

    def fingerprint(self) -> str:
        # canonicalise the tokenizer JSON so formatting differences do not change the hash
        return sha256_json({"kind": self.kind, "tokenizer": json.loads(self._tok.to_str())})

    @classmethod
    def from_str(cls, tokenizer_json: str) -> _HFByteLevelTokenizer:
        return cls(Tokenizer.from_str(tokenizer_json))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _byte_level_pipeline(tok: Any) -> Any:
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
        if vocab_size < 256:
            raise ValueError(f"byte-level BPE needs vocab_size >= 256 (the byte alphabet), got {vocab_size}")
        tok = _byte_level_pipeline(Tokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        pieces: Iterable[str] = split_text(texts, CHUNK_CHARS) if isinstance(texts, str) else texts
        tok.train_from_iterator(pieces, trainer)
        return cls(tok)


class GPT2BPETokenizer(_HFByteLevelTokenizer):
    """GPT-2 style byte-level BPE read from a local ``vocab.json`` + ``merges.txt``."""

    kind = "gpt2_bpe"

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> GPT2BPETokenizer:
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


class HFTokenizer(_HFByteLevelTokenizer):
    """Any ``tokenizer.json`` the ``tokenizers`` library reads (Llama's, Qwen's, Gemma's, Pythia's ...), as it is."""

    kind = "hf_tokenizer"


_TOKENIZER_CLASSES = {"char": CharTokenizer, "word": WordTokenizer, "byte_bpe": ByteBPETokenizer,
                      "gpt2_bpe": GPT2BPETokenizer, "hf_tokenizer": HFTokenizer}

AnyTokenizer = CharTokenizer | WordTokenizer | ByteBPETokenizer | GPT2BPETokenizer | HFTokenizer


def as_tokenizer_json(tokenizer) -> str | None:
    """``tokenizer`` as a ``tokenizer.json`` the ``tokenizers`` library (and transformers) reads with the same ids:
    its own for BPE tokenizers, a WordLevel vocabulary split per character (char) or at whitespace (word)."""
    if getattr(tokenizer, "hf_tokenizer", None) is not None:
        return tokenizer.to_str()
    if isinstance(tokenizer, CharTokenizer):
        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok.to_str()
    if isinstance(tokenizer, WordTokenizer):
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(tokenizer.words)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return tok.to_str()
    return None


def tokenizer_from_dict(d: dict) -> AnyTokenizer:
    """Rebuild any tokenizer from its ``to_dict()`` output."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"not a tokenizer dict (expected a dict with a 'kind' key): {type(d).__name__}")
    kind = d["kind"]
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "word":
        return WordTokenizer(d["words"])
    if kind in ("byte_bpe", "gpt2_bpe", "hf_tokenizer"):
        return _TOKENIZER_CLASSES[kind].from_str(d["tokenizer_json"])
    raise ValueError(f"unknown tokenizer kind {kind!r}; accepted: {', '.join(_TOKENIZER_CLASSES)}")


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65536), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)




def split_text(text: str, max_chars: int) -> list[str]:
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

