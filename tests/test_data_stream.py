"""Corpora of many GB (issue 12): files streamed in bounded pieces that encode exactly as the whole, a cache keyed by
the files' path, size and time and built by one process, flat token files (data=tokens), .jsonl/.parquet, and each
failure mode's message. Real files and real tokenizers throughout; sizes kept small."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.data.cache import HEADER_SIZE, build_token_cache, token_cache_problem
from builder.data.corpus import Corpus
from builder.data.datamodule import TokenDataModule
from builder.data.stream import NotTextError, build_lock, char_vocabulary, cut_pieces, cut_rule, encode_pieces, read_text_blocks
from builder.data.tokenizers import ByteBPETokenizer, CharTokenizer, GPT2BPETokenizer, WordTokenizer
from builder.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent

# the characters where cuts could go wrong: runs of every kind of whitespace (Unicode and not: U+180E, U+001C),
# multi-byte characters (2, 3 and 4 bytes in UTF-8), contractions, digits, punctuation
ATOMS = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u180e", "\x1c", "a", "ab", "The", "é", "ß",
         "😀", "日本", "1", "23", "'s", "'", ".", "!?", "x", " y"]
texts = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=80).map("".join)


def sample_text(n: int = 4000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(ATOMS[i] for i in rng.integers(0, len(ATOMS), n))


@pytest.fixture(scope="module")
def bpe() -> ByteBPETokenizer:
    return ByteBPETokenizer.train([sample_text(seed=s) for s in range(4)], vocab_size=400)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, bpe) -> Path:
    """A GPT-2 vocab.json and merges.txt (written from the trained tokenizer's model)."""
    folder = tmp_path_factory.mktemp("gpt2")
    spec = json.loads(bpe.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(spec["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def gpt2(gpt2_dir) -> GPT2BPETokenizer:
    return GPT2BPETokenizer.from_files(gpt2_dir / "vocab.json", gpt2_dir / "merges.txt")


def streamed(tokenizer, text: str, piece_chars: int, block_chars: int = 7, workers: int = 2,
             pool_after: int = 0) -> np.ndarray:
    blocks = [text[i : i + block_chars] for i in range(0, len(text), block_chars)]
    pieces = list(cut_pieces(blocks, cut_rule(tokenizer), piece_chars, max_chars=10**9))
    assert "".join(pieces) == text
    arrays = list(encode_pieces(tokenizer, pieces, workers, pool_after))
    return np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)


def dm_for(path: Path, cache: Path, **kw) -> TokenDataModule:
    kw.setdefault("context_length", 8)
    kw.setdefault("batch_size", 2)
    kw.setdefault("samples_per_epoch", 8)
    kw.setdefault("source", "text")
    return TokenDataModule(path=str(path), cache_dir=str(cache), **kw)


# ------------------------------------------------------------------------ pieces encode as the whole


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, piece_chars=st.integers(1, 24))
def test_pieces_encode_as_the_whole_text(bpe, gpt2, text, piece_chars):
    """Byte-level BPE (trained, and read as GPT-2 files), words and characters: cut anywhere the rules allow,
    the pieces' tokens are the whole text's."""
    for tok in (bpe, gpt2):
        np.testing.assert_array_equal(streamed(tok, text, piece_chars), tok.encode_array(text))
    char = CharTokenizer.from_text(text)
    assert char_vocabulary(cut_pieces([text], "any", piece_chars)).chars == char.chars
    np.testing.assert_array_equal(streamed(char, text, piece_chars), char.encode_array(text))
    if text.split():
        word = WordTokenizer.from_text(text)
        np.testing.assert_array_equal(streamed(word, text, piece_chars, workers=1), word.encode_array(text))


def test_words_in_worker_processes_keep_their_order():
    text = sample_text(3000, seed=9)
    word = WordTokenizer.from_text(text)
    np.testing.assert_array_equal(streamed(word, text, 32, workers=2, pool_after=3), word.encode_array(text))


@settings(max_examples=60, deadline=None)
@given(text=texts, block_bytes=st.integers(1, 9))
def test_file_blocks_never_split_a_character(tmp_path_factory, text, block_bytes):
    path = tmp_path_factory.mktemp("blocks") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    blocks = list(read_text_blocks(path, block_bytes))
    assert "".join(blocks) == text
    assert all(len(b.encode("utf-8")) <= block_bytes + 3 for b in blocks)


@pytest.mark.parametrize("kind", ["char", "word", "byte_bpe", "gpt2_bpe"])
def test_cache_of_a_folder_is_the_whole_corpus_encoded(tmp_path, bpe, gpt2, kind):
    """The real pipeline, 5-byte reads and 16-character pieces: multi-byte characters at every block edge."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(sample_text(1500, seed=10 + i), encoding="utf-8")
    corpus = Corpus("text", folder)
    corpus.block_bytes = 5
    text = corpus.text()
    tok = {"char": lambda: CharTokenizer.from_text(text), "word": lambda: WordTokenizer.from_text(text),
           "byte_bpe": lambda: bpe, "gpt2_bpe": lambda: gpt2}[kind]()
    dest = tmp_path / "cache.bin"
    n = build_token_cache(corpus, tok, dest, workers=1 if kind == "word" else 2, piece_chars=16)
    on_disk = np.fromfile(dest, dtype=np.uint16, offset=HEADER_SIZE)
    assert n == len(on_disk)
    np.testing.assert_array_equal(on_disk, tok.encode_array(text))
    assert token_cache_problem(dest, tok.fingerprint(), np.uint16, full=True) is None


def test_text_without_a_break_is_refused_not_held():
    with pytest.raises(DataError, match=r"100 characters without a space or newline"):
        list(cut_pieces(["x" * 50, "y" * 50], "space", piece_chars=8, max_chars=64))
    assert "".join(cut_pieces(["x" * 50, "y" * 50], "any", piece_chars=8, max_chars=64)) == "x" * 50 + "y" * 50


def test_a_tokenizer_that_cannot_be_cut_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from builder.data.tokenizers import HFTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(DataError, match="cannot be encoded in pieces exactly"):
        cut_rule(HFTokenizer(tok))


# ------------------------------------------------------------------------------ files that are not text


@pytest.mark.parametrize(
    ("data", "offset", "what"),
    [
        (b"caf\xe9 au lait", 3, r"bad byte 0xe9 at byte offset 3"),
        ("é".encode() * 40 + b"\xff" + b"tail", 80, r"bad byte 0xff at byte offset 80"),  # past several 7-byte reads
        (b"ok " * 10 + "日".encode()[:2], 30, r"at byte offset 30 \(unexpected end of data\)"),  # cut at the end
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", 7, r"a NUL byte at byte offset 7: a binary file, not text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 0, r"bad byte 0x89 at byte offset 0 \(invalid start byte\)"),
    ],
)
def test_a_file_that_is_not_text_names_the_file_and_offset(tmp_path, data, offset, what):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_good.txt").write_text("fine text " * 10, encoding="utf-8")
    (folder / "b_bad.txt").write_bytes(data)
    with pytest.raises(ConfigError, match=what) as e:
        list(read_text_blocks(folder / "b_bad.txt", 7))
    assert e.value.key == "data.path" and "b_bad.txt" in str(e.value)
    with pytest.raises(ConfigError, match=what) as e:  # and through the datamodule: DataError too, as before
        dm_for(folder, tmp_path / "cache").setup()
    assert isinstance(e.value, DataError) and isinstance(e.value, NotTextError) and "b_bad.txt" in str(e.value)


# -------------------------------------------------------------------------------- the cache, keyed by stat


def test_second_setup_reads_no_file_and_a_changed_file_is_rebuilt(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text(sample_text(3000, seed=1), encoding="utf-8")
    cache = tmp_path / "cache"
    first = dm_for(src, cache, tokenizer="byte_bpe", bpe_vocab_size=300)
    first.setup()
    assert first.cache_hit is False
    st_before = src.stat()
    # the same size and modification time: the key says "unchanged" without reading a byte of the file
    other = (b"z y " * st_before.st_size)[: st_before.st_size]
    src.write_bytes(other)
    os.utime(src, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    second = dm_for(src, cache, tokenizer="byte_bpe", bpe_vocab_size=300)
    second.setup()
    assert second.cache_hit is True and second.cache_file == first.cache_file
    np.testing.assert_array_equal(second.tokens, first.tokens)
    assert second.setup_seconds < 1.0
    os.utime(src)  # touched: a new modification time is a new corpus
    third = dm_for(src, cache, tokenizer="byte_bpe", bpe_vocab_size=300)
    third.setup()
    assert third.cache_hit is False and third.cache_file != first.cache_file
    assert third.tokenizer.decode(third.tokens) == other.decode()


def test_a_damaged_tokenizer_file_is_rebuilt_with_a_warning(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text(sample_text(2000, seed=2), encoding="utf-8")
    first = dm_for(src, tmp_path / "cache")
    first.setup()
    first.tokenizer_file.write_text('{"kind": "char", "chars": ["a", "a"]}')
    with pytest.warns(UserWarning, match=rf"tokenizer file {re.escape(str(first.tokenizer_file))} cannot be read"):
        again = dm_for(src, tmp_path / "cache")
        again.setup()
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    np.testing.assert_array_equal(again.tokens, first.tokens)


def test_one_process_builds_the_others_wait(tmp_path):
    """While another holds the build lock (building), setup waits; then it finds the cache and builds nothing."""
    src = tmp_path / "corpus.txt"
    src.write_text(sample_text(2000, seed=3), encoding="utf-8")
    cache = tmp_path / "cache"
    dm_for(src, cache).setup()
    key = Corpus("text", src).key()
    done = threading.Event()
    waiter = dm_for(src, cache)

    def run():
        waiter.setup()
        done.set()

    with build_lock(cache, key):
        thread = threading.Thread(target=run)
        thread.start()
        assert not done.wait(0.5)  # blocked on the lock
    thread.join(30)
    assert done.is_set() and waiter.cache_hit is True


# ------------------------------------------------------------------------------------ .jsonl and .parquet


def test_jsonl_records_give_their_text_field(tmp_path, bpe):
    folder = tmp_path / "docs"
    folder.mkdir()
    records = [{"text": sample_text(200, seed=s), "id": s} for s in range(5)]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    (folder / "b.txt").write_text("plain text file", encoding="utf-8")
    corpus = Corpus("text", folder)
    expected = "\n\n".join(r["text"] for r in records) + "\n\n" + "plain text file"
    assert corpus.text() == expected
    dm = dm_for(folder, tmp_path / "cache", tokenizer="byte_bpe", bpe_vocab_size=300)
    dm.setup()
    assert dm.tokenizer.decode(dm.tokens) == expected

    other = dm_for(folder, tmp_path / "cache", text_field="body")
    with pytest.raises(ConfigError, match=r"data\.text_field='body' .*a\.jsonl.*line 1 has text, id"):
        other.setup()
    (folder / "b.txt").unlink()
    (folder / "a.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"docs' gives no text to tokenise"):
        dm_for(folder, tmp_path / "cache").setup()
    (folder / "a.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"a\.jsonl.*line 2 \(byte offset 17\) is not JSON"):
        dm_for(folder, tmp_path / "cache").setup()


def test_parquet_without_pyarrow_says_to_install_it(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "a.parquet").write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match=r"a\.parquet.*pyarrow, which is not installed.*pip install pyarrow"):
            Corpus("text", tmp_path / "a.parquet").text()
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [sample_text(100, seed=s) for s in range(4)]
    pq.write_table(pa.table({"content": rows, "n": list(range(4))}), tmp_path / "a.parquet", row_group_size=2)
    assert Corpus("text", tmp_path / "a.parquet", text_field="content").text() == "\n\n".join(rows)
    with pytest.raises(ConfigError, match=r"data\.text_field='text'.*a column of .*a\.parquet.*: content, n"):
        Corpus("text", tmp_path / "a.parquet").text()


# ------------------------------------------------------------------------------------------ data=tokens


def nanogpt_char_folder(folder: Path, n: int = 3000, val: bool = True) -> tuple[np.ndarray, list[str]]:
    """What nanoGPT's shakespeare_char/prepare.py writes, with meta.json for its meta.pkl."""
    folder.mkdir(parents=True, exist_ok=True)
    text = sample_text(n, seed=4)
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    if val:
        ids[:cut].tofile(folder / "train.bin")
        ids[cut:].tofile(folder / "val.bin")
    else:
        ids.tofile(folder / "train.bin")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": len(chars), "chars": "".join(chars)}))
    return ids, chars


def test_tokens_train_and_val_bin(tmp_path):
    ids, chars = nanogpt_char_folder(tmp_path / "shakespeare_char")
    dm = dm_for(tmp_path / "shakespeare_char" / "train.bin", tmp_path / "cache", source="tokens", tokenizer="char")
    dm.setup()
    cut = int(len(ids) * 0.9)
    assert dm.vocab_size == len(chars) and dm.tokens.dtype == np.uint16
    np.testing.assert_array_equal(dm.train_tokens[:], ids[:cut])  # all of train.bin trains
    np.testing.assert_array_equal(dm.val_tokens[:], ids[cut:])  # val.bin validates
    assert dm.tokenizer.decode(dm.tokens[:50]) == "".join(chars[i] for i in ids[:50])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 8) and int(x.max()) < dm.vocab_size
    again = dm_for(tmp_path / "shakespeare_char" / "train.bin", tmp_path / "cache", source="tokens", tokenizer="char")
    again.setup()
    assert again.setup_seconds < 1.0


def test_tokens_without_val_bin_hold_out_the_tail(tmp_path, gpt2, gpt2_dir):
    folder = tmp_path / "owt"
    folder.mkdir()
    ids = gpt2.encode_array(sample_text(3000, seed=5)).astype(np.uint32)
    ids.tofile(folder / "train.bin")
    vocab, merges = str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")
    dm = dm_for(folder / "train.bin", tmp_path / "cache", source="tokens", tokenizer="gpt2_bpe", dtype="uint32", vocab_file=vocab,
                merges_file=merges, vocab_size=512)
    dm.setup()
    n_train = int(len(ids) * 0.9)
    assert dm.vocab_size == 512
    np.testing.assert_array_equal(dm.train_tokens[:], ids[:n_train])
    np.testing.assert_array_equal(dm.val_tokens[:], ids[n_train:])


def test_tokens_refusals_name_what_is_needed(tmp_path):
    folder = tmp_path / "data"
    ids, chars = nanogpt_char_folder(folder, val=False)
    train = folder / "train.bin"

    def setup(**kw):
        kw.setdefault("tokenizer", "char")
        dm_for(train, tmp_path / "cache", source="tokens", **kw).setup()

    # a token id the vocabulary does not hold
    with pytest.raises(ConfigError, match=r"data\.vocab_size=5 is not accepted: at least the tokenizer's"):
        setup(vocab_size=5)
    with pytest.raises(ConfigError, match=r"data\.vocab_size=0 is not accepted"):
        setup(vocab_size=0)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({"vocab_size": meta["vocab_size"]}))
    with pytest.raises(ConfigError, match=r"data\.tokenizer='char' .*\"chars\".*meta\.json"):
        setup()
    (folder / "meta.json").write_text(json.dumps({"vocab_size": 3, "chars": meta["chars"][:3]}))
    first = int(np.argmax(ids >= 3))
    with pytest.raises(ConfigError, match=rf"meta\.json: vocab_size=3 is not accepted: more than every token id.*"
                                          rf"train\.bin' holds id {ids[first]} at token {first} "
                                          rf"\(byte offset {2 * first}\)"):
        setup()
    # no tokenizer to decode with; meta.pkl is not read
    (folder / "meta.json").unlink()
    (folder / "meta.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ConfigError, match=r"data\.tokenizer='char' .*meta\.pkl is a pickle, never read"):
        setup()
    # a length that is not a multiple of the dtype
    (folder / "meta.json").write_text(json.dumps({"vocab_size": len(chars), "chars": "".join(chars)}))
    setup()
    with open(train, "ab") as f:
        f.write(b"\x01")
    with pytest.raises(ConfigError, match=rf"train\.bin' is not accepted: a flat file of uint16 token ids \(its "
                                          rf"{2 * len(ids) + 1:,} bytes are not a multiple of 2"):
        setup()
    with pytest.raises(ConfigError, match=r"data\.dtype='int8' is not accepted"):
        from builder.data.token_files import open_flat_tokens

        open_flat_tokens(train, tmp_path / "cache", dtype="int8", tokenizer="char")


def test_tokens_preset_composes():
    import builder

    cfg = builder.compose(["data=tokens", "data.path=train.bin", "data.vocab_size=50304"])
    assert cfg.data.source == "tokens" and cfg.data.tokenizer == "gpt2_bpe" and cfg.data.vocab_size == 50304


# ------------------------------------------------------------------------------------------ benchmark


def test_data_throughput_benchmark_runs_tiny(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/data_throughput.py", "--mb", "1", "--dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^(one file|many files) +(char|byte_bpe) +([\d.]+) MB/s +raw +([\d.]+) MB/s +ratio +([\d.]+)x"
                      r" +peak RSS +(\d+) MB +second setup +([\d.]+) s$", proc.stdout, re.M)
    assert len(rows) == 4, proc.stdout
    for *_, mbs, raw, _ratio, rss, second in rows:
        assert float(mbs) > 0 and float(raw) > 0 and int(rss) > 0 and float(second) < 2.0
