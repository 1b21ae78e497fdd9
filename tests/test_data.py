"""Tests for builder/data/: tokenizers, corpora, token cache, datasets and the datamodule."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.data.cache import HEADER_SIZE, default_cache_dir
from builder.data.corpus import Corpus, embedded_text
from builder.data.datamodule import TokenDataModule
from builder.data.tokenizers import ByteBPETokenizer, CharTokenizer, GPT2BPETokenizer, token_dtype, tokenizer_from_dict
from builder.data.windows import EpochSampler, RandomWindowDataset, ValWindowDataset
from builder.errors import ConfigError, DataError

# ----------------------------------------------------------------------------------------- helpers


def generated_text(n_words: int = 3000, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "model", "token", "attention", "layer", "naïve", "café", "data", "über", "transformer", "日本"]
    lines = []
    for _ in range(n_words // 10):
        lines.append(" ".join(rng.choice(words) for _ in range(10)) + rng.choice([".", ",", "!", "?"]))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def small_bpe() -> ByteBPETokenizer:
    return ByteBPETokenizer.train(generated_text(), vocab_size=300)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def dm_for(path: Path, cache: Path, **kw) -> TokenDataModule:
    kw.setdefault("context_length", 16)
    kw.setdefault("batch_size", 4)
    kw.setdefault("samples_per_epoch", 64)
    return TokenDataModule(source="text", path=str(path), cache_dir=str(cache), **kw)


def weights_only_roundtrip(obj, tmp_path: Path):
    f = tmp_path / "ckpt.pt"
    torch.save({"tokenizer": obj}, f)
    return torch.load(f, weights_only=True)["tokenizer"]


# -------------------------------------------------------------------------------------- tokenizers


def test_char_tokenizer_roundtrip_and_vocab():
    text = "hello world\nçà va?"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode("") == []
    assert tok.decode([]) == ""
    # ids follow the sorted vocabulary
    assert tok.encode(" ") == [tok.chars.index(" ")]


def test_char_tokenizer_unknown_character_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as e:
        tok.encode("abxc")
    msg = str(e.value)
    assert "'x'" in msg and "position 2" in msg
    with pytest.raises(ValueError, match=r"'\\n'.*position 0"):
        tok.encode("\nabc")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([3])


def test_char_tokenizer_dict_and_fingerprint(tmp_path):
    tok = CharTokenizer.from_text("the quick brown fox")
    d = tok.to_dict()
    json.dumps(d)  # plain JSON-able
    back = tokenizer_from_dict(weights_only_roundtrip(d, tmp_path))
    assert isinstance(back, CharTokenizer)
    assert back.encode("quick fox") == tok.encode("quick fox")
    assert back.fingerprint() == tok.fingerprint()
    assert CharTokenizer.from_text("the quick brown fo").fingerprint() != tok.fingerprint()


def test_byte_bpe_trains_and_roundtrips(small_bpe, tmp_path):
    assert 256 < small_bpe.vocab_size <= 300
    text = "the transformer model, naïve über café 日本!"
    ids = small_bpe.encode(text)
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned
    assert small_bpe.decode(ids) == text
    # unseen characters still encode (byte fallback)
    assert small_bpe.decode(small_bpe.encode("Ω≈ç √∫ 🙂")) == "Ω≈ç √∫ 🙂"
    d = small_bpe.to_dict()
    assert d["kind"] == "byte_bpe" and isinstance(d["tokenizer_json"], str)
    json.dumps(d)
    back = tokenizer_from_dict(weights_only_roundtrip(d, tmp_path))
    assert isinstance(back, ByteBPETokenizer)
    assert back.encode(text) == ids
    assert back.vocab_size == small_bpe.vocab_size
    assert back.fingerprint() == small_bpe.fingerprint()


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_byte_bpe_roundtrips_any_text(small_bpe, text):
    assert small_bpe.decode(small_bpe.encode(text)) == text


def test_byte_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="256"):
        ByteBPETokenizer.train("abc", vocab_size=100)


def save_gpt2_files(directory: Path, text: str) -> tuple[Path, Path]:
    """Train a tiny ByteLevel BPE and save it as a GPT-2 style vocab.json + merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    hf = ByteLevelBPETokenizer()
    hf.train_from_iterator([text], vocab_size=320, show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    files = hf.save_model(str(directory))
    vocab = next(Path(f) for f in files if f.endswith("vocab.json"))
    merges = next(Path(f) for f in files if f.endswith("merges.txt"))
    return vocab, merges


def test_gpt2_bpe_from_files(tmp_path):
    text = generated_text(seed=1)
    vocab, merges = save_gpt2_files(tmp_path / "gpt2", text)
    tok = GPT2BPETokenizer.from_files(vocab, merges)
    assert tok.vocab_size == max(json.loads(vocab.read_text()).values()) + 1
    sample = "attention layer über data"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    d = tok.to_dict()
    assert d["kind"] == "gpt2_bpe"
    back = tokenizer_from_dict(weights_only_roundtrip(d, tmp_path))
    assert isinstance(back, GPT2BPETokenizer)
    assert back.encode(sample) == ids
    with pytest.raises(DataError, match="nope.json"):
        GPT2BPETokenizer.from_files(tmp_path / "nope.json", merges)


def test_tokenizer_from_dict_rejects_unknown_kind():
    with pytest.raises(ValueError, match="char, word, byte_bpe, gpt2_bpe"):
        tokenizer_from_dict({"kind": "wordpiece"})


def test_token_dtype():
    assert token_dtype(65) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


# ---------------------------------------------------------------------------------------- corpora


def test_embedded_corpus():
    text = embedded_text()
    assert len(text) > 400_000
    from pydoc_data.topics import topics

    first = sorted(topics)[0]
    assert text.startswith(topics[first] + "\n\n")
    assert Corpus("embedded").text() == text


def test_folder_corpus_sorted_skips_hidden(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.txt", "bee")
    write(root / "a.txt", "ay")
    write(root / "sub" / "c.md", "sea")
    write(root / ".hidden.txt", "SECRET")
    write(root / ".git" / "config", "SECRET")
    corpus = Corpus("text", root)
    assert [f.name for f in corpus.files] == ["a.txt", "b.txt", "c.md"]
    assert corpus.text() == "ay\n\nbee\n\nsea"


def test_missing_path_error(tmp_path):
    missing = tmp_path / "does_not_exist.txt"
    with pytest.raises(DataError, match="does_not_exist.txt"):
        Corpus("text", missing)
    with pytest.raises(DataError, match="does_not_exist.txt"):
        dm_for(missing, tmp_path).setup()


def test_empty_file_error(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match=r"empty\.txt.*empty"):
        dm_for(empty, tmp_path / "cache").setup()
    folder = tmp_path / "folder"
    write(folder / "a.txt", "")
    write(folder / "b.txt", "")
    with pytest.raises(DataError, match="empty"):
        Corpus("text", folder).scan()
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing"):
        Corpus("text", tmp_path / "nothing")


def test_non_utf8_file_error(tmp_path):
    folder = tmp_path / "mixed"
    write(folder / "good.txt", "fine text")
    bad = folder / "latin1.txt"
    bad.write_bytes(b"caf" + "é".encode("latin-1") + b" and more")
    with pytest.raises(DataError) as e:
        dm_for(folder, tmp_path / "cache").setup()
    msg = str(e.value)
    assert "latin1.txt" in msg
    assert "byte offset 3" in msg


# ------------------------------------------------------------------------------------ token cache


def test_cache_reused_then_rebuilt_when_source_changes(tmp_path):
    src = write(tmp_path / "corpus.txt", generated_text(seed=2))
    cache = tmp_path / "cache"
    dm1 = dm_for(src, cache)
    dm1.setup()
    assert dm1.cache_hit is False
    assert dm1.cache_file.is_file() and dm1.cache_file.parent == cache
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # temp file was renamed away

    dm2 = dm_for(src, cache)
    dm2.setup()
    assert dm2.cache_hit is True
    assert dm2.cache_file == dm1.cache_file
    np.testing.assert_array_equal(dm1.tokens, dm2.tokens)

    # setup is idempotent on one instance
    dm2.setup()
    assert dm2.cache_hit is True

    write(src, generated_text(seed=3))
    dm3 = dm_for(src, cache)
    dm3.setup()
    assert dm3.cache_hit is False
    assert dm3.cache_file != dm1.cache_file


def test_cache_is_uint16_memmap_matching_encoding(tmp_path):
    text = generated_text(seed=4)
    src = write(tmp_path / "corpus.txt", text)
    dm = dm_for(src, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.tokens, np.memmap)
    assert dm.tokens.dtype == np.uint16
    assert dm.cache_file.stat().st_size == HEADER_SIZE + 2 * len(text)
    assert dm.tokenizer.decode(dm.tokens) == text
    assert dm.vocab_size == len(set(text))


def test_cache_key_depends_on_tokenizer(tmp_path):
    src = write(tmp_path / "corpus.txt", generated_text(seed=5))
    char = dm_for(src, tmp_path)
    char.setup()
    bpe = dm_for(src, tmp_path, tokenizer="byte_bpe", bpe_vocab_size=280)
    bpe.setup()
    assert char.cache_file != bpe.cache_file


def test_byte_bpe_datamodule_saves_tokenizer_and_reuses_cache(tmp_path):
    text = generated_text(seed=6)
    src = write(tmp_path / "corpus.txt", text)
    dm = dm_for(src, tmp_path, tokenizer="byte_bpe", bpe_vocab_size=300)
    dm.setup()
    assert isinstance(dm.tokenizer, ByteBPETokenizer)
    assert dm.tokenizer_file.is_file() and dm.tokenizer_file.parent == tmp_path
    assert dm.vocab_size <= 300
    assert dm.tokens.dtype == np.uint16
    assert dm.tokenizer.decode(dm.tokens) == text
    again = dm_for(src, tmp_path, tokenizer="byte_bpe", bpe_vocab_size=300)
    again.setup()
    assert again.cache_hit is True
    assert again.tokenizer.fingerprint() == dm.tokenizer.fingerprint()


def test_gpt2_bpe_datamodule(tmp_path):
    text = generated_text(seed=7)
    vocab, merges = save_gpt2_files(tmp_path / "gpt2", text)
    src = write(tmp_path / "corpus.txt", text)
    dm = dm_for(src, tmp_path / "cache", tokenizer="gpt2_bpe", vocab_file=str(vocab), merges_file=str(merges))
    dm.setup()
    assert isinstance(dm.tokenizer, GPT2BPETokenizer)
    assert dm.tokenizer.decode(dm.tokens) == text


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("HYDRAFORMER_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "hydraformer" / "tokens"
    monkeypatch.setenv("HYDRAFORMER_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    assert TokenDataModule().cache_dir == tmp_path / "elsewhere"
    assert TokenDataModule(cache_dir=str(tmp_path)).cache_dir == tmp_path


# ---------------------------------------------------------------------------- splits and windows


def test_embedded_datamodule_windows(tmp_path):
    dm = TokenDataModule(cache_dir=str(tmp_path), context_length=32, batch_size=8, samples_per_epoch=40)
    dm.setup()
    n = len(dm.tokens)
    assert len(dm.train_tokens) == int(n * 0.9)
    assert len(dm.train_tokens) + len(dm.val_tokens) == n
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 32) and y.shape == (8, 32)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # each window is a contiguous piece of the training split
    text = dm.tokenizer.decode(dm.train_tokens)
    for row_x, row_y in zip(x, y, strict=True):
        assert dm.tokenizer.decode(row_x.tolist() + row_y[-1:].tolist()) in text
    assert len(dm.train_dataloader()) == 40 // 8


def test_val_windows_fixed_non_overlapping(tmp_path):
    dm = TokenDataModule(cache_dir=str(tmp_path), context_length=32, batch_size=4, val_batches=3)
    dm.setup()
    val = dm.val_dataset
    assert len(val) == 12
    starts = val.starts
    assert (np.diff(starts) >= 33).all()
    assert starts[0] == 0 and starts[-1] + 33 <= len(dm.val_tokens)
    batches = list(dm.val_dataloader())
    assert len(batches) == 3
    again = list(dm.val_dataloader())
    for (a, _), (b, _) in zip(batches, again, strict=True):
        assert torch.equal(a, b)
    x, y = batches[0]
    assert torch.equal(x[0], torch.from_numpy(dm.val_tokens[0:32].astype(np.int64)))
    assert torch.equal(y[0], torch.from_numpy(dm.val_tokens[1:33].astype(np.int64)))


def test_val_windows_small_split():
    tokens = np.arange(50, dtype=np.uint16)
    ds = ValWindowDataset(tokens, context_length=9, max_windows=100)
    assert len(ds) == 5  # 50 // 10 windows, tiling the split
    assert list(ds.starts) == [0, 10, 20, 30, 40]
    assert len(ValWindowDataset(tokens, 9, 0)) == 0


def test_same_seed_same_batches_different_seed_differs(tmp_path):
    def first_batches(seed):
        dm = TokenDataModule(cache_dir=str(tmp_path), context_length=16, batch_size=4, samples_per_epoch=32, seed=seed)
        dm.setup()
        return [x for x, _ in dm.train_dataloader()]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_random_windows_deterministic_per_index_and_epoch():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = RandomWindowDataset(tokens, context_length=8, samples_per_epoch=10, seed=3)
    x5, y5 = ds[5]
    assert torch.equal(ds[5][0], x5)
    assert torch.equal(RandomWindowDataset(tokens, 8, 10, seed=3)[5][0], x5)
    assert torch.equal(y5, x5 + 1)
    assert int(x5[-1]) < 999  # the window stays inside the split
    starts0 = [ds.window_start(i) for i in range(10)]
    starts1 = [ds.window_start(i) for i in range(10, 20)]  # epoch 1
    assert starts0 != starts1
    assert all(0 <= s <= 1000 - 9 for s in starts0 + starts1)
    # the whole range of starts is reachable, including the last one
    tiny = RandomWindowDataset(np.arange(10, dtype=np.uint16), 8, 50, seed=0)
    assert {tiny.window_start(i) for i in range(50)} == {0, 1}


def test_epoch_sampler():
    s = EpochSampler(4)
    assert list(s) == [0, 1, 2, 3]
    s.set_epoch(2)
    assert list(s) == [8, 9, 10, 11] and len(s) == 4


def test_dataset_pickles_without_copying_tokens(tmp_path):
    dm = TokenDataModule(cache_dir=str(tmp_path), context_length=16, samples_per_epoch=8)
    dm.setup()
    blob = pickle.dumps(dm.train_dataset)
    assert len(blob) < 10_000  # only the file path and bounds travel, not the tokens
    clone = pickle.loads(blob)
    for i in (0, 7, 123):
        assert torch.equal(clone[i][0], dm.train_dataset[i][0])


def test_lightning_sets_sampler_epoch(tmp_path):
    import pytorch_lightning as pl

    dm = TokenDataModule(cache_dir=str(tmp_path), context_length=8, batch_size=2, samples_per_epoch=4, val_batches=1)

    class Tiny(pl.LightningModule):
        def __init__(self, vocab):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, vocab)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, _):
            x, y = batch
            self.seen.append(x.clone())
            return torch.nn.functional.cross_entropy(self.emb(x).flatten(0, 1), y.flatten())

        def validation_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.emb(x).flatten(0, 1), y.flatten())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm.setup("fit")
    model = Tiny(dm.vocab_size)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 4  # 2 batches x 2 epochs
    epoch0, epoch1 = torch.cat(model.seen[:2]), torch.cat(model.seen[2:])
    assert not torch.equal(epoch0, epoch1)
    expected = torch.stack([dm.train_dataset[i][0] for i in range(4, 8)])
    assert torch.equal(epoch1, expected)


# ----------------------------------------------------------------------------- option validation


def test_unknown_tokenizer_error():
    with pytest.raises(ConfigError) as e:
        TokenDataModule(tokenizer="byte-bpe")
    msg = str(e.value)
    assert "data.tokenizer" in msg and "'byte-bpe'" in msg
    assert "char, word, byte_bpe, gpt2_bpe" in msg
    assert "did you mean 'byte_bpe'" in msg


def test_unknown_source_error():
    with pytest.raises(ConfigError, match=r"data.source='txt'.*embedded, text.*did you mean 'text'"):
        TokenDataModule(source="txt")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"context_length": 0}, "data.context_length"),
        ({"batch_size": "8"}, "data.batch_size"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"bpe_vocab_size": 100}, "data.bpe_vocab_size"),
        ({"samples_per_epoch": True}, "data.samples_per_epoch"),
        ({"source": "text"}, "data.path"),
        ({"path": "x.txt"}, "data.path"),
        ({"tokenizer": "gpt2_bpe"}, "data.vocab_file"),
    ],
)
def test_option_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TokenDataModule(**kwargs)


def test_corpus_too_short_for_context(tmp_path):
    src = write(tmp_path / "short.txt", "just a few characters here")
    with pytest.raises(DataError, match="data.context_length"):
        dm_for(src, tmp_path, context_length=64).setup()


def test_configs_match_constructor():
    """Each data preset composes to exactly TokenDataModule's arguments; the schema holds each default once,
    equal to the constructor's, and the YAML files write only what differs from it."""
    import dataclasses
    import inspect

    import yaml

    import builder
    from builder.config.schema import DataConfig

    signature = inspect.signature(TokenDataModule.__init__).parameters
    params = set(signature) - {"self"}
    assert {f.name for f in dataclasses.fields(DataConfig)} == params
    for f in dataclasses.fields(DataConfig):
        # interpolated: the model's context, the run's seed, the paths group's cache (checked below);
        # num_workers None: task=train picks (GPU: 4, CPU: 0)
        # path: MISSING in the schema, so text's `???` survives the merge; each preset sets it (checked below)
        if f.name not in ("context_length", "seed", "cache_dir", "num_workers", "path"):
            assert f.default == signature[f.name].default, f.name
    conf = Path(__file__).resolve().parents[1] / "conf" / "data"
    paths = {"text": "corpus.txt", "tokens": "train.bin"}  # the presets whose path is ???
    for name in ("embedded", "text", "adjectives", "tokens"):
        overrides = [f"data={name}"] + ([f"data.path={paths[name]}"] if name in paths else [])
        cfg = builder.compose(overrides + ["model.context_length=77", "seed=5"])
        assert set(cfg.data) == params, name
        assert cfg.data.context_length == 77 and cfg.data.seed == 5 and cfg.data.source == name
        assert cfg.data.path == paths.get(name)
        assert Path(cfg.data.cache_dir).expanduser() == default_cache_dir()  # the constructor's None means the same
        written = yaml.safe_load((conf / f"{name}.yaml").read_text())
        assert set(written) - {"defaults"} <= {"source", "path", "tokenizer"}, name
    assert yaml.safe_load((conf / "text.yaml").read_text())["path"] == "???"
    assert yaml.safe_load((conf / "tokens.yaml").read_text())["path"] == "???"


def _setup_in_child(args):
    src, cache, barrier, queue = args
    barrier.wait()
    dm = dm_for(src, cache, tokenizer="byte_bpe", bpe_vocab_size=300)
    dm.setup()
    queue.put((str(dm.cache_file), dm.tokenizer.fingerprint(), int(dm.tokens.sum())))


def test_concurrent_setup_in_two_processes(tmp_path):
    """Two processes (as with DDP on one machine) building the same cache agree and leave no temp files."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    src = write(tmp_path / "corpus.txt", generated_text(seed=8))
    cache = tmp_path / "cache"
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_setup_in_child, args=((src, cache, barrier, queue),)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    dm = dm_for(src, cache, tokenizer="byte_bpe", bpe_vocab_size=300)
    dm.setup()
    assert dm.cache_hit is True
    assert (str(dm.cache_file), dm.tokenizer.fingerprint(), int(dm.tokens.sum())) == results[0]
