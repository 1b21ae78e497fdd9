"""Corpora: the English text shipped with CPython, a UTF-8 file or folder (``.jsonl`` and ``.parquet`` files give
their ``text_field``), or the generated adjectives language. Files are read in bounded blocks, never whole."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from components.registry import closest

from ..config.schema import ACCEPTED_SOURCES
from ..errors import ConfigError, DataError
from ..files import special_file
from . import adjectives, senses
from .stream import PIECE_CHARS, READ_BYTES, cut_pieces, jsonl_texts, parquet_texts, read_text_blocks
from .tokenizers import sha256_json

# generated in memory from (n_sentences, seed): the adjectives language, and it mixed with the senses language
GENERATED = {"adjectives": adjectives.corpus_text, "lecture": senses.lecture_text}
DOC_SEPARATOR = "\n\n"
STRUCTURED_SUFFIXES = (".jsonl", ".parquet")  # one document per record, from the field ``text_field``
# bumped when the token stream a corpus gives changes (v3: the whole text encoded as one, cut only where exact)
CORPUS_KEY_VERSION = "v3"


def unknown_choice(key: str, value, accepted) -> str:
    """The paragraph for a ``data.<key>`` outside ``accepted``, with the closest choice."""
    return f"data.{key}={value!r} is not accepted: one of {', '.join(accepted)}{closest(value, accepted)}"


def embedded_text() -> str:
    """The English reference text that ships with CPython (``pydoc_data.topics``), ~465 KB."""
    from pydoc_data.topics import topics  # start-up: a 465 KB module, read only for this corpus

    return DOC_SEPARATOR.join(topics[k] for k in sorted(topics))


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


class Corpus:
    """A text source: ``Corpus("embedded")``, ``Corpus("text", path)`` (a UTF-8 file or a folder) or
    ``Corpus("adjectives", n_sentences=..., seed=...)`` (the generated language of ``builder/adjectives.py``,
    one sentence per line).

    A folder contributes all its non-hidden files (recursively, sorted by relative path), joined with
    ``"\\n\\n"``. A ``.jsonl`` file gives the string ``text_field`` of each line and a ``.parquet`` file that
    column (pyarrow), records joined with ``"\\n\\n"`` too. Files are read one block at a time.
    """

    block_bytes = READ_BYTES  # bytes of a file read at a time

    def __init__(self, source: str = "embedded", path: str | os.PathLike | None = None,
                 n_sentences: int = 20_000, seed: int = 0, text_field: str = "text") -> None:
        if source not in ACCEPTED_SOURCES:
            raise DataError(unknown_choice("source", source, ACCEPTED_SOURCES))
        self.source = source
        self.path: Path | None = None
        self._files: list[Path] = []
        self.n_sentences, self.seed = int(n_sentences), int(seed)
        self.text_field = str(text_field)
        if source == "text":
            if path is None or str(path) == "":
                raise DataError("data.path is required when data.source='text' (a UTF-8 file or a folder)")
            p = Path(path).expanduser()
            if not p.exists():
                raise DataError(f"data.path: {str(p)!r} does not exist")
            if kind := special_file(p):  # a FIFO would block the read forever, /dev/zero never end
                raise ConfigError("data.path", str(p), f"a UTF-8 text file or a folder of them; it is {kind}")
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
        if self.source in GENERATED:
            return f"{self.source} language ({self.n_sentences} sentences, seed {self.seed})"
        return "embedded pydoc_data.topics" if self.source == "embedded" else str(self.path)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def _file_blocks(self, f: Path) -> Iterator[str]:
        suffix = f.suffix.lower()
        if suffix not in STRUCTURED_SUFFIXES:
            yield from read_text_blocks(f, self.block_bytes)
            return
        texts = jsonl_texts(f, self.text_field) if suffix == ".jsonl" else parquet_texts(f, self.text_field)
        for i, text in enumerate(texts):
            if i:
                yield DOC_SEPARATOR
            yield text

    def _pieces(self) -> Iterator[tuple[bool, str]]:
        """(is_separator, text) pieces; their concatenation is the full corpus text."""
        if self.source == "embedded":
            yield False, embedded_text()
            return
        if self.source in GENERATED:
            yield False, GENERATED[self.source](self.n_sentences, self.seed)
            return
        for i, f in enumerate(self._files):
            if i:
                yield True, DOC_SEPARATOR
            for block in self._file_blocks(f):
                yield False, block

    def blocks(self) -> Iterator[str]:
        """The corpus as bounded blocks whose concatenation is the full text (separators included)."""
        for _, piece in self._pieces():
            yield piece

    def documents(self, rule: str = "space", piece_chars: int = PIECE_CHARS) -> Iterator[str]:
        """The corpus as pieces of about ``piece_chars`` characters whose concatenation is the full text, cut only
        by ``rule`` (``"space"``: just before a space or newline that ends a word; ``"any"``: anywhere; see
        builder/data/stream.py), so no word is split between two pieces."""
        return cut_pieces(self.blocks(), rule, piece_chars)

    def key(self) -> str:
        """What the corpus's token cache is keyed by, without reading a file: each file's path, size and
        modification time (and ``text_field`` for ``.jsonl``/``.parquet``); the content's sha256 for the
        in-memory corpora. Raises ``DataError`` for text files that are all empty."""
        if self.source != "text":
            digest, _ = self.scan()
            return sha256_json({"corpus": CORPUS_KEY_VERSION, "sha256": digest})
        files = []
        for f in self._files:
            st = f.stat()
            files.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
        if not any(size for _, size, _ in files):
            raise DataError(f"data.path: corpus {self.description!r} is empty")
        fields: dict = {"corpus": CORPUS_KEY_VERSION, "files": files}
        if any(f.suffix.lower() in STRUCTURED_SUFFIXES for f in self._files):
            fields["text_field"] = self.text_field
        return sha256_json(fields)

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
        """The whole corpus as one string (raises ``DataError`` if it is empty): for small corpora and tests."""
        self.scan()
        return "".join(self.blocks())
