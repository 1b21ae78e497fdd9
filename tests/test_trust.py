"""What a stranger's folder can do: nothing. A sharded checkpoint whose files are pickles that would run code (its
``.metadata``, a value in a shard, its ``meta.pt``) is refused without running them — by ``builder.load_model``,
``task=sample``, ``task=export`` and a resume under fsdp2 — and the checkpoint folders hydraformer writes still load.
Weights that are not floating point are refused, naming each tensor and its dtype, in every format; text an exported
tokenizer cannot encode is one paragraph naming the characters (or words) it lacks, in every task that encodes text.

Every refusal through the command line: exit status 2, one paragraph, no traceback, no run directory (conftest.refused).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import Touch, home_env, refused, run_cli
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.filesystem import _StorageInfo

import builder
from builder.checkpoint import export_model
from builder.config.plain import to_plain
from builder.data.tokenizers import CharTokenizer, WordTokenizer
from builder.errors import ConfigError

# dcp.save in this one process says it assumes one process: what these tests ask of it
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.context_length=16"]
CHARS = "abcdefghijklmnopqrstuvwxyz .,"


def _model(tokenizer):
    cfg = to_plain(builder.compose([*TINY, f"model.vocab_size={tokenizer.vocab_size}"]).model)
    torch.manual_seed(0)
    return builder.build_model(cfg), cfg


def write_checkpoint(path: Path, tokenizer) -> Path:
    """A small checkpoint as task=train writes it (model config, tokenizer, state_dict), without training."""
    model, cfg = _model(tokenizer)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": cfg, "tokenizer": tokenizer.to_dict()}}, path)
    return path


def write_sharded(path: Path, tokenizer, **extra) -> Path:
    """A sharded checkpoint as trainer.checkpoint_format=sharded writes one (torch distributed checkpoint's shards and
    ``.metadata``, Lightning's ``meta.pt``), by one process; ``extra``: more entries in the shards (optimizer state)."""
    model, cfg = _model(tokenizer)
    state = {f"model.{k}": v for k, v in model.state_dict().items() if k != "unembedding.weight"}  # tied: once
    dcp.save({"state_dict": state, **extra}, checkpoint_id=path, no_dist=True)
    torch.save({"hyper_parameters": {"model": cfg, "tokenizer": tokenizer.to_dict()}, "global_step": 2},
               path / "meta.pt")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    ckpt = write_checkpoint(root / "small.ckpt", CharTokenizer(CHARS))
    words = write_checkpoint(root / "words.ckpt", WordTokenizer(["the", "cat", "sat", "on", "mat", "a"]))
    return {"root": root, "ckpt": ckpt, "sharded": write_sharded(root / "sharded", CharTokenizer(CHARS)),
            "export": export_model(ckpt, root / "ours"), "hf": export_model(ckpt, root / "hf", format="hf"),
            "hf_words": export_model(words, root / "hf_words", format="hf")}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# --------------------------------------------------------------------------------------------------
# 1. a sharded checkpoint folder runs no code
# --------------------------------------------------------------------------------------------------


def _payload_index(folder: Path, mark: Path) -> str:
    """.metadata is a pickle whose loading creates ``mark``."""
    (folder / ".metadata").write_bytes(pickle.dumps(Touch(str(mark))))
    return str(folder / ".metadata")


def _payload_inside_index(folder: Path, mark: Path) -> str:
    """A genuine .metadata with the payload deep inside it: refused by what it names, not by its shape."""
    meta = pickle.loads((folder / ".metadata").read_bytes())  # our own file, written just now
    meta.storage_meta.modules = [Touch(str(mark))]
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    return str(folder / ".metadata")


def _payload_meta_pt(folder: Path, mark: Path) -> str:
    """meta.pt (Lightning's step and hyperparameters) is a pickle whose loading creates ``mark``."""
    torch.save({"hyper_parameters": Touch(str(mark)), "global_step": 2}, folder / "meta.pt")
    return "meta.pt loads with weights_only=True: its unpickler stopped at: Trying to load unsupported GLOBAL os.makedirs"


def _shard_outside(folder: Path, mark: Path) -> str:
    """.metadata sends the reader to a file outside the folder."""
    meta = pickle.loads((folder / ".metadata").read_bytes())
    for index, info in meta.storage_data.items():
        meta.storage_data[index] = _StorageInfo("../small.ckpt", info.offset, info.length, info.transform_descriptors)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    return "'../small.ckpt'"


PAYLOADS = [_payload_index, _payload_inside_index, _payload_meta_pt, _shard_outside]


@pytest.mark.parametrize("damage", PAYLOADS, ids=lambda f: f.__name__.strip("_"))
def test_load_model_runs_nothing_a_sharded_folder_names(folders, tmp_path, damage):
    mark = tmp_path / "pwned"
    folder = _copy(folders["sharded"], tmp_path / "step-2.ckpt")
    named = damage(folder, mark)
    with pytest.raises(ConfigError, match="checkpoint=") as err:
        builder.load_model(folder)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert not mark.exists(), "the pickle was run"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("task", ["sample", "export"])
@pytest.mark.parametrize("damage", [_payload_index, _payload_inside_index, _payload_meta_pt],
                         ids=lambda f: f.__name__.strip("_"))
def test_sample_and_export_refuse_a_sharded_folder_that_would_run_code(folders, tmp_path, task, damage):
    mark = tmp_path / "pwned"
    folder = _copy(folders["sharded"], tmp_path / "step-2.ckpt")
    named = damage(folder, mark)
    out = tmp_path / "run"
    refused(run_cli(f"task={task}", f"checkpoint={folder}", f"hydra.run.dir={out}", cwd=tmp_path), out,
            f"checkpoint='{folder}'", named)
    assert not mark.exists(), "the pickle was run"


def test_a_value_in_a_shard_is_read_as_data_only(folders, tmp_path):
    """torch's planner reads what is not a tensor with weights_only=False: a weight stored as such a value is never
    read (the model misses it), and every value a resume would read is checked first (builder.sharded.check)."""
    from builder import sharded

    mark = tmp_path / "pwned"
    folder = write_sharded(tmp_path / "values.ckpt", CharTokenizer(CHARS), optimizer_0={"lr": Touch(str(mark))})
    model, _, _ = builder.load_model(folder)  # the model's tensors only: the value is not read
    assert isinstance(model, torch.nn.Module) and not mark.exists()
    with pytest.raises(ConfigError, match=r"ckpt_path=.*values.ckpt.*weights_only=True.*os.makedirs"):
        sharded.check(folder, "ckpt_path", "a sharded checkpoint (fsdp2)")
    assert not mark.exists()
    state = {f"model.{k}": v for k, v in _model(CharTokenizer(CHARS))[0].state_dict().items()}
    state["model.token_embedding.weight"] = Touch(str(mark))  # a weight's name holding a pickle
    dcp.save({"state_dict": state}, checkpoint_id=tmp_path / "weight.ckpt", no_dist=True)
    shutil.copy(folder / "meta.pt", tmp_path / "weight.ckpt" / "meta.pt")
    with pytest.raises(ConfigError, match="token_embedding.weight: missing from the checkpoint"):
        builder.load_model(tmp_path / "weight.ckpt")
    assert not mark.exists()


def test_a_genuine_sharded_folder_still_loads_and_samples(folders, tmp_path):
    model, tokenizer, cfg = builder.load_model(folders["sharded"])
    reference, _, _ = builder.load_model(folders["ckpt"])  # the same weights (seeded), written as one file
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)
    out = tmp_path / "run"
    proc = run_cli("task=sample", f"checkpoint={folders['sharded']}", "prompt=the", "max_new_tokens=3",
                   f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "trust_resume")


@pytest.mark.parametrize("payload", ["index", "value"])
def test_resuming_under_fsdp2_refuses_a_folder_that_would_run_code(env, tmp_path, payload):
    """``ckpt_path=DIR`` with trainer=fsdp_cpu: refused by the run's first process, before it starts the others or
    writes anything (a test about processes: a new interpreter)."""
    mark = tmp_path / "pwned"
    folder = write_sharded(tmp_path / "step-2.ckpt", CharTokenizer(CHARS), optimizer_0={"lr": Touch(str(mark))})
    if payload == "index":
        _payload_index(folder, mark)
    out = tmp_path / "run"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *TINY, "trainer=fsdp_cpu", "logger=csv",
                   f"ckpt_path={folder}", f"hydra.run.dir={out}", env=env["env"], cwd=tmp_path, fresh=True)
    refused(proc, out, f"ckpt_path='{folder}'", ".metadata" if payload == "index" else "weights_only=True")
    assert not mark.exists(), "the pickle was run"


# --------------------------------------------------------------------------------------------------
# 2. weights that are not floating point
# --------------------------------------------------------------------------------------------------


def _retype(file: Path, name: str, dtype: torch.dtype) -> None:
    tensors = load_file(file)
    tensors[name] = tensors[name].to(dtype)
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.mark.parametrize("fmt,name", [("hf", "transformer.wte.weight"), ("hf", "transformer.h.0.attn.c_attn.bias"),
                                      ("export", "token_embedding.weight")])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_weights_that_are_not_floating_point_are_refused_naming_them(folders, tmp_path, fmt, name, dtype):
    folder = _copy(folders[fmt], tmp_path / fmt)
    _retype(folder / "model.safetensors", name, dtype)
    kind = str(dtype).removeprefix("torch.")
    with pytest.raises(ConfigError, match=rf"floating-point weights.*not floating point: {name} {kind}"):
        builder.load_model(folder)


def test_non_float_weights_refused_through_the_command_line_in_every_format(folders, tmp_path):
    hf = _copy(folders["hf"], tmp_path / "hf")
    _retype(hf / "model.safetensors", "transformer.wpe.weight", torch.int64)
    ckpt = tmp_path / "int.ckpt"
    saved = torch.load(folders["ckpt"], weights_only=True)
    saved["state_dict"]["model.final_norm.weight"] = saved["state_dict"]["model.final_norm.weight"].long()
    torch.save(saved, ckpt)
    state = {f"model.{k}": v for k, v in _model(CharTokenizer(CHARS))[0].state_dict().items()
             if k != "unembedding.weight"}
    state["model.blocks.0.mlp.fc.weight"] = state["model.blocks.0.mlp.fc.weight"].long()
    dcp.save({"state_dict": state}, checkpoint_id=tmp_path / "int_sharded", no_dist=True)
    shutil.copy(folders["sharded"] / "meta.pt", tmp_path / "int_sharded" / "meta.pt")
    for path, name in ((hf, "transformer.wpe.weight"), (ckpt, "final_norm.weight"),
                       (tmp_path / "int_sharded", "blocks.0.mlp.fc.weight")):
        out = tmp_path / "run"
        refused(run_cli("task=sample", f"checkpoint={path}", "prompt=the", f"hydra.run.dir={out}", cwd=tmp_path), out,
                f"checkpoint='{path}'", f"{name} int64", "floating-point weights")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_still_load(folders, tmp_path, dtype):
    hf = _copy(folders["hf"], tmp_path / "hf")
    tensors = {k: v.to(dtype) for k, v in load_file(hf / "model.safetensors").items()}
    save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    model, _, _ = builder.load_model(hf, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert {p.dtype for p in builder.load_model(hf)[0].parameters()} == {torch.float32}


# --------------------------------------------------------------------------------------------------
# 3. text an exported tokenizer cannot encode
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,key", [
    (["task=sample", "prompt='the Cat é'"], "prompt"),
    (["task=attend", "text='the Cat é'"], "text"),
    (["task=lens", "text='the Cat é'"], "text"),
    (["task=tour", "text='the Cat é'"], "text"),
    (["task=context", "word=cat", "contexts=['the Cat é','a cat']"], "contexts"),
    (["task=embed", "words=['Cé']"], "words"),
])
@pytest.mark.parametrize("folder", ["hf", "export"])
def test_text_the_tokenizer_lacks_names_its_characters(folders, tmp_path, args, key, folder):
    out = tmp_path / "run"
    line = refused(run_cli(f"checkpoint={folders[folder]}", *args, f"hydra.run.dir={out}", cwd=tmp_path), out,
                   f"{key}=", "characters not in the tokenizer's vocabulary")
    assert "'C', 'é'" in line and "'t'" not in line  # each missing character once, none that is there


def test_words_an_exported_word_tokenizer_lacks_are_named(folders, tmp_path):
    out = tmp_path / "run"
    line = refused(run_cli(f"checkpoint={folders['hf_words']}", "task=sample", "prompt='the dog sat on the log'",
                           f"hydra.run.dir={out}", cwd=tmp_path), out, "prompt=", "words not in the tokenizer's vocabulary")
    assert "'dog', 'log' (the first at position 4)" in line
    assert json.loads((folders["hf_words"] / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
