"""``data.*`` checked by value alone, before any file is read: TokenDataModule's arguments.

Lightning-free, so task=train refuses a bad data setting before it imports its libraries (builder/tasks), as
TokenDataModule (builder/data/datamodule.py) refuses it when built from Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from .corpus import ACCEPTED_SOURCES, unknown_choice
from .tokenizers import ACCEPTED_TOKENIZERS

# data.source: the corpora of builder/data/corpus.py, and ``tokens``: a flat token file (builder/data/token_files.py)
DATA_SOURCES = (*ACCEPTED_SOURCES, "tokens")
PATH_SOURCES = {"text": "a UTF-8 file or a folder", "tokens": "a flat uint16/uint32 token file"}  # need data.path
MISSING = "???"  # OmegaConf's mark of a value the config requires and nobody set (conf/data/text.yaml's path)


def check_int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``data.<key>`` as an int within [minimum, maximum]; DataError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"data.{key}={value!r} is not accepted: an integer >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise DataError(f"data.{key}={value!r} is not accepted: an integer {rng}")
    return int(value)


def check_data_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every ``data.*`` value TokenDataModule takes, checked (``data`` holds them all; ``cache_dir`` is passed
    through). Returns them as the module keeps them: whole numbers as int, ``val_fraction`` as float, the file
    options (path, vocab_file, merges_file) as str or None. DataError names the key, the value and what is accepted."""
    source, tokenizer, path = data["source"], data["tokenizer"], data["path"]
    if path == MISSING:  # data=text / data=tokens without data.path
        path = None
    if source not in DATA_SOURCES:
        raise DataError(unknown_choice("source", source, DATA_SOURCES))
    if tokenizer not in ACCEPTED_TOKENIZERS:
        raise DataError(unknown_choice("tokenizer", tokenizer, ACCEPTED_TOKENIZERS))
    if source in PATH_SOURCES and (path is None or str(path) == ""):
        raise DataError(f"data.path is required when data.source={source!r} ({PATH_SOURCES[source]})")
    if source in ("embedded", "adjectives", "lecture") and path is not None:
        raise DataError(f"data.path={str(path)!r} is only used with data.source='text' (got source={source!r})")
    if tokenizer == "gpt2_bpe":
        for key in ("vocab_file", "merges_file"):
            if data[key] is None or str(data[key]) == "":
                raise DataError(f"data.{key} is required when data.tokenizer='gpt2_bpe'")
    checked = {"source": source, "tokenizer": tokenizer, "cache_dir": data["cache_dir"],
               **{key: None if value is None else str(value) for key, value in
                  (("path", path), ("vocab_file", data["vocab_file"]), ("merges_file", data["merges_file"]))},
               "bpe_vocab_size": check_int("bpe_vocab_size", data["bpe_vocab_size"], 256, 1 << 32)}
    for key in ("context_length", "batch_size"):
        checked[key] = check_int(key, data[key], 1)
    val_fraction = data["val_fraction"]
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction={val_fraction!r} is not accepted: a number in [0, 1)")
    checked["val_fraction"] = float(val_fraction)
    # n_sentences: source='adjectives' / 'lecture' only
    for key, minimum in (("samples_per_epoch", 1), ("val_batches", 0), ("num_workers", 0), ("seed", 0),
                         ("n_sentences", 1)):
        checked[key] = check_int(key, data[key], minimum)
    text_field = data["text_field"]
    if not isinstance(text_field, str) or not text_field:
        raise DataError(
            f"data.text_field={text_field!r} is not accepted: the name of the text field of .jsonl/.parquet records"
        )
    checked["text_field"] = text_field
    vocab_size = data["vocab_size"]
    checked["vocab_size"] = None if vocab_size is None else check_int("vocab_size", vocab_size, 1, 1 << 32)
    dtype = data["dtype"]
    if dtype is not None and dtype not in ("uint16", "uint32"):
        raise DataError(f"data.dtype={dtype!r} is not accepted: uint16, uint32 or null (the token file's ids)")
    checked["dtype"] = dtype
    return checked
