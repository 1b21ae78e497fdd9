"""Corpora: the English text shipped with CPython, a UTF-8 file or folder, or the generated adjectives language."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from components.registry import closest

from ..errors import ConfigError, DataError
from ..files import special_file
from . import adjectives

ACCEPTED_SOURCES = ("embedded", "text", "adjectives")
DOC_SEPARATOR = "\n\n"


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
    ``"\\n\\n"``. Files are read one at a time.
    """

    def __init__(self, source: str = "embedded", path: str | os.PathLike | None = None,
                 n_sentences: int = 20_000, seed: int = 0) -> None:
        if source not in ACCEPTED_SOURCES:
            raise DataError(unknown_choice("source", source, ACCEPTED_SOURCES))
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
            yield False, adjectives.corpus_text(self.n_sentences, self.seed)
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

