"""Hugging Face directories in and out: one typed adapter per family, one path through them.

    model, tokenizer, model_cfg = builder.hf.load_hf("path/to/llama")      # or builder.load_model(DIR)
    builder.hf.save_hf(model, tokenizer, model_cfg, "out/dir")             # task=export format=hf

Each family (``FAMILIES``) is a ``Family`` whose every field is named: the preset that is a model of it
(``preset``: its components are read from ``conf/model/<preset>.yaml``, written nowhere else), the rest of our
settings every model of it has (``ours``), which ``config.json`` keys copy onto which of ours (``Key``s), which choose
a setting (``Choice``s), which values we cannot run (``Require``s), how rotary positions and the attention band are
written (a ``Rope``; ``Causal``, ``SlidingWindow``, ``QwenWindow`` or ``LayerTypes``), and which of the family's
tensors hold each of ours (``Tensor``s: names, ``{e}`` for each expert, and a ``Transform``: ``Transposed`` GPT-2
Conv1D, ``SplitQKV``, ``NeoxHeads``, ``PerExpert``, ``GateUpPairs``, ``ExpertsTransposed``, ``RotaryRows``); a
subclass's methods say what a table cannot (``GPT2``'s n_inner, ``DeepseekV3``'s query scale and its
multi-token-prediction layers). A table row that is not of its type is refused at import. Both directions read the
same family; an export is checked by reading its config back and comparing the two ``canonical`` configs (each
component says which of its settings matter: ``Settings.canonical`` / ``neutral`` in components/), so a model is
written only in a family that expresses every setting it has.

Everything stays local and safe: weights come from safetensors or from ``torch.load(weights_only=True)``, so a
``pytorch_model.bin`` whose unpickling would run code is refused. Before the model is built, every tensor's name and
shape (the safetensors headers, a memory-mapped ``.bin``) is checked against what ``config.json`` implies, on the meta
device. A FIFO, device or socket in place of one of the directory's files is refused before it is opened.
``transformers`` is never imported: its defaults for keys a ``config.json`` leaves out are in the tables.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import components

from .data.tokenizers import GPT2BPETokenizer, HFTokenizer, as_tokenizer_json
from .errors import ConfigError, first_line
from .files import atomic_write, special_file, write_safetensors
from .model import ModelConfig, build_model, check_floating, load_state, model_config

HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX)
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", TOKENIZER_JSON)
PRESETS = files("conf") / "model"

#: GPT-2's activation names that are the tanh-approximated GELU our ``gelu`` MLP computes
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True, kw_only=True)
class SameAs:
    """A default that is another config.json key's value (``num_key_value_heads`` defaults to the head count), or
    ``default`` when that key is absent too."""

    hf: str
    default: Any = None


@dataclass(frozen=True, kw_only=True)
class Key:
    """A config.json key copied onto one of ours."""

    hf: str
    ours: str
    #: when the key is absent (or null where null is not a value of ours): a value or a ``SameAs``
    default: Any
    #: config.json's value → ours, and back, where it is not copied as it is (Gemma 2's query_pre_attn_scalar)
    read: Callable[[Any], Any] | None = None
    write: Callable[[Any], Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Choice:
    """A config.json key whose values choose settings of ours; export writes the first value whose settings match."""

    hf: str
    default: Any
    #: config.json's value → our settings (flat keys) it stands for
    options: dict


@dataclass(frozen=True, kw_only=True)
class Require:
    """A config.json key with values we cannot run: the accepted ones (export writes the first), and what
    hydraformer lacks for the others."""

    hf: str
    default: Any
    accepted: tuple
    lacks: str


@dataclass(frozen=True, kw_only=True)
class Tensor:
    """The family's tensors that hold one of ours (``{e}``: each expert, in order), and how (None: as it is)."""

    names: tuple[str, ...]
    transform: Transform | None = None

    def __post_init__(self):
        if not (isinstance(self.names, tuple) and self.names and all(isinstance(n, str) for n in self.names)):
            raise TypeError(f"Tensor(names=...) takes a tuple of tensor names; got {self.names!r}")
        if self.transform is not None and not isinstance(self.transform, Transform):
            raise TypeError(f"Tensor(transform=...) takes a Transform or None; got {self.transform!r}")


@dataclass(frozen=True, kw_only=True)
class Rope:
    """How a family's config.json writes rotary positions: ``read`` as our embedding settings, ``write`` back."""

    #: rope_theta when config.json has none
    theta: float = 10000.0
    #: partial_rotary_factor when config.json has none
    fraction: float = 1.0
    #: whether the family rotates part of each head (a fraction below 1 is read, else refused)
    partial: bool = False
    #: older config.json keys of theta and fraction (GPT-NeoX's rotary_emb_base, rotary_pct), read when the
    #: newer ones are absent and written beside them
    legacy_theta: str | None = None
    legacy_fraction: str | None = None
    #: whether the family's rotary is read with rope_type yarn (transformers' YaRN, as model.embedding.scaling=yarn)
    yarn: bool = False

    def read(self, hf: dict, model_type: str, refuse) -> dict:
        """embedding.base / fraction / llama3 scaling from rope_parameters (transformers 5), or rope_scaling, rope_theta,
        partial_rotary_factor and GPT-NeoX's rotary_emb_base / rotary_pct (older config.json files)."""
        params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}  # transformers 5 prefers rope_scaling too
        if not isinstance(params, dict):
            refuse("rope_parameters", params, "a mapping (rope_type, rope_theta, ...)")
        if params and all(isinstance(v, dict) for v in params.values()):  # one set per layer type
            sets = list(params.values())
            if any(s != sets[0] for s in sets):
                refuse("rope_parameters", params, "one rotary setting for every layer (model.embedding=rotary has one)")
            params = sets[0]
        base = params.get("rope_theta", hf.get("rope_theta", _legacy(hf, self.legacy_theta, self.theta)))
        fraction = params.get("partial_rotary_factor",
                              hf.get("partial_rotary_factor", _legacy(hf, self.legacy_fraction, self.fraction)))
        kind = params.get("rope_type", params.get("type", "default"))
        out = {"embedding.base": float(base), "embedding.fraction": float(fraction)}
        if fraction != 1.0 and not self.partial:
            refuse("partial_rotary_factor", fraction, f"1.0: {model_type} in transformers rotates every channel")
        if kind == "llama3":
            out.update({"embedding.scale_factor": float(params["factor"]),
                        "embedding.low_freq_factor": float(params.get("low_freq_factor", 1.0)),
                        "embedding.high_freq_factor": float(params.get("high_freq_factor", 4.0)),
                        "embedding.original_context": int(params.get("original_max_position_embeddings", 8192))})
        elif kind == "yarn" and self.yarn:
            if params.get("attention_factor") is not None:
                refuse("attention_factor", params["attention_factor"], "absent: model.embedding=rotary derives YaRN's "
                       "cos/sin factor from factor, mscale and mscale_all_dim")
            out.update({"embedding.scaling": "yarn", "embedding.scale_factor": float(params["factor"]),
                        "embedding.original_context": int(params["original_max_position_embeddings"]),
                        "embedding.beta_fast": float(params.get("beta_fast") or 32.0),
                        "embedding.beta_slow": float(params.get("beta_slow") or 1.0),
                        "embedding.truncate": bool(params.get("truncate", True))})
            for key in ("mscale", "mscale_all_dim"):
                out[f"embedding.{key}"] = float(params[key]) if params.get(key) is not None else None
        elif kind != "default":
            kinds = "default, llama3 or yarn" if self.yarn else "default or llama3"
            refuse("rope_type", kind, f"{kinds} (model.embedding=rotary computes those frequencies; no "
                                      f"hydraformer component computes {kind!r} ones)")
        return out

    def write(self, flat: dict, hf: dict, miss) -> None:
        """rope_parameters (and transformers 4's rope_theta, rope_scaling, the legacy keys) for our rotary settings."""
        fraction = flat["embedding.fraction"]
        params = {"rope_type": "default", "rope_theta": flat["embedding.base"]}
        if self.partial:
            params["partial_rotary_factor"] = fraction
        elif fraction != 1.0:
            miss("embedding.fraction", fraction, 1.0)
        if flat["embedding.scale_factor"] is not None and flat["embedding.scaling"] == "yarn":
            if not self.yarn:
                miss("embedding.scaling", "yarn", "no YaRN rotary in hydraformer's reading of it")
            params.update({"rope_type": "yarn", "factor": flat["embedding.scale_factor"],
                           "original_max_position_embeddings": flat["embedding.original_context"],
                           "beta_fast": flat["embedding.beta_fast"], "beta_slow": flat["embedding.beta_slow"],
                           "truncate": flat["embedding.truncate"]})
            params.update({k: flat[f"embedding.{k}"] for k in ("mscale", "mscale_all_dim")
                           if flat[f"embedding.{k}"] is not None})
        elif flat["embedding.scale_factor"] is not None:
            params.update({"rope_type": "llama3", "factor": flat["embedding.scale_factor"],
                           "low_freq_factor": flat["embedding.low_freq_factor"],
                           "high_freq_factor": flat["embedding.high_freq_factor"],
                           "original_max_position_embeddings": flat["embedding.original_context"]})
            hf["rope_scaling"] = dict(params)  # transformers 4
        hf["rope_parameters"] = params
        hf["rope_theta"] = flat["embedding.base"]  # transformers 4
        if self.legacy_theta is not None:
            hf[self.legacy_theta] = params["rope_theta"]
        if self.legacy_fraction is not None:
            hf[self.legacy_fraction] = fraction


def _legacy(hf: dict, key: str | None, default):
    return hf[key] if key is not None and hf.get(key) is not None else default


# ---------------------------------------------------------------------------------------------------------------------
# how a family writes its attention band


class Causal:
    """No band: every layer attends to every earlier token (a family whose config.json has no window)."""

    def read(self, hf: dict, n_layers: int, refuse) -> dict:
        return {"mask.name": "causal"}

    def write(self, flat: dict, hf: dict, miss) -> None:
        if flat["mask.name"] != "causal":
            miss("mask.name", flat["mask.name"], "causal")


class SlidingWindow(Causal):
    """Mistral's ``sliding_window``: every layer banded, or (null) none."""

    def read(self, hf, n_layers, refuse):
        window = hf.get("sliding_window")
        return {"mask.name": "causal"} if window is None else {"mask.name": "sliding_window", "mask.window": int(window)}

    def write(self, flat, hf, miss):
        name = flat["mask.name"]
        if name not in ("causal", "sliding_window"):
            miss("mask.name", name, "causal or sliding_window")
        hf["sliding_window"] = flat["mask.window"] if name == "sliding_window" else None


class QwenWindow(Causal):
    """Qwen's ``use_sliding_window`` bands the layers from ``max_window_layers`` on: no component of ours does."""

    def read(self, hf, n_layers, refuse):
        types = hf.get("layer_types") or []
        if hf.get("use_sliding_window") or "sliding_attention" in types:
            refuse("use_sliding_window", True, "false: sliding windows from layer max_window_layers on have no "
                   "model.mask component (sliding_window bands every layer, alternating every other one)")
        return super().read(hf, n_layers, refuse)

    def write(self, flat, hf, miss):
        super().write(flat, hf, miss)
        hf.update({"use_sliding_window": False, "sliding_window": None})


@dataclass(frozen=True)
class LayerTypes(Causal):
    """Gemma 2's and gpt-oss's ``layer_types``: sliding_attention / full_attention per layer (default: banded layers
    alternating with full ones, the first banded), ``sliding_window`` wide (``window`` when absent)."""

    window: int = 4096

    def read(self, hf, n_layers, refuse):
        types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        window = int(_value(hf, "sliding_window", self.window))
        sliding = [t == "sliding_attention" for t in types]
        if not all(t in ("sliding_attention", "full_attention") for t in types) or len(types) != n_layers:
            refuse("layer_types", types, f"{n_layers} entries each sliding_attention or full_attention")
        if not any(sliding):
            return {"mask.name": "causal"}
        if all(sliding):
            return {"mask.name": "sliding_window", "mask.window": window}
        for band in ("even", "odd"):
            if sliding == [(i % 2 == 0) == (band == "even") for i in range(n_layers)]:
                return {"mask.name": "alternating", "mask.window": window, "mask.band_layers": band}
        refuse("layer_types", types, "sliding layers that alternate with full ones (model.mask=alternating, "
               "band_layers even or odd), or all of one kind")

    def write(self, flat, hf, miss):
        name, window, n = flat["mask.name"], flat["mask.window"], flat["n_layers"]
        if name == "causal":
            types = [False] * n
        elif name == "sliding_window":
            types = [True] * n
        elif name == "alternating":
            types = [(i % 2 == 0) == (flat["mask.band_layers"] == "even") for i in range(n)]
        else:
            miss("mask.name", name, "causal, sliding_window or alternating")
            return
        hf["layer_types"] = ["sliding_attention" if s else "full_attention" for s in types]
        hf["sliding_window"] = window if window is not None else self.window


def _components_of(preset: str) -> dict:
    """The components ``conf/model/<preset>.yaml`` chooses, as our flat keys (``mlp.name``): its parents' choices,
    then its own, then its ``override`` entries, as Hydra composes them; the mask aside (a family's band is its
    ``mask``). Plain YAML, so reading a Hugging Face directory imports no Hydra; tests/test_hf_families.py checks it
    against the composed preset."""
    entries = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())["defaults"]
    chosen: dict = {}
    for entry in entries:
        if isinstance(entry, str) and entry not in ("schema", "_self_"):
            chosen.update(_components_of(entry))
    groups = [(group, option) for entry in entries if isinstance(entry, dict) for group, option in entry.items()]
    for group, option in sorted(groups, key=lambda g: g[0].startswith("override ")):
        kind = group.removeprefix("override ")
        if kind in components.KINDS and kind != "mask":
            chosen[f"{kind}.name"] = option
    return chosen


def _typed(fam: str, field_name: str, rows, kind: type) -> None:
    """A table written as anything but ``kind`` (a plain tuple) is a programming error: refused at import."""
    bad = [row for row in (rows.values() if isinstance(rows, dict) else rows) if not isinstance(row, kind)]
    if bad or not isinstance(rows, dict if kind is Tensor else tuple):
        raise TypeError(f"family {fam}: {field_name} holds {kind.__name__}s (named fields), in a "
                        f"{'dict' if kind is Tensor else 'tuple'}; got {(bad or [rows])[0]!r}")


@dataclass(frozen=True, kw_only=True)
class Family:
    """How one Hugging Face family's ``config.json`` and tensors map onto our model config and state dict."""

    model_type: str
    architecture: str
    #: the preset that is a model of the family (``conf/model/<preset>.yaml``): every model of the family has its
    #: components; they are written there, not here
    preset: str
    #: the rest of our model config (flat keys, ``norm.layout``) that every model of the family has
    ours: dict = field(default_factory=dict)
    #: config.json keys copied onto ours
    keys: tuple[Key, ...]
    #: config.json keys that choose settings of ours
    choices: tuple[Choice, ...] = ()
    #: config.json values we cannot run
    requires: tuple[Require, ...] = ()
    #: the config.json key of d_head, or None: d_head is d_model // n_heads
    head_dim: str | None = None
    #: how config.json writes rotary positions; None: learned positions
    rope: Rope | None = None
    #: how config.json writes the attention band
    mask: Causal = Causal()
    #: the base model's prefix in tensor names (lm_head / embed_out have none); files without it load too
    prefix: str = "model."
    #: our tensor name ({i}: the block) → the family's
    tensors: dict[str, Tensor] = field(default_factory=dict)
    #: regexes of what files hold besides weights (causal-mask buffers, rotary tables)
    ignore: tuple = ()
    #: written as they are on export
    extra: dict = field(default_factory=dict)
    #: config.json key → another spelling of it, read when the key is absent (Qwen3-MoE's num_experts)
    aliases: dict = field(default_factory=dict)
    #: the dropout rates config.json has, written as 0 (hydraformer's exports are for inference)
    dropouts: tuple = ("attention_dropout",)

    def __post_init__(self):
        for name, kind in (("keys", Key), ("choices", Choice), ("requires", Require), ("tensors", Tensor)):
            _typed(self.model_type, name, getattr(self, name), kind)
        if not isinstance(self.mask, Causal) or not isinstance(self.rope, Rope | None):
            raise TypeError(f"family {self.model_type}: mask is a band class (Causal, ...), rope a Rope or None; got "
                            f"{self.mask!r}, {self.rope!r}")
        if not (PRESETS / f"{self.preset}.yaml").is_file():
            raise TypeError(f"family {self.model_type}: preset {self.preset!r} is not a file in {PRESETS}")
        if chosen := [key for key in self.ours if key.endswith(".name")]:
            raise TypeError(f"family {self.model_type}: {', '.join(chosen)} in ours; the components are the "
                            f"preset's ({self.preset}.yaml)")

    @cached_property
    def settings(self) -> dict:
        """Our model config (flat keys) that every model of the family has: the preset's components and ``ours``."""
        return {**_components_of(self.preset), **self.ours}

    def read_odd(self, hf: dict, flat: dict, refuse) -> None:
        """What the tables cannot say about reading this family's config.json (none by default)."""

    def write_odd(self, flat: dict, hf: dict, miss) -> None:
        """What the tables cannot say about writing this family's config.json (none by default)."""

    def ignored(self, name: str, n_layers: int) -> bool:
        """A tensor a file may hold besides the model's weights."""
        return any(re.search(p, name) for p in self.ignore)


# ---------------------------------------------------------------------------------------------------------------------
# tensor layouts


def _sizes(flat: dict) -> list[int]:
    d, kv = flat["d_head"], flat["attention.n_kv_heads"]
    return [flat["n_heads"] * d, kv * d, kv * d]


def _interleaved_to_halves(rows: int, device=None) -> torch.Tensor:
    """Rotary pairs (0, 1), (2, 3), ... (DeepSeek's) as ours (i, i + rows/2): the row order that maps theirs onto ours."""
    return torch.cat((torch.arange(0, rows, 2, device=device), torch.arange(1, rows, 2, device=device)))


def _rope_rows(latent: bool, flat: dict, device) -> torch.Tensor:
    """The rows of DeepSeek's q (or q_b) or kv_a projection in our order: each rotary part de-interleaved."""
    nope, rope = flat["attention.qk_nope_head_dim"], flat["attention.qk_rope_head_dim"] or flat["d_head"]
    turned = _interleaved_to_halves(rope, device)
    if latent:
        rank = flat["attention.kv_lora_rank"]
        return torch.cat((torch.arange(rank, device=device), rank + turned))
    head = torch.cat((torch.arange(nope, device=device), nope + turned))
    return torch.cat([h * (nope + rope) + head for h in range(flat["n_heads"])])


class Transform:
    """How one of our tensors is written as the family's tensors (``to_hf``) and read back (``from_hf``)."""

    def to_hf(self, t: torch.Tensor, flat: dict) -> list[torch.Tensor]:
        raise NotImplementedError

    def from_hf(self, ts: list[torch.Tensor], flat: dict) -> torch.Tensor:
        raise NotImplementedError


class Transposed(Transform):
    """GPT-2's Conv1D holds each matrix transposed."""

    def to_hf(self, t, flat):
        return [t.t()]

    def from_hf(self, ts, flat):
        return ts[0].t().contiguous()


class SplitQKV(Transform):
    """Our fused ``attention.qkv`` as q_proj, k_proj, v_proj."""

    def to_hf(self, t, flat):
        return list(t.split(_sizes(flat), dim=0))

    def from_hf(self, ts, flat):
        return torch.cat(ts, dim=0)


class NeoxHeads(Transform):
    """GPT-NeoX's query_key_value interleaves q, k, v per head: ours [3, H, d, ...] is theirs [H, 3, d, ...]."""

    def to_hf(self, t, flat):
        h, d = flat["n_heads"], flat["d_head"]
        return [t.reshape(3, h, d, *t.shape[1:]).transpose(0, 1).reshape(t.shape)]

    def from_hf(self, ts, flat):
        t, h, d = ts[0], flat["n_heads"], flat["d_head"]
        return t.reshape(h, 3, d, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


@dataclass(frozen=True)
class PerExpert(Transform):
    """Our stacked experts [E, rows, cols] as one matrix per expert (``{e}`` in the family's names); ``parts`` names
    per expert are concatenated along the rows (gate before up)."""

    parts: int = 1

    def to_hf(self, t, flat):
        return [c[e] for c in t.chunk(self.parts, dim=1) for e in range(t.shape[0])]

    def from_hf(self, ts, flat):
        n = len(ts) // self.parts
        return torch.stack([torch.cat(ts[e::n], dim=0) for e in range(n)])


class ExpertsTransposed(Transform):
    """gpt-oss holds each expert's matrix as [in, out]."""

    def to_hf(self, t, flat):
        return [t.transpose(1, 2)]

    def from_hf(self, ts, flat):
        return ts[0].transpose(1, 2).contiguous()


@dataclass(frozen=True)
class GateUpPairs(Transform):
    """gpt-oss interleaves gate and up channels (gate 0, up 0, gate 1, ...) where ours has all gates, then all ups;
    ``matrix``: an [E, in, 2h] matrix (transposed from ours), else an [E, 2h] bias."""

    matrix: bool = False

    def to_hf(self, t, flat):
        t = t.transpose(1, 2) if self.matrix else t
        gate, up = t.chunk(2, dim=-1)
        return [torch.stack((gate, up), dim=-1).reshape(t.shape)]

    def from_hf(self, ts, flat):
        t = torch.cat((ts[0][..., ::2], ts[0][..., 1::2]), dim=-1)
        return (t.transpose(1, 2) if self.matrix else t).contiguous()


@dataclass(frozen=True)
class RotaryRows(Transform):
    """DeepSeek's rotary channels pair (0, 1), (2, 3), ...; ours pair (i, i + rope/2): the rows of q (or q_b),
    ``latent=False``, or of kv_a, ``latent=True``, reordered."""

    latent: bool = False

    def to_hf(self, t, flat):
        return [t.index_select(0, torch.argsort(_rope_rows(self.latent, flat, t.device)))]

    def from_hf(self, ts, flat):
        return ts[0].index_select(0, _rope_rows(self.latent, flat, ts[0].device)).contiguous()



T, QKV, NEOX = Transposed(), SplitQKV(), NeoxHeads()


def _as_is(name: str) -> Tensor:
    return Tensor(names=(name,))


def _linear(ours: str, theirs: str, transform: Transform | None = None, bias: bool = True) -> dict[str, Tensor]:
    """A linear map's weight (through ``transform``) and bias (as it is)."""
    rows = {f"{ours}.weight": Tensor(names=(f"{theirs}.weight",), transform=transform)}
    if bias:
        rows[f"{ours}.bias"] = _as_is(f"{theirs}.bias")
    return rows


def _without(tensors: dict, part: str) -> dict:
    """A table less our tensors under ``part`` (``.mlp.``: a family with its own MLP tensors)."""
    return {ours: t for ours, t in tensors.items() if part not in ours}


_GPT2_TENSORS = {
    "token_embedding.weight": _as_is("transformer.wte.weight"),
    "positions.table.weight": _as_is("transformer.wpe.weight"),
    **_linear("final_norm", "transformer.ln_f"),
    "unembedding.weight": _as_is("lm_head.weight"),
    **_linear("blocks.{i}.norm_1", "transformer.h.{i}.ln_1"),
    **_linear("blocks.{i}.attention.qkv", "transformer.h.{i}.attn.c_attn", T),
    **_linear("blocks.{i}.attention.o", "transformer.h.{i}.attn.c_proj", T),
    **_linear("blocks.{i}.norm_2", "transformer.h.{i}.ln_2"),
    **_linear("blocks.{i}.mlp.fc", "transformer.h.{i}.mlp.c_fc", T),
    **_linear("blocks.{i}.mlp.proj", "transformer.h.{i}.mlp.c_proj", T),
}
_L = "model.layers.{i}"
_LLAMA_TENSORS = {
    "token_embedding.weight": _as_is("model.embed_tokens.weight"),
    "final_norm.weight": _as_is("model.norm.weight"),
    "unembedding.weight": _as_is("lm_head.weight"),
    "blocks.{i}.norm_1.weight": _as_is(f"{_L}.input_layernorm.weight"),
    "blocks.{i}.norm_2.weight": _as_is(f"{_L}.post_attention_layernorm.weight"),
    **{f"blocks.{{i}}.attention.qkv.{p}": Tensor(names=tuple(f"{_L}.self_attn.{x}_proj.{p}" for x in "qkv"),
                                                 transform=QKV) for p in ("weight", "bias")},
    **_linear("blocks.{i}.attention.o", f"{_L}.self_attn.o_proj"),
    "blocks.{i}.attention.q_norm.weight": _as_is(f"{_L}.self_attn.q_norm.weight"),
    "blocks.{i}.attention.k_norm.weight": _as_is(f"{_L}.self_attn.k_norm.weight"),
    **_linear("blocks.{i}.mlp.gate", f"{_L}.mlp.gate_proj"),
    **_linear("blocks.{i}.mlp.up", f"{_L}.mlp.up_proj"),
    **_linear("blocks.{i}.mlp.proj", f"{_L}.mlp.down_proj"),
}
_GEMMA2_TENSORS = {
    **_LLAMA_TENSORS,
    "blocks.{i}.post_norm_1.weight": _as_is(f"{_L}.post_attention_layernorm.weight"),
    "blocks.{i}.norm_2.weight": _as_is(f"{_L}.pre_feedforward_layernorm.weight"),
    "blocks.{i}.post_norm_2.weight": _as_is(f"{_L}.post_feedforward_layernorm.weight"),
}
_N = "gpt_neox.layers.{i}"
_NEOX_TENSORS = {
    "token_embedding.weight": _as_is("gpt_neox.embed_in.weight"),
    **_linear("final_norm", "gpt_neox.final_layer_norm"),
    "unembedding.weight": _as_is("embed_out.weight"),
    **_linear("blocks.{i}.norm_1", f"{_N}.input_layernorm"),
    **_linear("blocks.{i}.norm_2", f"{_N}.post_attention_layernorm"),
    **{f"blocks.{{i}}.attention.qkv.{p}": Tensor(names=(f"{_N}.attention.query_key_value.{p}",), transform=NEOX)
       for p in ("weight", "bias")},
    **_linear("blocks.{i}.attention.o", f"{_N}.attention.dense"),
    **_linear("blocks.{i}.mlp.fc", f"{_N}.mlp.dense_h_to_4h"),
    **_linear("blocks.{i}.mlp.proj", f"{_N}.mlp.dense_4h_to_h"),
}
_ROTARY_BUFFERS = (r"\.rotary_emb\.inv_freq$",)


def _experts(router: str, experts: str, gate: str, up: str, down: str) -> dict[str, Tensor]:
    """A router and one gate/up/down matrix per expert (``{e}``; transformers fuses them in memory only), stacked
    as ours."""
    return {"blocks.{i}.mlp.router.weight": _as_is(f"{router}.weight"),
            "blocks.{i}.mlp.w_in": Tensor(names=(f"{experts}.{{e}}.{gate}.weight", f"{experts}.{{e}}.{up}.weight"),
                                          transform=PerExpert(parts=2)),
            "blocks.{i}.mlp.w_out": Tensor(names=(f"{experts}.{{e}}.{down}.weight",), transform=PerExpert())}


_EXPERT_TENSORS = _experts(f"{_L}.mlp.gate", f"{_L}.mlp.experts", "gate_proj", "up_proj", "down_proj")
_MIXTRAL_TENSORS = {
    **_without(_LLAMA_TENSORS, ".mlp."),
    **_experts(f"{_L}.block_sparse_moe.gate", f"{_L}.block_sparse_moe.experts", "w1", "w3", "w2"),
}
_A = f"{_L}.self_attn"
_DEEPSEEK_TENSORS = {
    **_without(_LLAMA_TENSORS, ".attention."),  # the first dense layers' gated MLPs
    **_EXPERT_TENSORS,
    "blocks.{i}.mlp.selection_bias": _as_is(f"{_L}.mlp.gate.e_score_correction_bias"),
    **{f"blocks.{{i}}.mlp.shared.{ours}.weight": _as_is(f"{_L}.mlp.shared_experts.{theirs}.weight")
       for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj"))},
    "blocks.{i}.attention.q.weight": Tensor(names=(f"{_A}.q_proj.weight",), transform=RotaryRows()),
    "blocks.{i}.attention.q_a.weight": _as_is(f"{_A}.q_a_proj.weight"),
    "blocks.{i}.attention.q_norm.weight": _as_is(f"{_A}.q_a_layernorm.weight"),
    "blocks.{i}.attention.q_b.weight": Tensor(names=(f"{_A}.q_b_proj.weight",), transform=RotaryRows()),
    "blocks.{i}.attention.kv_a.weight": Tensor(names=(f"{_A}.kv_a_proj_with_mqa.weight",),
                                               transform=RotaryRows(latent=True)),
    "blocks.{i}.attention.kv_norm.weight": _as_is(f"{_A}.kv_a_layernorm.weight"),
    "blocks.{i}.attention.kv_b.weight": _as_is(f"{_A}.kv_b_proj.weight"),
    "blocks.{i}.attention.o.weight": _as_is(f"{_A}.o_proj.weight"),
}
_M = f"{_L}.mlp"
_GPT_OSS_TENSORS = {
    **_without(_LLAMA_TENSORS, ".mlp."),
    "blocks.{i}.attention.sinks": _as_is(f"{_A}.sinks"),
    **_linear("blocks.{i}.mlp.router", f"{_M}.router"),
    "blocks.{i}.mlp.w_in": Tensor(names=(f"{_M}.experts.gate_up_proj",), transform=GateUpPairs(matrix=True)),
    "blocks.{i}.mlp.in_bias": Tensor(names=(f"{_M}.experts.gate_up_proj_bias",), transform=GateUpPairs()),
    "blocks.{i}.mlp.w_out": Tensor(names=(f"{_M}.experts.down_proj",), transform=ExpertsTransposed()),
    "blocks.{i}.mlp.out_bias": _as_is(f"{_M}.experts.down_proj_bias"),
}

# the keys every Llama-like config.json has (defaults: LlamaConfig's)
_LLAMA_KEYS = (
    Key(hf="hidden_size", ours="d_model", default=4096),
    Key(hf="num_hidden_layers", ours="n_layers", default=32),
    Key(hf="num_attention_heads", ours="n_heads", default=32),
    Key(hf="num_key_value_heads", ours="attention.n_kv_heads", default=SameAs(hf="num_attention_heads")),
    Key(hf="vocab_size", ours="vocab_size", default=32000),
    Key(hf="max_position_embeddings", ours="context_length", default=2048),
    Key(hf="intermediate_size", ours="mlp.hidden", default=11008),
    Key(hf="rms_norm_eps", ours="norm.eps", default=1e-6),
    Key(hf="tie_word_embeddings", ours="tie_embeddings", default=False),
    Key(hf="initializer_range", ours="init_std", default=0.02),
)


def _keys(*keys: Key, without: tuple = (), **defaults) -> tuple[Key, ...]:
    """_LLAMA_KEYS with other defaults (by config.json key: ``vocab_size=151936``), less those ``without`` names, then
    ``keys``: each in the place of the Llama key of the same setting of ours (Qwen3-MoE's moe_intermediate_size for
    intermediate_size), or added."""
    if unknown := (defaults.keys() | set(without)) - {k.hf for k in _LLAMA_KEYS}:
        raise TypeError(f"not keys of a Llama config.json: {sorted(unknown)}")
    instead = {k.ours: k for k in keys}
    llama = tuple(instead.pop(k.ours, replace(k, default=defaults.get(k.hf, k.default)))
                  for k in _LLAMA_KEYS if k.hf not in without)
    return llama + tuple(instead.values())


_SILU = (Choice(hf="hidden_act", default="silu", options={"silu": {}}),)
_ROPE = Rope()
_NO_ATTENTION_BIAS = ("{}'s attention_bias puts biases on q, k, v and o with none on the MLP: model.attention.qkv_bias "
                      "covers q, k, v only, model.bias every layer")
_GEMMA_ATTENTION_BIAS = "{}'s attention_bias puts biases on q, k, v and o with none on the MLP: model.bias sets every layer's"


@dataclass(frozen=True, kw_only=True)
class GPT2(Family):
    """GPT-2: n_inner null means 4 d_model, and n_ctx repeats n_positions."""

    dropouts: tuple = ("resid_pdrop", "embd_pdrop", "attn_pdrop")

    def write_odd(self, flat: dict, hf: dict, miss) -> None:
        if hf["n_inner"] is not None and hf["n_inner"] == 4 * hf["n_embd"]:
            hf["n_inner"] = None
        hf["n_ctx"] = hf["n_positions"]


# a mixture of experts with none of the options some families add
_MOE_PLAIN = {"mlp.scoring": "softmax", "mlp.routed_scale": 1.0, "mlp.router_bias": False, "mlp.selection_bias": False,
              "mlp.n_groups": 1, "mlp.shared_experts": 0, "mlp.first_dense": 0, "mlp.activation": "silu",
              "mlp.expert_bias": False}


def _yarn_mscale(factor: float, m: float) -> float:
    return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0


@dataclass(frozen=True, kw_only=True)
class DeepseekV3(Family):
    """DeepSeek-V3: d_head is the rotary width (qk_rope_head_dim), the scores' scale follows from the head widths and
    YaRN's mscale_all_dim, and a file's multi-token-prediction layers (model.layers.N and on) are left out."""

    def read_odd(self, hf: dict, flat: dict, refuse) -> None:
        flat["d_head"] = rope = int(_value(hf, "qk_rope_head_dim", 64))
        flat["attention.qk_rope_head_dim"] = rope
        scale = (flat["attention.qk_nope_head_dim"] + rope) ** -0.5
        if flat.get("embedding.scaling") == "yarn" and flat.get("embedding.mscale_all_dim"):
            scale *= _yarn_mscale(flat["embedding.scale_factor"], flat["embedding.mscale_all_dim"]) ** 2
        flat["attention.query_scale"] = scale

    def write_odd(self, flat: dict, hf: dict, miss) -> None:
        hf["num_key_value_heads"] = flat["n_heads"]  # latent attention: every head its own keys and values
        if hf["intermediate_size"] is None:  # no dense layer reads it, but transformers wants a width
            hf["intermediate_size"] = flat["mlp.hidden"]

    def ignored(self, name: str, n_layers: int) -> bool:
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        return super().ignored(name, n_layers) or (layer is not None and int(layer[1]) >= n_layers)


def _tidy(x: float):
    """An integer when ``x`` is one up to rounding (query_pre_attn_scalar written back as 256, not 255.99999999999997)."""
    return round(x) if abs(x - round(x)) < 1e-6 * max(1.0, abs(x)) else x


FAMILIES = {f.model_type: f for f in (
    GPT2(
        model_type="gpt2", architecture="GPT2LMHeadModel", preset="gpt2_small",
        ours={"mlp.approximate": "tanh", "norm.layout": "pre", "bias": True},
        keys=(Key(hf="n_embd", ours="d_model", default=768),
              Key(hf="n_layer", ours="n_layers", default=12),
              Key(hf="n_head", ours="n_heads", default=12),
              Key(hf="vocab_size", ours="vocab_size", default=50257),
              Key(hf="n_positions", ours="context_length", default=SameAs(hf="n_ctx", default=1024)),
              Key(hf="n_inner", ours="mlp.hidden", default=None),
              Key(hf="layer_norm_epsilon", ours="norm.eps", default=1e-5),
              Key(hf="tie_word_embeddings", ours="tie_embeddings", default=True),
              Key(hf="initializer_range", ours="init_std", default=0.02)),
        choices=(Choice(hf="activation_function", default="gelu_new", options={g: {} for g in TANH_GELUS}),),
        requires=(Require(hf="scale_attn_weights", default=True, accepted=(True,),
                          lacks="scores divided by sqrt(d_head) is the only scale of model.attention "
                                "(scale_attn_weights=false leaves them unscaled)"),
                  Require(hf="scale_attn_by_inverse_layer_idx", default=False, accepted=(False,),
                          lacks="no model.attention option divides layer i's scores by i + 1"),
                  Require(hf="add_cross_attention", default=False, accepted=(False,),
                          lacks="hydraformer builds decoder-only models: no cross-attention component")),
        prefix="transformer.", tensors=_GPT2_TENSORS, ignore=(r"\.attn\.(bias|masked_bias)$",),
    ),
    Family(
        model_type="llama", architecture="LlamaForCausalLM", preset="llama2_7b", ours={"norm.layout": "pre"},
        head_dim="head_dim", rope=_ROPE,
        keys=(*_LLAMA_KEYS, Key(hf="attention_bias", ours="bias", default=False),
              Key(hf="mlp_bias", ours="bias", default=False)),
        choices=_SILU, tensors=_LLAMA_TENSORS, ignore=_ROTARY_BUFFERS, extra={"pretraining_tp": 1},
    ),
    Family(
        model_type="mistral", architecture="MistralForCausalLM", preset="mistral_7b",
        ours={"norm.layout": "pre", "bias": False}, head_dim="head_dim", rope=_ROPE, mask=SlidingWindow(),
        keys=_keys(intermediate_size=14336, max_position_embeddings=131072, num_key_value_heads=8),
        choices=_SILU, tensors=_LLAMA_TENSORS, ignore=_ROTARY_BUFFERS,
    ),
    Family(
        model_type="qwen2", architecture="Qwen2ForCausalLM", preset="qwen2_7b",
        ours={"norm.layout": "pre", "bias": False, "attention.qkv_bias": True}, rope=_ROPE, mask=QwenWindow(),
        head_dim="head_dim",  # not a Qwen2Config field, but Qwen2's attention reads it when it is there
        keys=_keys(vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768),
        choices=_SILU, tensors=_LLAMA_TENSORS, ignore=_ROTARY_BUFFERS,
    ),
    Family(
        model_type="qwen3", architecture="Qwen3ForCausalLM", preset="qwen3_8b",
        ours={"norm.layout": "pre", "attention.qk_norm": True, "bias": False},
        head_dim="head_dim", rope=_ROPE, mask=QwenWindow(),
        keys=_keys(Key(hf="rms_norm_eps", ours="attention.qk_norm_eps", default=1e-6),
                   vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768),
        requires=(Require(hf="attention_bias", default=False, accepted=(False,),
                          lacks=_NO_ATTENTION_BIAS.format("Qwen3")),),
        choices=_SILU, tensors=_LLAMA_TENSORS, ignore=_ROTARY_BUFFERS, extra={"attention_bias": False},
    ),
    Family(
        model_type="gpt_neox", architecture="GPTNeoXForCausalLM", preset="pythia_160m", ours={"bias": True},
        keys=(Key(hf="hidden_size", ours="d_model", default=6144),
              Key(hf="num_hidden_layers", ours="n_layers", default=44),
              Key(hf="num_attention_heads", ours="n_heads", default=64),
              Key(hf="vocab_size", ours="vocab_size", default=50432),
              Key(hf="max_position_embeddings", ours="context_length", default=2048),
              Key(hf="intermediate_size", ours="mlp.hidden", default=24576),
              Key(hf="layer_norm_eps", ours="norm.eps", default=1e-5),
              Key(hf="tie_word_embeddings", ours="tie_embeddings", default=False),
              Key(hf="initializer_range", ours="init_std", default=0.02)),
        choices=(Choice(hf="hidden_act", default="gelu",
                        options={"gelu": {"mlp.approximate": "none"}, "gelu_new": {"mlp.approximate": "tanh"},
                                 "gelu_pytorch_tanh": {"mlp.approximate": "tanh"}}),
                 Choice(hf="use_parallel_residual", default=True,
                        options={True: {"norm.layout": "parallel"}, False: {"norm.layout": "pre"}})),
        requires=(Require(hf="attention_bias", default=True, accepted=(True,),
                          lacks="GPT-NeoX's MLP and norms always have biases: attention without them has no "
                                "model.bias setting"),),
        rope=Rope(fraction=0.25, partial=True, legacy_theta="rotary_emb_base", legacy_fraction="rotary_pct"),
        prefix="gpt_neox.", tensors=_NEOX_TENSORS,
        ignore=(r"\.attention\.(bias|masked_bias)$", *_ROTARY_BUFFERS),
    ),
    Family(
        model_type="gemma", architecture="GemmaForCausalLM", preset="gemma_2b",
        ours={"norm.layout": "pre", "norm.unit_offset": True, "scale_embeddings": True, "bias": False},
        head_dim="head_dim", rope=_ROPE,
        keys=_keys(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                   num_attention_heads=16, max_position_embeddings=8192, tie_word_embeddings=True),
        # transformers reads Gemma's legacy "gelu" as the tanh approximation too
        choices=(Choice(hf="hidden_act", default="gelu_pytorch_tanh", options={"gelu_pytorch_tanh": {}, "gelu": {}}),),
        requires=(Require(hf="attention_bias", default=False, accepted=(False,),
                          lacks=_GEMMA_ATTENTION_BIAS.format("Gemma")),),
        tensors=_LLAMA_TENSORS, ignore=_ROTARY_BUFFERS,
    ),
    Family(
        model_type="gemma2", architecture="Gemma2ForCausalLM", preset="gemma2_2b",
        ours={"norm.unit_offset": True, "norm.layout": "sandwich", "scale_embeddings": True, "bias": False},
        head_dim="head_dim", rope=_ROPE, mask=LayerTypes(),
        keys=_keys(Key(hf="attn_logit_softcapping", ours="attention.softcap", default=50.0),
                   Key(hf="final_logit_softcapping", ours="final_softcap", default=30.0),
                   Key(hf="query_pre_attn_scalar", ours="attention.query_scale", default=256,
                       read=lambda q: float(q) ** -0.5, write=lambda s: _tidy(s ** -2)),
                   vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=8192,
                   tie_word_embeddings=True),
        choices=(Choice(hf="hidden_activation", default="gelu_pytorch_tanh", options={"gelu_pytorch_tanh": {}}),),
        requires=(Require(hf="attention_bias", default=False, accepted=(False,),
                          lacks=_GEMMA_ATTENTION_BIAS.format("Gemma 2")),
                  Require(hf="use_bidirectional_attention", default=None, accepted=(None, False),
                          lacks="bidirectional attention with sliding windows")),
        tensors=_GEMMA2_TENSORS, ignore=_ROTARY_BUFFERS,
    ),
    Family(
        model_type="mixtral", architecture="MixtralForCausalLM", preset="mixtral_8x7b",
        ours={"norm.layout": "pre", **_MOE_PLAIN, "bias": False, "mlp.normalize": True},
        head_dim="head_dim", rope=Rope(theta=1e6), mask=SlidingWindow(),
        keys=_keys(Key(hf="num_local_experts", ours="mlp.n_experts", default=8),
                   Key(hf="num_experts_per_tok", ours="mlp.top_k", default=2),
                   intermediate_size=14336, max_position_embeddings=131072, num_key_value_heads=8),
        aliases={"num_local_experts": "num_experts"},
        choices=_SILU, tensors=_MIXTRAL_TENSORS, ignore=_ROTARY_BUFFERS,
    ),
    Family(
        model_type="qwen3_moe", architecture="Qwen3MoeForCausalLM", preset="qwen3_30b_a3b",
        ours={"norm.layout": "pre", **_MOE_PLAIN, "attention.qk_norm": True, "bias": False},
        head_dim="head_dim", rope=_ROPE, mask=QwenWindow(),
        keys=_keys(Key(hf="moe_intermediate_size", ours="mlp.hidden", default=768),
                   Key(hf="rms_norm_eps", ours="attention.qk_norm_eps", default=1e-6),
                   Key(hf="num_experts", ours="mlp.n_experts", default=128),
                   Key(hf="num_experts_per_tok", ours="mlp.top_k", default=8),
                   Key(hf="norm_topk_prob", ours="mlp.normalize", default=False),
                   vocab_size=151936, max_position_embeddings=32768),
        aliases={"num_experts": "num_local_experts"},
        requires=(Require(hf="attention_bias", default=False, accepted=(False,),
                          lacks=_NO_ATTENTION_BIAS.format("Qwen3")),
                  Require(hf="decoder_sparse_step", default=1, accepted=(1,),
                          lacks="model.mlp=moe puts experts in every layer (first_dense aside)"),
                  Require(hf="mlp_only_layers", default=[], accepted=([],),
                          lacks="model.mlp=moe has dense layers only first (first_dense)")),
        choices=_SILU, tensors={**_without(_LLAMA_TENSORS, ".mlp."), **_EXPERT_TENSORS}, ignore=_ROTARY_BUFFERS,
    ),
    DeepseekV3(
        model_type="deepseek_v3", architecture="DeepseekV3ForCausalLM", preset="deepseek_v3",
        ours={"norm.layout": "pre", "mlp.scoring": "sigmoid", "mlp.selection_bias": True, "mlp.router_bias": False,
              "mlp.activation": "silu", "mlp.expert_bias": False, "bias": False},
        head_dim="qk_rope_head_dim", rope=Rope(yarn=True),
        keys=_keys(Key(hf="q_lora_rank", ours="attention.q_lora_rank", default=1536),
                   Key(hf="kv_lora_rank", ours="attention.kv_lora_rank", default=512),
                   Key(hf="qk_nope_head_dim", ours="attention.qk_nope_head_dim", default=128),
                   Key(hf="v_head_dim", ours="attention.v_head_dim", default=128),
                   Key(hf="moe_intermediate_size", ours="mlp.hidden", default=2048),
                   Key(hf="intermediate_size", ours="mlp.dense_hidden", default=18432),
                   Key(hf="n_routed_experts", ours="mlp.n_experts", default=256),
                   Key(hf="num_experts_per_tok", ours="mlp.top_k", default=8),
                   Key(hf="n_shared_experts", ours="mlp.shared_experts", default=1),
                   Key(hf="routed_scaling_factor", ours="mlp.routed_scale", default=2.5),
                   Key(hf="n_group", ours="mlp.n_groups", default=8),
                   Key(hf="topk_group", ours="mlp.top_groups", default=4),
                   Key(hf="first_k_dense_replace", ours="mlp.first_dense", default=3),
                   Key(hf="norm_topk_prob", ours="mlp.normalize", default=True),
                   without=("num_key_value_heads",),  # latent attention: every head its own keys and values
                   hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, vocab_size=129280,
                   max_position_embeddings=4096),
        requires=(Require(hf="attention_bias", default=False, accepted=(False,),
                          lacks="biases in latent attention's projections"),
                  Require(hf="rope_interleave", default=True, accepted=(True,),
                          lacks="DeepSeek's rotary over channel halves (rope_interleave=false); the rotary pairs of "
                                "adjacent channels are what is read"),
                  Require(hf="scoring_func", default="sigmoid", accepted=("sigmoid",),
                          lacks="DeepSeek-V3's router scores by sigmoid"),
                  Require(hf="topk_method", default="noaux_tc", accepted=("noaux_tc",),
                          lacks="DeepSeek-V3's routing (noaux_tc) only")),
        choices=_SILU, tensors=_DEEPSEEK_TENSORS, ignore=_ROTARY_BUFFERS,
        extra={"num_nextn_predict_layers": 0},
    ),
    Family(
        model_type="gpt_oss", architecture="GptOssForCausalLM", preset="gpt_oss_20b",
        ours={**_MOE_PLAIN, "norm.layout": "pre", "bias": True, "mlp.normalize": True, "attention.sinks": True,
              "mlp.router_bias": True, "mlp.expert_bias": True, "mlp.activation": "clamped"},
        head_dim="head_dim", rope=Rope(theta=150000.0, yarn=True), mask=LayerTypes(window=128),
        keys=_keys(Key(hf="num_local_experts", ours="mlp.n_experts", default=128),
                   Key(hf="num_experts_per_tok", ours="mlp.top_k", default=4),
                   Key(hf="swiglu_limit", ours="mlp.limit", default=7.0),
                   Key(hf="swiglu_alpha", ours="mlp.alpha", default=1.702),
                   vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=36,
                   num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5),
        aliases={"num_local_experts": "num_experts"},
        requires=(Require(hf="attention_bias", default=True, accepted=(True,),
                          lacks="gpt-oss's MLP experts and router always have biases: attention without them has "
                                "no model.bias setting"),),
        choices=_SILU, tensors=_GPT_OSS_TENSORS, ignore=_ROTARY_BUFFERS,
    ),
)}
SUPPORTED = ", ".join(FAMILIES)


# ---------------------------------------------------------------------------------------------------------------------
# config.json → our model config


class _Refused(Exception):
    """One thing a family cannot express: (our key or config.json key, what it is here, what the family has)."""


#: our keys whose null in config.json means "none" (no cap, no window, the default width), not "the default value"
NULLABLE = ("mlp.hidden", "d_head", "attention.softcap", "final_softcap", "mask.window", "attention.q_lora_rank")


def _value(hf: dict, key: str, default, ours: str = "", read: dict | None = None):
    """config.json's value of ``key``: its default when it is absent, or null where null is not a value of ours;
    a ``SameAs`` default is the other key's value (``read``: the keys read so far, their defaults applied)."""
    value = hf[key] if key in hf else default
    if value is None and ours not in NULLABLE:
        value = default
    if isinstance(value, SameAs):
        value = hf[value.hf] if hf.get(value.hf) is not None else (read or {}).get(value.hf, value.default)
    return value


def family_of(hf_cfg: dict) -> Family | None:
    """The family a config.json describes (its model_type, else its architectures), or None."""
    fam = FAMILIES.get(hf_cfg.get("model_type"))
    if fam is None:
        archs = hf_cfg.get("architectures") or []
        fam = next((f for f in FAMILIES.values() if isinstance(archs, list) and f.architecture in archs), None)
    return fam


def hf_to_flat(fam: Family, hf: dict, refuse=None) -> dict:
    """A config.json of ``fam`` as our model config, flat (``attention.n_kv_heads``); ``refuse(key, value, accepted)``
    raises for what the family's model has and ours cannot compute."""
    refuse = refuse or _refuse_plain
    if hf.get("quantization_config") is not None:
        method = hf["quantization_config"].get("quant_method") if isinstance(hf["quantization_config"], dict) else None
        refuse("quantization_config", method or hf["quantization_config"], "absent: hydraformer reads unquantized "
               "floating-point weights (dequantize them first)")
    hf = {**{k: hf[alt] for k, alt in fam.aliases.items() if k not in hf and alt in hf}, **hf}
    flat = dict(fam.settings)
    seen, read = {}, {}
    for key in fam.keys:
        hf_key, ours = key.hf, key.ours
        value = read[hf_key] = _value(hf, hf_key, key.default, ours, read)
        if key.read is not None and value is not None:
            value = key.read(value)
        if ours in seen and seen[ours][1] != value:
            other = seen[ours][0]
            refuse(hf_key, value, f"the value of {other} ({seen[ours][1]!r}): both are model.{ours} in hydraformer, "
                   "which has no setting for one without the other")
        seen[ours] = (hf_key, value)
        flat[ours] = value
    for choice in fam.choices:
        hf_key, options = choice.hf, choice.options
        value = _value(hf, hf_key, choice.default)
        if not isinstance(value, (str, bool, int, float, type(None))) or value not in options:
            refuse(hf_key, value, f"one of {', '.join(repr(o) for o in options)} (no hydraformer component computes "
                   f"{value!r} in a {fam.model_type})")
        flat.update(options[value])
    for need in fam.requires:
        value = hf.get(need.hf, need.default)
        if value not in need.accepted:
            refuse(need.hf, value, f"{' or '.join(repr(a) for a in need.accepted)}: {need.lacks}")
    if fam.head_dim is not None and hf.get(fam.head_dim) is not None:
        flat["d_head"] = int(hf[fam.head_dim])
    else:
        flat["d_head"] = None
    if fam.rope is not None:
        flat.update(fam.rope.read(hf, fam.model_type, refuse))
    flat.update(fam.mask.read(hf, flat["n_layers"], refuse))
    fam.read_odd(hf, flat, refuse)
    flat["dropout"] = 0.0
    return flat


def _refuse_plain(key, value, accepted):
    raise _Refused(key, value, accepted)


def neutral() -> dict:
    """Every registered component's options with the value that changes nothing (``attention.qk_norm``: False), as
    our flat keys: what a model whose component lacks an option computes, for comparing it with one that has it."""
    out: dict = {}
    for kind in components.KINDS:
        for name in components.names(kind):
            for option, value in components.get(kind, name).component_settings.neutral().items():
                key = f"{kind}.{option}"
                if out.get(key, value) != value:
                    raise TypeError(f"{kind} components disagree on {option}'s neutral value: {out[key]!r}, {value!r}")
                out[key] = value
    return out


def nest(flat: dict) -> dict:
    """A flat model config as the nested dict ``build_model`` takes; options at their neutral value are left out, so
    a model that needs none of a component's newer options builds with any version of it."""
    neutral_values = neutral()
    out: dict = {}
    for key, value in flat.items():
        if key in neutral_values and neutral_values[key] == value and type(neutral_values[key]) is type(value):
            continue
        if key in ("scale_embeddings", "final_softcap") and getattr(ModelConfig, key) == value:
            continue
        if key == "attention.n_kv_heads" and flat.get("attention.name") == "multi_head":
            continue
        kind, _, option = key.partition(".")
        if option:
            out.setdefault(kind, {})[option] = value
        else:
            out[key] = value
    return out


def canonical(model_cfg) -> dict:
    """Every setting of a model config, flat, spelled one way per computation (each component's ``canonical``:
    multi_head = grouped_query with n_kv_heads = n_heads, qkv_bias null = bias, ...) and every option of the other
    components at its ``neutral`` value: equal dicts, equal models."""
    mc = model_config(model_cfg)
    flat = {k: v for k, v in vars(mc).items() if k not in components.KINDS}
    flat["d_head"] = mc.head_dim
    for kind in components.KINDS:
        flat.update({f"{kind}.{key}": value for key, value in getattr(mc, kind).canonical(mc).items()})
    flat = {**neutral(), **flat}
    return {k: v for k, v in flat.items() if not k.endswith("dropout")}


def _differences(a: dict, b: dict) -> list[str]:
    def same(x, y):
        if isinstance(x, float) or isinstance(y, float):
            return x is not None and y is not None and not isinstance(x, bool) and not isinstance(y, bool) \
                and math.isclose(x, y, rel_tol=1e-9)
        return x == y
    return [k for k in sorted(a.keys() | b.keys()) if not same(a.get(k), b.get(k))]


# ---------------------------------------------------------------------------------------------------------------------
# our model config → config.json


def flat_to_hf(fam: Family, flat: dict) -> tuple[dict, list[str]]:
    """``fam``'s config.json for a canonical model config, and what ``fam`` cannot express of it (then the
    config is not to be used)."""
    problems: list[str] = []

    def miss(key, here, there):
        problems.append(f"model.{key}={here!r} (a {fam.model_type} has {there})")

    hf = {"architectures": [fam.architecture], "model_type": fam.model_type}
    for ours, value in fam.settings.items():
        want = "grouped_query" if (ours, value) == ("attention.name", "multi_head") else value
        if flat.get(ours) != want:
            miss(ours, flat.get(ours), repr(value))
    if fam.settings.get("attention.name") == "multi_head" and flat.get("attention.n_kv_heads") != flat["n_heads"]:
        miss("attention.n_kv_heads", flat.get("attention.n_kv_heads"), "one key/value head per query head")
    for key in fam.keys:
        hf_key, ours = key.hf, key.ours
        value = flat.get(ours)
        if key.write is not None and value is not None:
            value = key.write(value)
        if hf_key in hf and hf[hf_key] != value:
            miss(ours, value, f"one {hf_key}, here also {hf[hf_key]!r}")
        hf[hf_key] = value
    for choice in fam.choices:
        hf_key, options = choice.hf, choice.options
        chosen = next((v for v, s in options.items() if all(flat.get(k) == x for k, x in s.items())), None)
        if chosen is None:
            ours = sorted({k for s in options.values() for k in s})
            miss("/".join(ours), [flat.get(k) for k in ours], f"{hf_key} one of {', '.join(map(repr, options))}: "
                 + ", ".join(f"{v!r} = {s}" for v, s in options.items()))
        hf[hf_key] = chosen
    for need in fam.requires:
        hf[need.hf] = need.accepted[0]
    if fam.head_dim is not None:
        hf[fam.head_dim] = flat["d_head"]
    elif flat["d_head"] * flat["n_heads"] != flat["d_model"]:
        miss("d_head", flat["d_head"], f"d_head = d_model / n_heads = {flat['d_model'] / flat['n_heads']:g}")
    if fam.rope is not None:
        fam.rope.write(flat, hf, miss)
    fam.mask.write(flat, hf, miss)
    fam.write_odd(flat, hf, miss)
    hf.update(fam.extra)
    hf.update(dict.fromkeys(fam.dropouts, 0.0))
    if not problems:  # read back: what the family's config says must be this model, setting for setting
        try:
            again = canonical(nest(hf_to_flat(fam, hf)))
        except (_Refused, ConfigError) as err:
            problems.append(f"its config reads back refused: {err}")
        else:
            problems += [f"model.{k}={flat.get(k)!r} (a {fam.model_type} has {again.get(k)!r})"
                         for k in _differences(flat, again)]
    return hf, problems


def hf_config_for(model_cfg, key: str = "checkpoint", path="") -> tuple[Family, dict]:
    """The first family whose table expresses ``model_cfg`` exactly, and its config.json; ConfigError naming, for
    each family, the settings it lacks."""
    flat = canonical(model_cfg)
    why = {}
    for fam in FAMILIES.values():
        hf, problems = flat_to_hf(fam, flat)
        if not problems:
            return fam, hf
        why[fam.model_type] = problems
    shown = "; ".join(f"{name}: {', '.join(p[:2])}" for name, p in why.items())
    raise ConfigError(key, str(path), f"a model that one of the Hugging Face families ({SUPPORTED}) expresses; none "
                      f"expresses this one, each lacking a component or option: {shown}")


# ---------------------------------------------------------------------------------------------------------------------
# tensors


def _to_hf_tensors(transform: Transform | None, t: torch.Tensor, flat: dict) -> list[torch.Tensor]:
    return [t] if transform is None else transform.to_hf(t, flat)


def _from_hf_tensors(transform: Transform | None, ts: list[torch.Tensor], flat: dict) -> torch.Tensor:
    return ts[0] if transform is None else transform.from_hf(ts, flat)


def _rows(fam: Family, flat: dict):
    """(our name, the family's names, transform) for every tensor the table knows, blocks and experts unrolled."""
    experts = range(flat.get("mlp.n_experts") or 0)
    for ours, tensor in fam.tensors.items():
        for i in range(flat["n_layers"]) if "{i}" in ours else [0]:
            names = tuple(n for t in tensor.names for n in ([t.format(i=i, e=e) for e in experts] if "{e}" in t
                                                            else [t.format(i=i)]))
            yield ours.format(i=i), names, tensor.transform


def to_hf_state(fam: Family, state: dict, flat: dict) -> dict:
    """Our state dict in the family's names and layouts (a tied unembedding is left out, as transformers does)."""
    out = {}
    for ours, theirs, transform in _rows(fam, flat):
        if ours not in state or (ours == "unembedding.weight" and flat["tie_embeddings"]):
            continue
        out.update(zip(theirs, _to_hf_tensors(transform, state[ours], flat)))
    return out


def _check_shapes(fam: Family, flat: dict, model_cfg: dict, shapes: dict, key: str, path) -> None:
    """Refuse weights whose names or shapes are not what ``model_cfg`` (built on the meta device) implies, naming
    each tensor both ways; nothing is allocated."""
    with torch.device("meta"):
        try:
            meta = build_model(model_cfg)
        except ConfigError as err:
            raise ConfigError(key, str(path), f"a {HF_CONFIG} whose model builds; its {err}") from None
    own = meta.state_dict()
    expected = {h: (ours, tuple(t.shape)) for ours, theirs, tf in _rows(fam, flat) if ours in own
                and not (ours == "unembedding.weight" and flat["tie_embeddings"])
                for h, t in zip(theirs, _to_hf_tensors(tf, own[ours], flat))}
    tied = set(fam.tensors["unembedding.weight"].names) if flat["tie_embeddings"] else set()  # older saves hold lm_head
    lines = [f"{ours}: missing from the checkpoint ({h})" for h, (ours, _) in expected.items() if h not in shapes]
    lines += [f"{ours}: checkpoint {h} {shapes[h]} vs model {shape}" for h, (ours, shape) in expected.items()
              if h in shapes and tuple(shapes[h]) != shape]
    lines += [f"{h}: not in the model" for h in shapes
              if h not in expected and h not in tied and not fam.ignored(h, flat["n_layers"])]
    if lines:
        shown = "; ".join(lines[:8]) + (f"; ... {len(lines) - 8} more" if len(lines) > 8 else "")
        raise ConfigError(key, str(path), f"weights that fit the configured model; mismatched tensors: {shown} (the "
                          f"model's shapes are what {HF_CONFIG} implies; nothing was built)")


def _normalise_names(fam: Family, names, flat: dict) -> dict:
    """File name → table name: a base model saved without its prefix (``h.0.ln_1.weight``) reads as with it."""
    known = {h for _, theirs, _ in _rows(fam, flat) for h in theirs}
    return {n: (fam.prefix + n if n not in known and fam.prefix + n in known else n) for n in names}


# ---------------------------------------------------------------------------------------------------------------------
# files


def read_hf_config(path: Path) -> dict | None:
    """config.json as a dict, or None when there is none, it is not a JSON object, or not a regular file."""
    if special_file(path / HF_CONFIG):  # a FIFO would block the read
        return None
    try:
        cfg = json.loads((path / HF_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def is_hf_dir(path) -> bool:
    """True for a directory whose ``config.json`` describes a family hydraformer reads."""
    path = Path(str(path)).expanduser()
    cfg = read_hf_config(path) if path.is_dir() else None
    return cfg is not None and family_of(cfg) is not None


def is_hf_gpt2_dir(path) -> bool:
    """True for a directory whose ``config.json`` describes a GPT-2 (``model_type: gpt2`` or GPT2LMHeadModel)."""
    path = Path(str(path)).expanduser()
    cfg = read_hf_config(path) if path.is_dir() else None
    return cfg is not None and family_of(cfg) is FAMILIES["gpt2"]


def _refuse_special(files, key: str, path: Path) -> None:
    for file in files:
        if kind := special_file(file):
            raise ConfigError(key, str(path), f"a Hugging Face directory of regular files; {file.name} is {kind}")


def _load_one(file: Path, key: str, path: Path) -> dict:
    """A weights file's tensors; a zip-format ``.bin`` (torch >= 1.6) is memory-mapped, not read."""
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file))
        except Exception as err:
            raise ConfigError(key, str(path), f"readable safetensors weights; {file.name} could not be read: "
                              f"{first_line(err)}") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except Exception as err:  # not a zip/pickle, or a pickle that wants to run code
        raise ConfigError(key, str(path), f"weights loadable safely with torch.load(weights_only=True); "
                          f"{file.name} was refused: {first_line(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(key, str(path), f"a state dict of tensors in {file.name}; it holds a {type(state).__name__}")
    return state


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
                          f"{first_line(err)}") from None


def _shards(index: Path, key: str, path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(key, str(path), f"a shard index with a 'weight_map'; {index.name} could not be read: "
                          f"{first_line(err)}") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ConfigError(key, str(path), f"every shard {index.name} names, as a file in the same directory; "
                              f"not a plain file name: {shard!r}")
        _refuse_special([path / shard], key, path)
        if not (path / shard).is_file():
            held = sorted(name for name, s in weight_map.items() if s == shard)
            more = f" and {len(held) - 3} more" if len(held) > 3 else ""
            raise ConfigError(key, str(path), f"every shard {index.name} names, as a file in the same directory; "
                              f"missing: {shard!r}, which holds {', '.join(held[:3])}{more}")
    return [path / shard for shard in shards]


def _weight_files(path: Path, key: str) -> list[Path]:
    """The files holding a directory's weights: model.safetensors, its shards, or pytorch_model.bin (or its shards)."""
    _refuse_special([path / name for name in WEIGHT_FILES], key, path)
    for name in WEIGHT_FILES:
        file = path / name
        if file.is_file():
            return _shards(file, key, path) if name.endswith(".index.json") else [file]
    raise ConfigError(key, str(path), f"a Hugging Face directory with weights; none of {', '.join(WEIGHT_FILES)} "
                      "was found")


def read_hf_weights(path, key: str = "checkpoint") -> dict:
    """The raw state dict of a directory: model.safetensors, its shards, or pytorch_model.bin (safely)."""
    path = Path(str(path)).expanduser()
    return {name: t for file in _weight_files(path, key) for name, t in _load_one(file, key, path).items()}


def read_hf_shapes(path, key: str = "checkpoint") -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in a directory's weights, without reading the tensors."""
    path = Path(str(path)).expanduser()
    return {name: s for file in _weight_files(path, key) for name, s in _shapes_of(file, key, path).items()}


def load_hf_tokenizer(path, fam: Family | None = None, key: str = "checkpoint"):
    """A GPT-2's vocab.json + merges.txt, else tokenizer.json (through the ``tokenizers`` library); None when
    neither is there."""
    path = Path(str(path)).expanduser()
    vocab, merges, tok_json = path / "vocab.json", path / "merges.txt", path / TOKENIZER_JSON
    gpt2 = fam is None or fam.model_type == "gpt2"
    try:
        if gpt2 and vocab.is_file() and merges.is_file():
            return GPT2BPETokenizer.from_files(vocab, merges)
        if tok_json.is_file():
            return (GPT2BPETokenizer if gpt2 else HFTokenizer).from_str(tok_json.read_text())
    except Exception as err:
        raise ConfigError(key, str(path), f"a readable tokenizer (vocab.json + merges.txt, or tokenizer.json): "
                          f"{first_line(err)}") from None
    return None


def hf_model_config(hf_cfg: dict, key: str = "checkpoint", path="") -> tuple[Family, dict, dict]:
    """(family, flat model config, our model config) for a config.json; ConfigError for a family or a setting
    hydraformer cannot run, naming what it supports and what it lacks."""
    fam = family_of(hf_cfg)
    if fam is None:
        raise ConfigError(key, str(path), f"a Hugging Face directory of a family hydraformer expresses (config.json "
                          f"with model_type one of {SUPPORTED}); its config.json has model_type="
                          f"{hf_cfg.get('model_type')!r}, architectures={hf_cfg.get('architectures')!r}")

    def refuse(hf_key, value, accepted):
        raise ConfigError(key, str(path), f"a {fam.model_type} hydraformer can express: {hf_key} {accepted}; its "
                          f"config.json has {hf_key}={value!r}")

    flat = hf_to_flat(fam, hf_cfg, refuse)
    return fam, flat, nest(flat)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(dtype, state: dict, key: str):
    """None / "float32": cast to fp32 (the default); "auto": keep the checkpoint's own floating dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if dtype == "auto":
        return next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, f"auto (the checkpoint's own) or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _assemble(fam: Family, flat: dict, model_cfg: dict, raw: dict, dtype: torch.dtype, key: str, path):
    """The model with the checkpoint's tensors (names and shapes already checked): built on the meta device and
    given the tensors themselves, so no weights are drawn at random first and none held twice."""
    with torch.device("meta"):
        model = build_model(model_cfg)
    own = model.state_dict()
    rows = [(ours, theirs, tf) for ours, theirs, tf in _rows(fam, flat)
            if ours in own and not (ours == "unembedding.weight" and flat["tie_embeddings"])]
    check_floating({h: raw[h].dtype for _, theirs, _ in rows for h in theirs}, key, path)  # before any cast
    state = {ours: _from_hf_tensors(tf, [raw[h] for h in theirs], flat).to(dtype) for ours, theirs, tf in rows}
    if flat["tie_embeddings"]:
        state["unembedding.weight"] = state["token_embedding.weight"]
    load_state(model, {k: v.to("meta") for k, v in state.items()}, key, path)  # names and shapes, as our model has them
    model.load_state_dict(state, assign=True)
    if flat["tie_embeddings"]:
        model.unembedding.weight = model.token_embedding.weight
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a component with a buffer of its own
        model = build_model(model_cfg)
        load_state(model, state, key, path)
        model.to(dtype)
    return model


def load_hf(path, key: str = "checkpoint", dtype=None):
    """A Hugging Face directory of any family in ``FAMILIES`` as ``(model, tokenizer_or_None, model_config)``, in
    eval mode. ``dtype``: None or "float32" casts the weights to fp32; "auto" keeps the checkpoint's (bf16 stays
    bf16); "bfloat16" / "float16" cast to those."""
    path = Path(str(path)).expanduser()
    _refuse_special([path / name for name in (HF_CONFIG, *WEIGHT_FILES, *TOKENIZER_FILES)], key, path)
    if not (path / HF_CONFIG).is_file():
        raise ConfigError(key, str(path), f"a Hugging Face directory holding {HF_CONFIG}")
    hf_cfg = read_hf_config(path)
    if hf_cfg is None:
        raise ConfigError(key, str(path), f"a Hugging Face directory; its {HF_CONFIG} is not a JSON object")
    fam, _, model_cfg = hf_model_config(hf_cfg, key, path)
    try:
        flat = canonical(model_cfg)
    except ConfigError as err:
        raise ConfigError(key, str(path), f"a {HF_CONFIG} whose model builds; its {err}") from None
    shapes = read_hf_shapes(path, key)
    names = _normalise_names(fam, shapes, flat)
    _check_shapes(fam, flat, model_cfg, {names[n]: s for n, s in shapes.items()}, key, path)  # before allocating
    raw = read_hf_weights(path, key)
    raw = {names.get(n, n): t for n, t in raw.items()}
    target = _dtype(dtype, raw, key)
    model = _assemble(fam, flat, model_cfg, raw, target, key, path)
    tokenizer = load_hf_tokenizer(path, fam, key)
    if tokenizer is not None and tokenizer.vocab_size > model_cfg["vocab_size"]:
        raise ConfigError(key, str(path), f"a tokenizer whose ids fit the model's vocab_size={model_cfg['vocab_size']}; "
                          f"the tokenizer has {tokenizer.vocab_size} ids")
    return model.eval(), tokenizer, model_cfg


def load_hf_gpt2(path, key: str = "checkpoint"):
    """A Hugging Face GPT-2 directory as ``(model, tokenizer_or_None, model_config_dict)``; other families refused."""
    path = Path(str(path)).expanduser()
    cfg = read_hf_config(path) if (path / HF_CONFIG).is_file() and not special_file(path / HF_CONFIG) else None
    if cfg is not None and family_of(cfg) is not FAMILIES["gpt2"]:
        raise ConfigError(key, str(path), "a Hugging Face GPT-2 directory (config.json with model_type 'gpt2' or "
                          f"architectures GPT2LMHeadModel); its config.json has model_type={cfg.get('model_type')!r}, "
                          f"architectures={cfg.get('architectures')!r}")
    return load_hf(path, key)


def _write_shards(dest: Path, tensors: dict, shard_size: int | None) -> None:
    """``model.safetensors``, or with ``shard_size`` (bytes) as many ``model-0000k-of-0000n.safetensors`` as it takes
    (tensors in order, a file closed before it would pass ``shard_size``; a larger tensor alone) and the index
    transformers reads them by."""
    shards: list[dict] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shard_size is not None and shards[-1] and size + n > shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    if shard_size is None:
        write_safetensors(dest / SAFETENSORS, tensors, metadata={"format": "pt"})
        return
    files = [f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)]
    for file, shard in zip(files, shards):
        write_safetensors(dest / file, shard, metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {name: file for file, shard in zip(files, shards) for name in shard}}
    atomic_write(dest / SAFETENSORS_INDEX, json.dumps(index, indent=2) + "\n")


def save_hf(model, tokenizer, model_cfg, dest, key: str = "checkpoint", path="", shard_size: int | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (or its shards, ``shard_size`` bytes at most each, and their
    index) (+ ``tokenizer.json`` and ``tokenizer_config.json``: the same ids through transformers' AutoTokenizer) that
    transformers' AutoModelForCausalLM loads as this model; the family is the first whose table expresses it."""
    fam, hf_cfg = hf_config_for(model_cfg, key, path)
    flat = canonical(model_cfg)
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    hf_cfg["dtype"] = hf_cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    hf_cfg.update({"bos_token_id": None, "eos_token_id": None, "pad_token_id": None})
    tensors = {h: t.detach().contiguous().clone() for h, t in to_hf_state(fam, state, flat).items()}
    dest = Path(dest)
    _write_shards(dest, tensors, shard_size)
    tok_json = as_tokenizer_json(tokenizer) if tokenizer is not None else None
    if tok_json is not None:  # transformers' AutoTokenizer reads it through tokenizer_config.json
        atomic_write(dest / TOKENIZER_JSON, tok_json)
        atomic_write(dest / "tokenizer_config.json", json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}) + "\n")
    atomic_write(dest / HF_CONFIG, json.dumps(hf_cfg, indent=2) + "\n")
    return dest
