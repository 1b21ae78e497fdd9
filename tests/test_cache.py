"""The token cache's header and its checks: a damaged, foreign or stale cache file is rebuilt, never trained on."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, train_env

from builder.data import cache
from builder.data.cache import (
    CACHE_FORMAT,
    HEADER_SIZE,
    STALE_TEMP_AGE_S,
    TokenFile,
    remove_stale_temp_files,
    token_cache_problem,
    write_token_cache,
)
from builder.data.datamodule import TokenDataModule

TEXT = "".join(f"line {i}: the cat sat on the mat, the dog sat on the log.\n" for i in range(300))


def setup_dm(src: Path, cache_dir: Path, **kw) -> TokenDataModule:
    dm = TokenDataModule(
        source="text", path=str(src), cache_dir=str(cache_dir), context_length=16, batch_size=4, samples_per_epoch=16, **kw
    )
    dm.setup()
    return dm


@pytest.fixture
def built(tmp_path):
    """A corpus, its cache (char tokenizer, uint16) and the tokens it holds."""
    src = tmp_path / "corpus.txt"
    src.write_text(TEXT, encoding="utf-8")
    dm = setup_dm(src, tmp_path / "cache")
    assert dm.cache_hit is False
    return src, dm.cache_file, np.array(dm.tokens), dm


def header(path: Path) -> tuple[str, dict]:
    first, line, _ = path.read_bytes()[:HEADER_SIZE].split(b"\n", 2)
    return first.decode(), json.loads(line)


def rebuilt(src: Path, cache_file: Path, tokens: np.ndarray, reason: str) -> TokenDataModule:
    """Set up again: the cache file is named in a warning with ``reason``, rebuilt, and holds ``tokens`` again."""
    with pytest.warns(UserWarning) as caught:
        dm = setup_dm(src, cache_file.parent)
    messages = [str(w.message) for w in caught if "token cache" in str(w.message)]
    assert len(messages) == 1, messages
    assert re.fullmatch(rf"token cache {re.escape(str(cache_file))} {reason}: rebuilding it", messages[0]), messages[0]
    assert dm.cache_hit is False and dm.cache_file == cache_file
    np.testing.assert_array_equal(dm.tokens, tokens)
    assert token_cache_problem(cache_file, dm.tokenizer.fingerprint(), np.uint16, full=True) is None
    return dm


# ------------------------------------------------------------------------------------------ the header


def test_header_round_trip(built):
    src, cache_file, tokens, dm = built
    fmt, fields = header(cache_file)
    assert fmt == CACHE_FORMAT == "hydraformer-tokens-v2"
    assert fields["tokenizer"] == dm.tokenizer.fingerprint() and fields["dtype"] == "uint16"
    assert fields["count"] == len(tokens) == len(TEXT)
    assert cache_file.stat().st_size == HEADER_SIZE + 2 * len(TEXT)
    assert not any(cache_file.read_bytes()[len(fmt) + 2 + len(json.dumps(fields, sort_keys=True)) : HEADER_SIZE])
    # the tokens start at the fixed offset, and are what the tokenizer gives
    on_disk = np.fromfile(cache_file, dtype=np.uint16, offset=HEADER_SIZE)
    np.testing.assert_array_equal(on_disk, dm.tokenizer.encode_array(TEXT))
    assert dm.tokenizer.decode(dm.tokens) == TEXT
    assert token_cache_problem(cache_file, dm.tokenizer.fingerprint(), np.uint16, full=True) is None

    again = setup_dm(src, cache_file.parent)
    assert again.cache_hit is True
    np.testing.assert_array_equal(again.tokens, tokens)
    # views and pickled views (DataLoader workers) read the same tokens
    view = again.val_tokens.view(3, 40)
    assert len(view) == 37 and isinstance(view.array, np.memmap)
    clone = pickle.loads(pickle.dumps(view))
    np.testing.assert_array_equal(clone[:], tokens[again.val_tokens.start + 3 : again.val_tokens.start + 40])
    np.testing.assert_array_equal(np.asarray(TokenFile(cache_file, np.uint16)), tokens)


def test_sampled_checksum_and_full_checksum(tmp_path):
    """Files up to 1 MiB are checked entirely on open; past that a sample is, and ``full=True`` hashes every token."""
    path = tmp_path / "big.bin"
    tokens = np.random.default_rng(0).integers(0, 1000, 700_000).astype(np.uint16)  # 1.4 MB: 342 blocks of 4 KiB
    assert write_token_cache(path, [tokens[:300_000], tokens[300_000:]], "fp", np.uint16) == len(tokens)
    np.testing.assert_array_equal(TokenFile(path, np.uint16)[:], tokens)
    assert header(path)[1]["count"] == len(tokens)
    assert token_cache_problem(path, "fp", np.uint16, full=True) is None

    sampled = set(cache._sample_offsets(2 * len(tokens), cache.SAMPLE_BLOCKS, cache.SAMPLE_BLOCK_BYTES))
    assert len(sampled) == cache.SAMPLE_BLOCKS
    unsampled = next(HEADER_SIZE + i * 4096 for i in range(342) if HEADER_SIZE + i * 4096 not in sampled)
    damaged = path.read_bytes()
    with open(path, "r+b") as f:
        f.seek(unsampled + 10)
        f.write(bytes([damaged[unsampled + 10] ^ 0xFF]))
    assert token_cache_problem(path, "fp", np.uint16) is None  # (the cost of a fast open)
    assert token_cache_problem(path, "fp", np.uint16, full=True) == (
        "fails its full checksum: its tokens changed after it was written"
    )
    with open(path, "r+b") as f:  # a damaged block that the sample covers: the last one, which holds the last token
        f.seek(len(damaged) - 1)
        f.write(bytes([damaged[-1] ^ 0xFF]))
    assert token_cache_problem(path, "fp", np.uint16).startswith("fails its checksum (of 256 blocks of 4,096 bytes sampled")


# --------------------------------------------------------------------------- damaged caches are rebuilt


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(HEADER_SIZE + 2 * (len(TEXT) // 2))


def zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def random_odd_size(path: Path) -> None:
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 9_999, dtype=np.uint8).tobytes())


def headerless_v1(path: Path) -> None:
    path.write_bytes(path.read_bytes()[HEADER_SIZE:])  # the layout of hydraformer-tokens-v1: tokens only


def other_version(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"hydraformer-tokens-v2\n", b"hydraformer-tokens-v9\n", 1))


def damaged_header(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b'"count": ', b'"count":"', 1))


def flipped_token(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 1000] ^= 0x01  # the same size, a valid header, one token changed in place
    path.write_bytes(bytes(data))


def extended(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(bytes(6))


def short_of_a_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(100)


N = len(TEXT)
CORRUPTIONS = {
    "truncated": (truncate, rf"is truncated \(header says {N:,} tokens, file holds {N // 2:,}\)"),
    "zeroed": (zero, r"has no header \(its first 4,096 bytes are all zero\)"),
    "random": (random_bytes, r"has no hydraformer-tokens-v2 header \(a cache of an older version, or not a token cache\)"),
    "random_odd_size": (random_odd_size, r"has no hydraformer-tokens-v2 header .*"),
    "headerless_v1": (headerless_v1, r"has no hydraformer-tokens-v2 header .*"),
    "other_version": (
        other_version,
        r"was written in format 'hydraformer-tokens-v9'; this version reads 'hydraformer-tokens-v2'",
    ),
    "damaged_header": (damaged_header, r"has a damaged header"),
    "flipped_token": (
        flipped_token,
        rf"fails its checksum \(of {-(-2 * N // 4096)} blocks of 4,096 bytes sampled across "
        r"the file\): its tokens changed after it was written",
    ),
    "extended": (extended, rf"is longer than its header says \(header says {N:,} tokens, file holds {N + 3:,}\)"),
    "short_of_a_header": (short_of_a_header, r"is truncated \(shorter than its 4,096-byte header\)"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damaged_cache_is_rebuilt_with_a_warning_naming_it(built, name):
    src, cache_file, tokens, _ = built
    corrupt, reason = CORRUPTIONS[name]
    corrupt(cache_file)
    dm = rebuilt(src, cache_file, tokens, reason)
    x, y = next(iter(dm.train_dataloader()))  # no IndexError: the windows read the rebuilt tokens
    assert int(x.max()) < dm.vocab_size and int(y.max()) < dm.vocab_size
    assert setup_dm(src, cache_file.parent).cache_hit is True


def test_cache_of_another_tokenizer_or_dtype_is_rebuilt(built):
    src, cache_file, tokens, dm = built
    bpe = setup_dm(src, cache_file.parent, tokenizer="byte_bpe", bpe_vocab_size=300)
    assert bpe.cache_file != cache_file and bpe.tokens.dtype == np.uint16
    shutil.copyfile(bpe.cache_file, cache_file)  # the same dtype, a valid header, another tokenizer's tokens
    rebuilt(
        src,
        cache_file,
        tokens,
        r"was built by another tokenizer \(fingerprint [0-9a-f]{12}\.\.\., expected "
        + dm.tokenizer.fingerprint()[:12]
        + r"\.\.\.\)",
    )

    write_token_cache(cache_file, [tokens], dm.tokenizer.fingerprint(), np.uint32)  # the right tokens, the wrong dtype
    rebuilt(src, cache_file, tokens, r"holds uint32 tokens, expected uint16")


# ------------------------------------------------------------------------------- files the cache leaves


def test_stale_temp_files_are_removed_fresh_ones_kept(built):
    src, cache_file, _, _ = built
    cache_dir = cache_file.parent
    stale = cache_dir / f".{cache_file.name}.x1y2z3.tmp"
    fresh = cache_dir / f".{cache_file.name}.a1b2c3.tmp"  # a build in progress in another process
    other = cache_dir / ".notes.tmp"  # not a token cache's temporary file
    old = time.time() - STALE_TEMP_AGE_S - 60
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert setup_dm(src, cache_dir).cache_hit is True  # a run that builds nothing still tidies up
    assert not stale.exists() and fresh.exists() and other.exists()
    os.utime(fresh, (old, old))
    assert remove_stale_temp_files(cache_dir) == [fresh]
    assert remove_stale_temp_files(cache_dir) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_cache_file_permissions_follow_the_umask(tmp_path, umask, mode):
    src = tmp_path / "corpus.txt"
    src.write_text(TEXT, encoding="utf-8")
    previous = os.umask(umask)
    try:
        dm = setup_dm(src, tmp_path / "cache")
    finally:
        os.umask(previous)
    assert dm.cache_hit is False
    assert dm.cache_file.stat().st_mode & 0o777 == mode


# ------------------------------------------------------------------------------------- through the CLI


def val_losses(run_dir: Path) -> list[float]:
    rows = csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv"))))
    return [float(r["val/loss"]) for r in rows if r.get("val/loss")]


def test_cli_rebuilds_a_truncated_cache_and_trains_as_before(tmp_path):
    env = train_env(tmp_path)
    args = [
        "model.d_model=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "model.context_length=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks=none",
        "data=text",
        f"data.path={env['corpus']}",
    ]

    first = run_cli(*args, f"hydra.run.dir={tmp_path / 'first'}", env=env["env"])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "token cache" not in first.stdout + first.stderr
    (cache_file,) = (tmp_path / "cache").glob("tokens-*.bin")
    count = header(cache_file)[1]["count"]
    with open(cache_file, "r+b") as f:  # half the corpus: the old validation split would become training text
        f.truncate(HEADER_SIZE + 2 * (count // 2))

    second = run_cli(*args, f"hydra.run.dir={tmp_path / 'second'}", env=env["env"])
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-6000:]
    assert (
        f"token cache {cache_file} is truncated (header says {count:,} tokens, file holds {count // 2:,}): rebuilding it"
    ) in out, out[-6000:]
    assert cache_file.stat().st_size == HEADER_SIZE + 2 * count
    first_losses = val_losses(tmp_path / "first")
    assert len(first_losses) == 2
    assert val_losses(tmp_path / "second") == first_losses
