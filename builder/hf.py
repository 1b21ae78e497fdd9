"""Import a Hugging Face GPT-2 directory (``config.json`` + weights + tokenizer) as our own model.

    model, tokenizer, model_cfg = builder.hf.load_hf_gpt2("path/to/gpt2")

Everything stays local and safe: weights come from safetensors or from ``torch.load(weights_only=True)``,
so a ``pytorch_model.bin`` whose unpickling would run code is refused. Before the model is built, every tensor's
name and shape (the safetensors headers, a memory-mapped ``.bin``) is checked against what ``config.json`` implies,
on the meta device: a config.json claiming a wider model than its weights is refused before anything is allocated.
A FIFO, device or socket in place of one of the directory's files is refused before it is opened. GPT-2's ``Conv1D`` layers store
their weight as ``[in, out]``; ours are ``nn.Linear`` (``[out, in]``), so those weights are transposed.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .data.tokenizers import GPT2BPETokenizer
from .errors import ConfigError
from .files import special_file
from .model import build_model, load_state

HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")

#: GPT-2's activation names that are the tanh-approximated GELU our ``gelu`` MLP computes
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")

# GPT2Config's defaults, used when config.json leaves a key out (as transformers itself does)
_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "initializer_range": 0.02, "tie_word_embeddings": True, "scale_attn_weights": True,
             "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}

# per-block names: GPT-2's → ours, and whether the tensor is a Conv1D weight to transpose
_BLOCK_NAMES = {
    "ln_1.weight": ("norm_1.weight", False),
    "ln_1.bias": ("norm_1.bias", False),
    "attn.c_attn.weight": ("attention.qkv.weight", True),
    "attn.c_attn.bias": ("attention.qkv.bias", False),
    "attn.c_proj.weight": ("attention.o.weight", True),
    "attn.c_proj.bias": ("attention.o.bias", False),
    "ln_2.weight": ("norm_2.weight", False),
    "ln_2.bias": ("norm_2.bias", False),
    "mlp.c_fc.weight": ("mlp.fc.weight", True),
    "mlp.c_fc.bias": ("mlp.fc.bias", False),
    "mlp.c_proj.weight": ("mlp.proj.weight", True),
    "mlp.c_proj.bias": ("mlp.proj.bias", False),
}
_TOP_NAMES = {
    "wte.weight": "token_embedding.weight",
    "wpe.weight": "positions.table.weight",
    "ln_f.weight": "final_norm.weight",
    "ln_f.bias": "final_norm.bias",
}
# buffers older transformers versions saved with the weights (the causal mask and its fill value)
_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
_BLOCK = re.compile(r"h\.(\d+)\.(.+)$")


def _read_config(path: Path) -> dict | None:
    """config.json as a dict, or None when there is none, it is not a JSON object, or not a regular file."""
    if special_file(path / HF_CONFIG):  # a FIFO would block the read
        return None
    try:
        cfg = json.loads((path / HF_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _is_gpt2(cfg: dict) -> bool:
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") == "gpt2" or (isinstance(archs, list) and "GPT2LMHeadModel" in archs)


def is_hf_gpt2_dir(path) -> bool:
    """True for a directory whose ``config.json`` describes a GPT-2 (``model_type: gpt2`` or GPT2LMHeadModel)."""
    path = Path(str(path)).expanduser()
    if not path.is_dir():
        return False
    cfg = _read_config(path)
    return cfg is not None and _is_gpt2(cfg)


def gpt2_model_config(hf_cfg: dict, key: str = "checkpoint", path="") -> dict:
    """Our model config (a plain dict for ``build_model``) for a GPT-2 ``config.json``; refuses what we cannot run."""
    c = {**_DEFAULTS, **{k: v for k, v in hf_cfg.items() if v is not None or k == "n_inner"}}
    act = c["activation_function"]
    if act not in TANH_GELUS:
        raise ConfigError(key, str(path), f"a GPT-2 with activation_function one of {', '.join(TANH_GELUS)} "
                          f"(the tanh-approximated GELU); config.json has activation_function={act!r}")
    if c["scale_attn_weights"] is not True:
        raise ConfigError(key, str(path), "a GPT-2 with scale_attn_weights=true (scores divided by sqrt(d_head)); "
                          f"config.json has scale_attn_weights={c['scale_attn_weights']!r}")
    if c["scale_attn_by_inverse_layer_idx"]:
        raise ConfigError(key, str(path), "a GPT-2 without scale_attn_by_inverse_layer_idx; config.json sets it to true")
    if c["add_cross_attention"]:
        raise ConfigError(key, str(path), "a decoder-only GPT-2; config.json sets add_cross_attention=true")
    context = hf_cfg.get("n_positions") or hf_cfg.get("n_ctx") or c["n_positions"]
    return {
        "d_model": c["n_embd"],
        "n_layers": c["n_layer"],
        "n_heads": c["n_head"],
        "d_head": None,
        "vocab_size": c["vocab_size"],
        "context_length": context,
        "bias": True,
        "tie_embeddings": bool(c["tie_word_embeddings"]),
        "dropout": 0.0,
        "init_std": float(c["initializer_range"]),
        "embedding": {"name": "learned"},
        "attention": {"name": "multi_head"},
        "mask": {"name": "causal"},
        "mlp": {"name": "gelu", "hidden": c["n_inner"]},
        "norm": {"name": "layernorm", "layout": "pre", "eps": float(c["layer_norm_epsilon"])},
    }


def convert_gpt2_state(hf_state: dict, tie_embeddings: bool = True) -> dict:
    """GPT-2 tensor names and layouts → ours. Names we do not know are kept as they are, so
    ``load_state`` lists them as 'not in the model' instead of dropping them silently."""
    out = {}
    for name, tensor in hf_state.items():
        short = name.removeprefix("transformer.")
        if _BUFFERS.match(short):
            continue
        if short == "lm_head.weight":
            if not tie_embeddings:
                out["unembedding.weight"] = tensor
            continue  # tied: the same matrix as wte
        if short in _TOP_NAMES:
            out[_TOP_NAMES[short]] = tensor
            continue
        block = _BLOCK.match(short)
        if block and block.group(2) in _BLOCK_NAMES:
            ours, transpose = _BLOCK_NAMES[block.group(2)]
            out[f"blocks.{block.group(1)}.{ours}"] = tensor.t().contiguous() if transpose else tensor
            continue
        out[name] = tensor
    if tie_embeddings and "token_embedding.weight" in out:
        out["unembedding.weight"] = out["token_embedding.weight"]
    return out


def _refuse_special(files, key: str, path: Path) -> None:
    for file in files:
        if kind := special_file(file):
            raise ConfigError(key, str(path), f"a Hugging Face GPT-2 directory of regular files; {file.name} is {kind}")


def _load_one(file: Path, key: str, path: Path) -> dict:
    """A weights file's tensors; a zip-format ``.bin`` (torch >= 1.6) is memory-mapped, not read."""
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file))
        except Exception as err:
            raise ConfigError(key, str(path), f"readable safetensors weights; {file.name} could not be read: "
                              f"{_first_line(err)}") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except Exception as err:  # not a zip/pickle, or a pickle that wants to run code
        raise ConfigError(key, str(path), f"weights loadable safely with torch.load(weights_only=True); "
                          f"{file.name} was refused: {_first_line(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(key, str(path), f"a state dict of tensors in {file.name}; it holds a {type(state).__name__}")
    return state


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _shapes_of(file: Path, key: str, path: Path) -> dict:
    """A weights file's tensor names and shapes: the safetensors header (no tensor data read), or the memory-mapped
    ``.bin``."""
    if file.suffix != ".safetensors":
        return {name: tuple(t.shape) for name, t in _load_one(file, key, path).items()}
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as err:
        raise ConfigError(key, str(path), f"readable safetensors weights; {file.name} could not be read: "
                          f"{_first_line(err)}") from None


def _shards(index: Path, key: str, path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(key, str(path), f"a shard index with a 'weight_map'; {index.name} could not be read: "
                          f"{_first_line(err)}") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ConfigError(key, str(path), f"every shard {index.name} names, as a file in the same directory; "
                              f"not a plain file name: {shard!r}")
        _refuse_special([path / shard], key, path)
        if not (path / shard).is_file():
            raise ConfigError(key, str(path), f"every shard {index.name} names, as a file in the same directory; "
                              f"missing: {shard!r}")
    return [path / shard for shard in shards]


def _weight_files(path: Path, key: str) -> list[Path]:
    """The files holding a directory's weights: model.safetensors, its shards, or pytorch_model.bin (or its shards)."""
    _refuse_special([path / name for name in WEIGHT_FILES], key, path)
    for name in WEIGHT_FILES:
        file = path / name
        if file.is_file():
            return _shards(file, key, path) if name.endswith(".index.json") else [file]
    raise ConfigError(key, str(path), f"a Hugging Face GPT-2 directory with weights; none of {', '.join(WEIGHT_FILES)} "
                      "was found")


def read_gpt2_weights(path, key: str = "checkpoint") -> dict:
    """The raw GPT-2 state dict of a directory: model.safetensors, its shards, or pytorch_model.bin (safely)."""
    path = Path(str(path)).expanduser()
    return {name: t for file in _weight_files(path, key) for name, t in _load_one(file, key, path).items()}


def read_gpt2_shapes(path, key: str = "checkpoint") -> dict[str, tuple[int, ...]]:
    """Every tensor's GPT-2 name and shape in a directory's weights, without reading the tensors."""
    path = Path(str(path)).expanduser()
    return {name: s for file in _weight_files(path, key) for name, s in _shapes_of(file, key, path).items()}


def check_gpt2_shapes(model_cfg: dict, shapes: dict, key: str = "checkpoint", path="") -> None:
    """Refuse weights (``read_gpt2_shapes``) whose names or shapes do not fit ``model_cfg``: compared with a model
    built on the meta device, so a config.json that claims more than its weights allocates nothing."""
    with torch.device("meta"):
        model = build_model(model_cfg)
        state = {name: torch.empty(shape) for name, shape in shapes.items()}
    try:
        load_state(model, convert_gpt2_state(state, model.tie_embeddings), key, path)
    except ConfigError as err:
        raise ConfigError(key, str(path), f"{err.accepted} (the model's shapes are what {HF_CONFIG} implies; "
                          "nothing was built)") from None


def load_gpt2_tokenizer(path, key: str = "checkpoint"):
    """vocab.json + merges.txt, else tokenizer.json, as a ``GPT2BPETokenizer``; None when neither is there."""
    path = Path(str(path)).expanduser()
    vocab, merges, tok_json = path / "vocab.json", path / "merges.txt", path / "tokenizer.json"
    try:
        if vocab.is_file() and merges.is_file():
            return GPT2BPETokenizer.from_files(vocab, merges)
        if tok_json.is_file():
            return GPT2BPETokenizer.from_str(tok_json.read_text())
    except Exception as err:
        raise ConfigError(key, str(path), f"a readable GPT-2 tokenizer (vocab.json + merges.txt, or tokenizer.json): "
                          f"{_first_line(err)}") from None
    return None


def load_hf_gpt2(path, key: str = "checkpoint"):
    """A Hugging Face GPT-2 directory as ``(model, tokenizer_or_None, model_config_dict)``, model in eval mode."""
    path = Path(str(path)).expanduser()
    _refuse_special([path / name for name in (HF_CONFIG, *WEIGHT_FILES, *TOKENIZER_FILES)], key, path)
    if not (path / HF_CONFIG).is_file():
        raise ConfigError(key, str(path), f"a Hugging Face GPT-2 directory holding {HF_CONFIG}")
    hf_cfg = _read_config(path)
    if hf_cfg is None:
        raise ConfigError(key, str(path), f"a Hugging Face GPT-2 directory; its {HF_CONFIG} is not a JSON object")
    if not _is_gpt2(hf_cfg):
        raise ConfigError(key, str(path), "a Hugging Face GPT-2 directory (config.json with model_type 'gpt2' or "
                          f"architectures GPT2LMHeadModel); its config.json has model_type={hf_cfg.get('model_type')!r}, "
                          f"architectures={hf_cfg.get('architectures')!r}")
    model_cfg = gpt2_model_config(hf_cfg, key, path)
    check_gpt2_shapes(model_cfg, read_gpt2_shapes(path, key), key, path)  # before anything is allocated
    model = build_model(model_cfg)
    state = convert_gpt2_state(read_gpt2_weights(path, key), model.tie_embeddings)
    load_state(model, state, key, path)
    tokenizer = load_gpt2_tokenizer(path, key)
    if tokenizer is not None and tokenizer.vocab_size > model_cfg["vocab_size"]:
        raise ConfigError(key, str(path), f"a tokenizer whose ids fit the model's vocab_size={model_cfg['vocab_size']}; "
                          f"the tokenizer has {tokenizer.vocab_size} ids")
    return model.eval(), tokenizer, model_cfg
