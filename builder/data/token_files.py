"""``data=tokens``: a flat file of token ids, as nanoGPT's ``prepare.py`` scripts write (``train.bin``, ``val.bin``).

A token file is nothing but ids: ``uint16`` (nanoGPT's) or ``uint32``, native byte order, no header. What it cannot
say is said beside it or in the config:

    vocab_size   ``data.vocab_size``, else ``"vocab_size"`` of ``meta.json`` beside the file, else the tokenizer's
                 (a larger one, such as nanoGPT's 50304 for GPT-2's 50257, sizes the model's embeddings)
    dtype        ``data.dtype``, else ``"dtype"`` of ``meta.json``, else uint16 when the vocabulary fits in it
    tokenizer    to decode samples and to travel in checkpoints: ``data.tokenizer=gpt2_bpe`` (``data.vocab_file``,
                 ``data.merges_file``), or ``data.tokenizer=char`` with ``"chars"`` (the sorted characters, id
                 order) in ``meta.json``

nanoGPT's ``meta.pkl`` is a pickle, which can run code when read: it is never read; write its fields as
``meta.json`` (``{"vocab_size": 65, "chars": "\\n !$&..."}``).

Validation tokens: ``val.bin`` beside ``train.bin`` when present (the whole file trains), else the held-out tail
(``data.val_fraction``). Every id is checked against the vocabulary once per file version (path, size and mtime),
and the result remembered in the cache folder, so a second run opens a file of many GB in milliseconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..files import atomic_write, special_file
from .cache import TokenFile
from .tokenizers import AnyTokenizer, CharTokenizer, GPT2BPETokenizer, sha256_json

META_JSON = "meta.json"
VAL_NAME = "val.bin"
CHECK_FORMAT = "hydraformer-flat-tokens-check-v1"
SCAN_TOKENS = 1 << 24  # ids read at a time when checking them


@dataclass
class FlatTokens:
    train: TokenFile  # all of train.bin
    val: TokenFile | None  # val.bin beside it, if any
    tokenizer: AnyTokenizer
    vocab_size: int
    dtype: np.dtype
    key: str  # the files' paths, sizes and times, the dtype and vocabulary size


def _meta(folder: Path) -> dict:
    f = folder / META_JSON
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError("data.path", str(folder), f"a folder whose {META_JSON} is a JSON object", str(e)) from None
    if not isinstance(meta, dict):
        raise ConfigError("data.path", str(folder), f"a folder whose {META_JSON} is a JSON object",
                          f"it holds {type(meta).__name__}")
    return meta


def _check_file(path: Path, dtype: np.dtype) -> None:
    if not path.exists():
        raise ConfigError("data.path", str(path), "a flat token file (train.bin)", "it does not exist")
    if kind := special_file(path):
        raise ConfigError("data.path", str(path), "a flat token file (train.bin)", f"it is {kind}")
    if path.is_dir():
        raise ConfigError("data.path", str(path), "a flat token file (train.bin), not a folder")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError("data.path", str(path), "a flat token file (train.bin)", "it is empty")
    if size % dtype.itemsize:
        raise ConfigError(
            "data.path", str(path), f"a flat file of {dtype.name} token ids",
            f"its {size:,} bytes are not a multiple of {dtype.itemsize}: a truncated file, or ids of another "
            "dtype (data.dtype)",
        )


def _tokenizer(kind: str, folder: Path, meta: dict, vocab_file: Any, merges_file: Any) -> AnyTokenizer:
    if kind == "gpt2_bpe":
        return GPT2BPETokenizer.from_files(Path(vocab_file).expanduser(), Path(merges_file).expanduser())
    chars = meta.get("chars")
    if kind == "char" and chars is not None:
        chars = list(chars)
        if chars != sorted(set(chars)):
            raise ConfigError(
                "data.tokenizer", kind, f"a {META_JSON} whose \"chars\" are distinct and sorted (id order)",
                "nanoGPT's prepare.py writes them sorted; ids of another order would decode to other characters",
            )
        return CharTokenizer(chars)
    pickle_note = (
        f"; {folder / 'meta.pkl'} is a pickle, never read (unpickling can run code): write its vocab_size and chars "
        f"(''.join(itos[i] for i in range(vocab_size))) as {META_JSON}"
        if (folder / "meta.pkl").exists() else ""
    )
    raise ConfigError(
        "data.tokenizer", kind,
        f"gpt2_bpe (with data.vocab_file and data.merges_file), or char with \"chars\" (the characters in id order) "
        f"in {META_JSON} beside the token file{pickle_note}",
        "data=tokens needs a tokenizer to decode samples and to save in checkpoints",
    )


def _scan_ids(path: Path, dtype: np.dtype, vocab_size: int, key_name: str) -> int:
    """The largest id of ``path``; refuses one >= ``vocab_size`` naming ``key_name``."""
    mm = np.memmap(path, dtype=dtype, mode="r")
    top = 0
    for start in range(0, len(mm), SCAN_TOKENS):
        block = mm[start : start + SCAN_TOKENS]
        m = int(block.max())
        if m >= vocab_size:
            pos = start + int(np.argmax(block >= vocab_size))
            raise ConfigError(
                key_name, vocab_size, "more than every token id of the token file",
                f"{str(path)!r} holds id {int(block[pos - start]):,} at token {pos:,} (byte offset "
                f"{pos * dtype.itemsize:,}); raise it, or check data.dtype ({dtype.name})",
            )
        top = max(top, m)
    del mm
    return top


def open_flat_tokens(path: str | os.PathLike, cache_dir: str | os.PathLike, *, vocab_size: int | None = None,
                     dtype: str | None = None, tokenizer: str = "char", vocab_file: Any = None,
                     merges_file: Any = None) -> FlatTokens:
    """Open ``path`` (and ``val.bin`` beside it) as token files; see the module's docstring for what is refused."""
    train = Path(path).expanduser()
    folder = train.parent
    if not train.exists():
        raise ConfigError("data.path", str(train), "a flat token file (train.bin)", "it does not exist")
    meta = _meta(folder)
    tok = _tokenizer(tokenizer, folder, meta, vocab_file, merges_file)

    key_name = "data.vocab_size"
    if vocab_size is None and "vocab_size" in meta:
        vocab_size, key_name = meta["vocab_size"], f"{folder / META_JSON}: vocab_size"
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(key_name, vocab_size, "a positive integer")
    if vocab_size is None:
        vocab_size, key_name = tok.vocab_size, f"the vocabulary size of data.tokenizer={tokenizer}"
    if vocab_size < tok.vocab_size:
        raise ConfigError(key_name, vocab_size, f"at least the tokenizer's {tok.vocab_size:,} ids")

    if dtype is None:
        dtype = meta.get("dtype") or ("uint16" if vocab_size <= 1 << 16 else "uint32")
    if dtype not in ("uint16", "uint32"):
        raise ConfigError("data.dtype", dtype, "uint16 or uint32")
    np_dtype = np.dtype(dtype)
    if vocab_size > 1 << (8 * np_dtype.itemsize):
        raise ConfigError("data.dtype", dtype, f"a dtype that holds {vocab_size:,} ids: uint32")

    files = [train]
    val = folder / VAL_NAME
    has_val = train.name != VAL_NAME and val.is_file()
    if has_val:
        files.append(val)
    stats = []
    for f in files:
        _check_file(f, np_dtype)
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    key = sha256_json({"format": CHECK_FORMAT, "files": stats, "dtype": np_dtype.name, "vocab_size": vocab_size})

    # every id below vocab_size: read once per version of the files, then remembered
    record = Path(cache_dir).expanduser() / f"flat-checked-{key[:32]}.json"
    if not record.is_file():
        tops = [_scan_ids(f, np_dtype, vocab_size, key_name) for f in files]
        atomic_write(record, json.dumps({"format": CHECK_FORMAT, "files": stats, "max_ids": tops}) + "\n")

    return FlatTokens(
        train=TokenFile(train, np_dtype, offset=0),
        val=TokenFile(val, np_dtype, offset=0) if has_val else None,
        tokenizer=tok,
        vocab_size=int(vocab_size),
        dtype=np_dtype,
        key=key,
    )
