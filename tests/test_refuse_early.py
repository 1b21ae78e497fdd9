"""Refuse before allocating: a training run that cannot fit in memory, a Hugging Face config.json that claims more
than its weights, and a FIFO or device where a file is read are refused with one paragraph (exit 2, no traceback,
no run directory) before anything is allocated or opened.

Every command that would allocate (or block) if its check were missing runs in a child process under an
address-space cap and a timeout, so a regression fails the test instead of taking the machine down or hanging."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train_env
from safetensors.torch import save_file

import builder
from builder.budget import parameter_budget
from builder.config.plain import to_plain
from builder.errors import ConfigError
from builder.files import special_file
from builder.hf import is_hf_gpt2_dir
from builder.memory import (
    TOKEN_BYTES,
    _meminfo_available,
    available_memory,
    check_generation_memory,
    check_training_memory,
    kv_bytes_per_token,
    training_memory,
)
from components import KVCache

CAP = 6 << 30  # address space of a child: ample for a refusal or a tiny run, far below what a refused run would take
SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "callbacks.text_samples.prompt=the ",
         "callbacks.attention_probe=null", "train.warmup_steps=0"]


def run_capped(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` (conftest.run_cli) with its address space capped at CAP."""
    return run_cli(*args, env=env, timeout=timeout, address_space=CAP)


def assert_refused(proc: subprocess.CompletedProcess, run_dir: Path, *words: str) -> str:
    """Exit 2, one paragraph naming each of ``words``, no traceback, no run directory left behind."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    for word in words:
        assert word in err, f"{word!r} not in:\n{err[-3000:]}"
    assert not run_dir.exists(), list(run_dir.iterdir())
    return err


@pytest.fixture
def env(tmp_path):
    return train_env(tmp_path)


# --- 1. training memory --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpt3_175b_is_refused_before_allocating(env):
    out = env["tmp"] / "run"
    proc = run_capped(env["env"], "model=gpt3_175b", f"hydra.run.dir={out}")
    err = assert_refused(proc, out, "model='gpt3_175b'", "GiB", "available", "train.check_memory=false")
    assert "smaller model" in err


@pytest.mark.slow
def test_gpt2_xl_at_batch_64_is_refused(env):
    if (_meminfo_available() or 0) > 400 << 30:  # its least estimate is ~340 GiB: it would be allowed to train
        pytest.skip("this machine has the memory to train gpt2_xl at batch 64")
    out = env["tmp"] / "run"
    proc = run_capped(env["env"], "model=gpt2_xl", "data.batch_size=64", f"hydra.run.dir={out}")
    err = assert_refused(proc, out, "GiB", "data.batch_size=64", "train.check_memory=false")
    assert "model='gpt2_xl'" in err or "data.batch_size=64 is not accepted" in err


def test_check_memory_false_composes_and_skips_the_check():
    """``train.check_memory=false`` is a key of the schema; with it the check refuses nothing (the run itself is not
    started here: it would allocate)."""
    cfg = builder.compose(["model=gpt2_xl", "data.batch_size=64", "train.check_memory=false"])
    assert cfg.train.check_memory is False
    budget = parameter_budget(to_plain(cfg.model), "gpt2_xl")
    assert check_training_memory(budget, cfg) is None
    assert builder.compose([]).train.check_memory is True
    with pytest.raises(Exception, match="check_memory"):
        builder.compose(["train.check_memory=perhaps"])


def test_a_batch_too_large_names_data_batch_size_and_one_that_fits(env):
    out = env["tmp"] / "run"
    proc = run_capped(env["env"], "data=text", f"data.path={env['corpus']}", *SMALL, "data.batch_size=10000000",
                      f"hydra.run.dir={out}")
    err = assert_refused(proc, out, "data.batch_size=10000000 is not accepted", "GiB", "train.check_memory=false")
    fits = int(err.split("use data.batch_size=")[1].split()[0])
    assert 1 <= fits < 10_000_000


def test_a_tiny_model_fits_trains_and_the_check_prints_nothing(env, capsys):
    cfg = builder.compose(["data=text", f"data.path={env['corpus']}", *SMALL])
    est = check_training_memory(parameter_budget(to_plain(cfg.model), "tiny"), cfg)
    assert capsys.readouterr() == ("", "")
    assert est is not None and 0 < est["least"] < est["most"] and est["least"] < est["available"]
    out = env["tmp"] / "run"
    proc = run_capped(env["env"], "data=text", f"data.path={env['corpus']}", *SMALL, "trainer.max_steps=2",
                      "trainer.val_check_interval=2", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done: 2 steps" in proc.stdout
    assert "check_memory" not in proc.stdout + proc.stderr


def test_the_estimate_formula():
    """16 bytes a parameter (fp32 weights, gradients, two AdamW moments), 8 at 16-true; activations
    L·b·s·h·(34 + 5·a·s/h) bytes at 16 bits, doubled at 32; logits b·s·V·12."""
    budget = {"total_params": 1000, "config": {"d_model": 64, "n_layers": 3, "n_heads": 4, "vocab_size": 50,
                                               "context_length": 128}}
    b, s, h, a, layers, vocab = 2, 16, 64, 4, 3, 50
    est = training_memory(budget, b, s, "32-true")
    assert est["states"] == 16_000
    assert est["activations"] == layers * b * s * h * 34 * 2
    assert est["scores"] == layers * b * s * 5 * a * s * 2
    assert est["logits"] == 12 * b * s * vocab
    assert est["least"] == est["states"] + est["activations"] + est["logits"]
    assert est["most"] == est["least"] + est["scores"]
    mixed = training_memory(budget, b, s, "bf16-mixed")
    assert mixed["states"] == 16_000 and mixed["activations"] * 2 == est["activations"]
    assert training_memory(budget, b, s, "bf16-true")["states"] == 8_000
    assert training_memory(budget, b, None, 32)["context_length"] == 128
    assert training_memory(budget, b, s, "32-true", shards=4)["states"] == 4_000


def test_on_cuda_the_gpus_free_memory_is_compared(monkeypatch):
    """No GPU needed: torch.cuda answers as one with 10 GiB free would; the check reads the first GPU used only."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: asked.append(i) or (10 << 30, 80 << 30))
    gpu = available_memory({"accelerator": "gpu", "devices": [2, 3], "strategy": "auto"})
    assert gpu == {"bytes": 10 << 30, "where": "GPU 2 (Fake GPU) has", "processes": 1, "shards": 1,
                   "kernel": "fused"} and asked == [2]  # kernel: attention there (builder/activations.py)
    assert available_memory({"accelerator": "auto", "devices": -1, "strategy": "fsdp"})["shards"] == 4
    assert available_memory({"accelerator": "gpu", "devices": 2, "strategy": "ddp_fork"}) is None  # CUDA untouched
    assert available_memory({"accelerator": "mps", "devices": 1}) is None
    assert available_memory({"accelerator": "cpu", "devices": 2})["processes"] == 2  # ddp_cpu: two processes
    assert available_memory({"accelerator": "cpu", "devices": 2})["kernel"] == "cpu"
    cfg = builder.compose(["model=gpt2_xl", "trainer=gpu"])
    with pytest.raises(ConfigError, match=r"GPU 0 \(Fake GPU\) has 10\.0 GiB available") as err:
        check_training_memory(parameter_budget(to_plain(cfg.model), "gpt2_xl"), cfg)
    assert err.value.key == "model" and "precision bf16-mixed" in str(err.value)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning started for another rank: rank 0 checked
    assert check_training_memory(parameter_budget(to_plain(cfg.model), "gpt2_xl"), cfg) is None


# --- 2. a Hugging Face directory whose config.json claims more than its weights --------------------------------------


def _gpt2_state(d=32, layers=2, vocab=300, positions=64) -> dict:
    """A tiny GPT-2 state dict with Hugging Face's names and Conv1D layouts ([in, out])."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    state = {"transformer.wte.weight": r(vocab, d), "transformer.wpe.weight": r(positions, d),
             "transformer.ln_f.weight": torch.ones(d), "transformer.ln_f.bias": torch.zeros(d)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        state.update({p + "ln_1.weight": torch.ones(d), p + "ln_1.bias": torch.zeros(d),
                      p + "attn.c_attn.weight": r(d, 3 * d), p + "attn.c_attn.bias": r(3 * d),
                      p + "attn.c_proj.weight": r(d, d), p + "attn.c_proj.bias": r(d),
                      p + "ln_2.weight": torch.ones(d), p + "ln_2.bias": torch.zeros(d),
                      p + "mlp.c_fc.weight": r(d, 4 * d), p + "mlp.c_fc.bias": r(4 * d),
                      p + "mlp.c_proj.weight": r(4 * d, d), p + "mlp.c_proj.bias": r(d)})
    return state


def _hf_dir(root: Path, weights: str = "safetensors", **config) -> Path:
    root.mkdir()
    state = _gpt2_state()
    if weights == "safetensors":
        save_file(state, root / "model.safetensors")
    else:
        torch.save(state, root / "pytorch_model.bin")
    (root / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                  "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                                                  "vocab_size": 300, **config}))
    return root


def test_the_hand_made_gpt2_dir_loads(tmp_path):
    """The control: the same directory with a truthful config.json loads."""
    for weights in ("safetensors", "bin"):
        model, _, cfg = builder.load_model(_hf_dir(tmp_path / weights, weights))
        assert cfg["d_model"] == 32 and model.token_embedding.weight.shape == (300, 32)


@pytest.mark.parametrize("weights, claim", [("safetensors", {"n_embd": 65536}), ("bin", {"n_embd": 65536}),
                                            ("safetensors", {"n_inner": 1 << 24}), ("bin", {"vocab_size": 1 << 26})])
def test_inflated_config_json_is_refused_before_building(tmp_path, weights, claim):
    d = _hf_dir(tmp_path / "gpt2", weights, **claim)
    out = tmp_path / "run"
    proc = run_capped({}, "task=sample", f"checkpoint={d}", f"hydra.run.dir={out}", timeout=120)
    err = assert_refused(proc, out, f"checkpoint='{d}'", ": checkpoint transformer.", "vs model (", "config.json")
    assert str(next(iter(claim.values()))) in err


def test_shape_check_wording_keeps_listing_missing_tensors(tmp_path):
    d = _hf_dir(tmp_path / "gpt2", n_layer=3)
    with pytest.raises(ConfigError, match=r"blocks\.2\.attention\.qkv\.weight: missing") as err:
        builder.load_model(d)
    assert err.value.key == "checkpoint" and "nothing was built" in str(err.value)


# --- 3. a FIFO, a device or a socket where a file is read ------------------------------------------------------------


def test_special_file_names_what_is_not_a_file_or_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        assert special_file(tmp_path / "sock") == "a socket"
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    assert special_file(tmp_path / "f") is None and special_file(tmp_path) is None
    assert special_file(tmp_path / "missing") is None
    assert special_file(tmp_path / "fifo") == special_file(tmp_path / "link") == "a named pipe (FIFO)"
    assert special_file("/dev/null") == "a character device"


def test_fifo_as_data_path_is_refused_not_waited_on(env):
    fifo = env["tmp"] / "corpus.fifo"
    os.mkfifo(fifo)
    out = env["tmp"] / "run"
    proc = run_capped(env["env"], "data=text", f"data.path={fifo}", *SMALL, f"hydra.run.dir={out}", timeout=120)
    assert_refused(proc, out, f"data.path='{fifo}'", "named pipe (FIFO)")


@pytest.mark.parametrize("what", ["char_device", "folder_of_a_fifo"])
def test_device_or_folder_holding_only_a_fifo_as_data_path_is_refused(env, what):
    if what == "char_device":
        path, words = "/dev/null", ("data.path='/dev/null'", "character device")
    else:
        path = env["tmp"] / "corpus_dir"
        path.mkdir()
        os.mkfifo(path / "part.txt")  # a folder's members that are not files are left out: an empty corpus
        words = ("data.path", str(path), "no (non-hidden) files")
    out = env["tmp"] / "run"
    proc = run_capped(env["env"], "data=text", f"data.path={path}", *SMALL, f"hydra.run.dir={out}", timeout=120)
    assert_refused(proc, out, *words)


@pytest.mark.parametrize("name", ["model.safetensors", "vocab.json", "model.safetensors.index.json"])
def test_fifo_in_a_hugging_face_dir_is_refused(tmp_path, name):
    d = _hf_dir(tmp_path / "gpt2")
    if name != "model.safetensors.index.json":
        (d / name).unlink(missing_ok=True)
        os.mkfifo(d / name)
    else:  # a shard index naming a FIFO
        (d / "model.safetensors").rename(d / "shard-1.safetensors")
        os.mkfifo(d / "shard-2.safetensors")
        (d / name).write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors", "b": "shard-2.safetensors"}}))
        name = "shard-2.safetensors"
    out = tmp_path / "run"
    proc = run_capped({}, "task=sample", f"checkpoint={d}", f"hydra.run.dir={out}", timeout=120)
    assert_refused(proc, out, f"checkpoint='{d}'", f"{name} is a named pipe (FIFO)")


@pytest.mark.timeout(60)
def test_fifo_config_json_is_not_read(tmp_path):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "config.json")
    assert not is_hf_gpt2_dir(tmp_path / "d")


@pytest.mark.parametrize("key", ["checkpoint", "ckpt_path"])
def test_fifo_as_a_checkpoint_is_refused_not_waited_on(env, key):
    fifo = env["tmp"] / "model.ckpt"
    os.mkfifo(fifo)
    out = env["tmp"] / "run"
    task = ["task=sample"] if key == "checkpoint" else ["data=text", f"data.path={env['corpus']}", *SMALL]
    proc = run_capped(env["env"], *task, f"{key}={fifo}", f"hydra.run.dir={out}", timeout=120)
    assert_refused(proc, out, f"{key}='{fifo}'", "named pipe (FIFO)")


# --- 4. a length or count a person gives: what the model and the memory allow, or one paragraph ----------------------


def _char_checkpoint(path: Path, *overrides: str) -> Path:
    """A small checkpoint (char tokenizer, untrained weights) as task=train writes it."""
    from builder.data.tokenizers import CharTokenizer

    cfg = to_plain(builder.compose(["model.d_model=32", "model.n_layers=2", "model.n_heads=4",
                                    "model.context_length=16", "model.vocab_size=30", *overrides]).model)
    model = builder.build_model(cfg)
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": cfg, "tokenizer": tok.to_dict()}}, path)
    return path


@pytest.mark.parametrize("overrides, compile, words", [
    ([], False, "model.context_length=16 positions"),  # a position table: the cache restarts, the tokens add up
    (["model/embedding=rotary"], False, "the cache holds every token"),
    (["model/embedding=rotary", "model/attention=grouped_query", "model.attention.n_kv_heads=2"], True,
     "the cache holds every token"),
])
def test_sample_longer_than_memory_holds_is_refused(tmp_path, overrides, compile, words):
    """max_new_tokens=10^12 used to allocate its output (8 TB) and cache up front: a traceback; now one paragraph
    naming the key, what it needs and the most that fits, before anything is allocated."""
    ckpt = _char_checkpoint(tmp_path / "small.ckpt", *overrides)
    out = tmp_path / "run"
    proc = run_capped({}, "task=sample", f"checkpoint={ckpt}", "prompt=the ", "max_new_tokens=1000000000000",
                      f"compile={str(compile).lower()}", f"hydra.run.dir={out}", timeout=120)
    err = assert_refused(proc, out, "max_new_tokens=1000000000000 is not accepted", words, "available",
                         "use max_new_tokens=")
    fits = int(err.split("use max_new_tokens=")[1].split()[0])
    assert 1 <= fits < 10**12


def test_the_generation_estimate_is_what_the_cache_holds():
    """kv_bytes_per_token is what a KVCache holds per position after a forward pass (keys and values of every layer,
    n_kv_heads x d_head, in the weights' dtype); a continuation of what the refusal says fits is accepted."""
    for overrides in ([], ["model/embedding=rotary", "model/attention=grouped_query", "model.attention.n_kv_heads=2",
                           "model.n_layers=3"]):
        model = builder.build_model(builder.compose(["model.d_model=32", "model.n_heads=4", "model.vocab_size=30",
                                                     "model.context_length=16", *overrides]).model).eval()
        cache = KVCache()
        with torch.no_grad():
            model(torch.randint(0, 30, (1, 5)), cache=cache)
        held = sum(t.numel() * t.element_size() for t in [*cache.keys.values(), *cache.values.values()])
        assert held == 5 * kv_bytes_per_token(model)
        est = check_generation_memory(model, 5, 100)
        cached = (16 if model.context_length else 105) * kv_bytes_per_token(model)
        assert est["bytes"] == cached + 105 * TOKEN_BYTES
        with pytest.raises(ConfigError) as err:
            check_generation_memory(model, 5, 10**15)
        fits = int(str(err.value).split("use max_new_tokens=")[1].split()[0])
        assert check_generation_memory(model, 5, fits // 2)["bytes"] <= est["available"]


@pytest.mark.parametrize("args, words", [
    (["task=embed", "neighbours=1000000000", "words=[a]"], ["neighbours=1000000000 is not accepted", "<= 100"]),
    (["task=train", "data.source=adjectives", "data.n_sentences=1000000000"],
     ["data.n_sentences=1000000000 is not accepted", "<= 10000000"]),
    (["task=train", "data.source=lecture", "data.n_sentences=20000000"], ["data.n_sentences=20000000 is not accepted"]),
    (["task=embed", f"words=[{','.join(f'w{i}' for i in range(65))}]"], ["a list of 1 to 64 strings"]),
    (["task=embed", f"pairs=[{','.join('[a,b]' for _ in range(65))}]"], ["a list of 1 to 64 lists of strings"]),
])
def test_other_counts_are_bounded(tmp_path, args, words):
    """task=embed drew a bar for every token of the vocabulary (minutes, gigabytes); the generated languages built a
    billion sentences in memory: both refused in one paragraph before anything runs."""
    ckpt = _char_checkpoint(tmp_path / "small.ckpt")
    out = tmp_path / "run"
    proc = run_capped({}, *args, f"checkpoint={ckpt}" if args[0] == "task=embed" else "trainer.max_steps=1",
                      f"hydra.run.dir={out}", timeout=120)
    assert_refused(proc, out, *words)
