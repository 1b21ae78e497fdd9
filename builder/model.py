"""From a composed ``model`` config to one ``nn.Module`` — validated before anything is built."""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass

from torch import nn

import components
from components import Block, RegistryError, Transformer
from components.registry import closest
from components.transformer import LAYOUTS

from .config.plain import to_plain
from .errors import ConfigError

# model-level keys a component receives when its constructor asks for them
SHARED_ARGS = ("d_model", "n_heads", "d_head", "context_length", "bias", "dropout")
# keys of a component group that the builder itself consumes
BUILDER_KEYS = {"name", "layout"}
# the keys of a model config besides one per component kind: ModelConfig's fields in builder/config/schema.py
# (that module imports Hydra, which loading a model never does; tests/test_cli_safety.py holds the two equal)
MODEL_KEYS = ("d_model", "n_layers", "n_heads", "d_head", "vocab_size", "context_length", "bias", "tie_embeddings",
              "dropout", "init_std", "scale_embeddings", "final_softcap")
# what a model config may leave out (a plain dict need not spell out the schema's defaults)
MODEL_DEFAULTS = {"d_head": None, "bias": True, "tie_embeddings": True, "dropout": 0.0, "init_std": 0.02,
                  "scale_embeddings": False, "final_softcap": None}


@dataclass
class Spec:
    """A resolved component choice: its class and the keyword arguments it is built with."""

    kind: str
    name: str
    cls: type
    kwargs: dict

    def build(self):
        try:
            return self.cls(**self.kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model.{self.kind}", self.name, str(err)) from None

    def formula(self) -> dict | None:
        fn = getattr(self.cls, "formula", None)
        return None if fn is None else fn(**self.kwargs)


def _positive_int(m: dict, key: str) -> int:
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model.{key}", value, "a positive integer")
    return value


def _type_ok(value, annotation) -> bool:
    """Loose check of a YAML value against a constructor annotation (int, float, bool, str, Optional)."""
    if annotation is inspect.Parameter.empty:
        return True
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, {"typing": typing, "None": None})  # noqa: S307 - our own annotations
        except Exception:
            return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _type_name(annotation) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def resolve(cfg_model) -> tuple[dict, dict[str, Spec]]:
    """Validate a model config; return its plain dict and one Spec per component kind.

    Every check happens here, before any tensor exists.
    """
    m = to_plain(cfg_model)
    if not isinstance(m, dict):
        raise ConfigError("model", m, "a mapping of model keys (a composed model config)")
    accepted = (*MODEL_KEYS, *components.KINDS)
    for key in m:
        if key not in accepted:
            raise ConfigError(f"model.{key}", m[key], f"a key of model{closest(str(key), accepted)}; accepted: "
                              f"{', '.join(accepted)}")
    m = {**MODEL_DEFAULTS, **m}
    for key in ("d_model", "n_layers", "n_heads", "vocab_size", "context_length"):
        _positive_int(m, key)
    if m.get("d_head") is None:
        if m["d_model"] % m["n_heads"]:
            raise ConfigError(
                "model.n_heads", m["n_heads"],
                f"a divisor of model.d_model={m['d_model']}, or set model.d_head explicitly",
            )
        m["d_head"] = m["d_model"] // m["n_heads"]
    else:
        _positive_int(m, "d_head")
    dropout = m.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError("model.dropout", dropout, "a number in [0, 1)")
    for key in ("bias", "tie_embeddings", "scale_embeddings"):
        if not isinstance(m.get(key, False), bool):
            raise ConfigError(f"model.{key}", m.get(key), "true or false")
    cap = m.get("final_softcap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
        raise ConfigError("model.final_softcap", cap, "a positive number (logits become cap * tanh(logits / cap)), "
                          "or null for none")

    specs = {}
    for kind in components.KINDS:
        group = m.get(kind)
        if not isinstance(group, dict) or "name" not in group:
            raise ConfigError(
                f"model.{kind}", group,
                f"a component choice such as model/{kind}={components.names(kind)[0]}; "
                f"registered: {', '.join(components.names(kind))}",
            )
        try:
            cls = components.get(kind, group["name"])
        except RegistryError as err:
            raise ConfigError(f"model/{kind}", group["name"], str(err)) from None
        params = inspect.signature(cls.__init__).parameters
        accepted = [p for p in params if p != "self"]
        kwargs = {k: m[k] for k in SHARED_ARGS if k in params and k not in group}
        for key, value in group.items():
            if key in BUILDER_KEYS:
                continue
            if key not in params:
                raise ConfigError(
                    f"model.{kind}.{key}", value,
                    f"not an argument of {kind} '{group['name']}'; it takes {', '.join(accepted) or 'nothing'}",
                )
            if not _type_ok(value, params[key].annotation):
                raise ConfigError(f"model.{kind}.{key}", value, f"a value of type {_type_name(params[key].annotation)}")
            kwargs[key] = value
        missing = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty
                   and p not in kwargs and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
        if missing:
            raise ConfigError(f"model.{kind}.{missing[0]}", None, f"{kind} '{group['name']}' needs a value for it")
        specs[kind] = Spec(kind, group["name"], cls, kwargs)

    layout = m["norm"].get("layout", "pre")
    if layout not in LAYOUTS:
        raise ConfigError("model.norm.layout", layout, f"one of {', '.join(LAYOUTS)}")
    m["norm_layout"] = layout
    kv = specs["attention"].kwargs.get("n_kv_heads")
    if kv is not None and (isinstance(kv, bool) or kv <= 0 or m["n_heads"] % kv):
        raise ConfigError("model.attention.n_kv_heads", kv, f"a positive divisor of model.n_heads={m['n_heads']}")
    window = specs["mask"].kwargs.get("window")
    if window is not None and window <= 0:
        raise ConfigError("model.mask.window", window, "a positive integer (the band's width in tokens)")
    return m, specs


def build_model(cfg_model) -> nn.Module:
    """The model a composed ``model`` config describes: ids ``[B, T]`` → logits ``[B, T, vocab]``."""
    m, specs = resolve(cfg_model)
    positions = specs["embedding"].build()
    mask = specs["mask"].build()
    layout = m["norm_layout"]
    norm = specs["norm"].build
    blocks = [
        Block(specs["attention"].build(), specs["mlp"].build(), norm(), norm(), layout=layout, dropout=m["dropout"],
              **({"post_norm_1": norm(), "post_norm_2": norm()} if layout == "sandwich" else {}))
        for _ in range(m["n_layers"])
    ]
    return Transformer(
        vocab_size=m["vocab_size"], d_model=m["d_model"], positions=positions, blocks=blocks,
        final_norm=norm() if has_final_norm(layout) else None, mask=mask, tie_embeddings=m["tie_embeddings"],
        dropout=m["dropout"], init_std=m.get("init_std", 0.02), scale_embeddings=m.get("scale_embeddings", False),
        final_softcap=m.get("final_softcap"),
    )


def has_final_norm(layout: str) -> bool:
    """Every layout but ``post`` normalises the last residual stream before the unembedding."""
    return layout != "post"


def norms_per_block(layout: str) -> int:
    return 4 if layout == "sandwich" else 2


def load_state(model: nn.Module, state: dict, key: str, path) -> None:
    """Load ``state`` into ``model``; mismatched shapes or names are listed, nothing is half-loaded."""
    check_state(model.state_dict(), state, key, path)
    model.load_state_dict(state)


def check_state(own: dict, state: dict, key: str, path) -> None:
    """ConfigError listing every tensor of ``state`` whose name or shape does not fit ``own`` (a model's state dict;
    the values need only a ``.shape``: meta tensors do)."""
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if problems or missing or unexpected:
        lines = problems + [f"{k}: missing from the checkpoint" for k in missing] + [
            f"{k}: not in the model" for k in unexpected]
        shown = "; ".join(lines[:8]) + (f"; ... {len(lines) - 8} more" if len(lines) > 8 else "")
        raise ConfigError(key, str(path), f"weights that fit the configured model; mismatched tensors: {shown}")
