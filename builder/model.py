"""From a composed ``model`` config to one ``nn.Module`` — checked before anything is built.

:class:`~builder.config.schema.ModelConfig` declares the model's keys; each component's settings are declared beside its module
(``components/``) and picked by the component's ``name``. :func:`model_config` checks a config (a composed
DictConfig or a checkpoint's plain dict) against those declarations with the one check
(builder/config/spec.py); the build reads the checked object.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

import components
from components import Block, Transformer
from components.registry import Settings

from .config.plain import to_plain
from .config.schema import ModelConfig
from .config.spec import check
from .errors import ConfigError


def model_config(cfg_model) -> ModelConfig:
    """A ``model`` config (DictConfig or plain dict) checked against the declarations: ConfigError otherwise."""
    if isinstance(cfg_model, ModelConfig):
        return cfg_model
    m = to_plain(cfg_model)
    if not isinstance(m, dict):
        raise ConfigError("model", m, "a mapping of model keys (a composed model config)")
    return check(ModelConfig, m, "model")


@dataclass
class Spec:
    """A checked component choice: its class and the keyword arguments it is built with."""

    kind: str
    name: str
    cls: type
    kwargs: dict

    def build(self, layer: int | None = None):
        """The module; ``layer``: for a component that differs by layer (its class's ``for_layer``: the first
        dense layers of a mixture of experts)."""
        per_layer = getattr(self.cls, "for_layer", None) if layer is not None else None
        try:
            return per_layer(layer, **self.kwargs) if per_layer else self.cls(**self.kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model.{self.kind}", self.name, str(err)) from None

    def formula(self, layer: int | None = None, active: bool = False) -> dict | None:
        """The closed-form count of one layer's module (``layer``: which, for a component with ``for_layer``);
        ``active``: only what one token uses (a class's ``active_formula``; all of it when it has none)."""
        fn = getattr(self.cls, "active_formula" if active else "formula", None) or getattr(self.cls, "formula", None)
        if fn is None:
            return None
        return fn(**self.kwargs, **({"layer": layer} if layer is not None and hasattr(self.cls, "for_layer") else {}))


def resolve(cfg_model) -> tuple[dict, dict[str, Spec]]:
    """Check a model config; return it as a plain dict (``d_head`` filled in, ``norm_layout``) and one Spec per
    component kind. Every check happens here, before any tensor exists."""
    mc = model_config(cfg_model)
    specs = {}
    for kind in components.KINDS:
        settings: Settings = getattr(mc, kind)
        specs[kind] = Spec(kind, settings.name, components.get(kind, settings.name), settings.module_kwargs(mc))
    m = {**{k: v for k, v in vars(mc).items() if k not in components.KINDS},
         **{kind: to_plain(vars(getattr(mc, kind))) for kind in components.KINDS}}
    m["d_head"] = mc.head_dim
    m["norm_layout"] = getattr(mc.norm, "layout", "pre")  # a norm registered without settings: pre
    return m, specs


def build_model(cfg_model) -> nn.Module:
    """The model a composed ``model`` config describes: ids ``[B, T]`` → logits ``[B, T, vocab]``."""
    m, specs = resolve(cfg_model)
    positions = specs["embedding"].build()
    mask = specs["mask"].build()
    layout = m["norm_layout"]
    norm = specs["norm"].build
    blocks = [
        Block(specs["attention"].build(), specs["mlp"].build(layer=i), norm(), norm(), layout=layout,
              dropout=m["dropout"], **({"post_norm_1": norm(), "post_norm_2": norm()} if layout == "sandwich" else {}))
        for i in range(m["n_layers"])
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


def check_floating(dtypes: dict, key: str, path) -> None:
    """ConfigError naming every weight (name -> dtype) that is not floating point: int64 or bool weights cast to
    float would be a model of their integers, sampling garbage. bfloat16 and float16 are floating point."""
    bad = [f"{name} {str(dtype).removeprefix('torch.')}" for name, dtype in dtypes.items() if not dtype.is_floating_point]
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ConfigError(key, str(path), f"floating-point weights (float32, bfloat16, float16, ...); not floating "
                          f"point: {shown}")


def check_state(own: dict, state: dict, key: str, path) -> None:
    """ConfigError listing every tensor of ``state`` whose name or shape does not fit ``own`` (a model's state dict;
    the values need only a ``.shape`` and a ``.dtype``: meta tensors do), or that is not floating point where the
    model's is (:func:`check_floating`)."""
    check_floating({k: v.dtype for k, v in state.items() if k in own and own[k].is_floating_point()}, key, path)
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if problems or missing or unexpected:
        lines = problems + [f"{k}: missing from the checkpoint" for k in missing] + [
            f"{k}: not in the model" for k in unexpected]
        shown = "; ".join(lines[:8]) + (f"; ... {len(lines) - 8} more" if len(lines) > 8 else "")
        raise ConfigError(key, str(path), f"weights that fit the configured model; mismatched tensors: {shown}")
