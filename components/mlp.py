"""MLPs: the per-token feed-forward half of each block."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from .registry import Annotated, Gt, OneOf, Settings, defaults_of, doc, get, register

Hidden = Annotated[int | None, Gt(0), doc("the hidden width; null: the MLP's default for d_model")]


@dataclass
class WidthSettings(Settings):
    """An MLP of one hidden width; its class's ``default_hidden(d_model)`` when null."""

    hidden: Hidden = None
    SHARED = ("d_model", "bias")

    def canonical(self, model):
        return {**super().canonical(model), "hidden": self.hidden or get("mlp", self.name).default_hidden(model.d_model)}


@dataclass
class GeluSettings(WidthSettings):
    """d -> hidden -> d with GELU."""

    name: str = "gelu"
    approximate: Annotated[str, OneOf("tanh", "none"), doc("GELU's form: tanh (GPT-2) or none (the exact erf)")] = "tanh"

    @classmethod
    def neutral(cls):
        return defaults_of(cls, "approximate")


@dataclass
class ReluSettings(WidthSettings):
    """d -> hidden -> d with ReLU."""

    name: str = "relu"


@dataclass
class SwiGLUSettings(WidthSettings):
    """A gated linear unit: three matrices."""

    name: str = "swiglu"


@dataclass
class GeGLUSettings(SwiGLUSettings):
    name: str = "geglu"


def _linear_count(fan_in: int, fan_out: int, bias: bool) -> dict:
    return {"weight": fan_in * fan_out, "bias": fan_out if bias else 0}


@register("mlp", "gelu", GeluSettings)
class GeluMLP(nn.Module):
    """d → hidden (4d by default) → d with GELU (tanh approximation, as GPT-2 and GPT-3)."""

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = True, approximate: str = "tanh"):
        super().__init__()
        hidden = hidden or self.default_hidden(d_model)
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.proj.residual_projection = True
        self.approximate = approximate

    @staticmethod
    def default_hidden(d_model: int) -> int:
        return 4 * d_model

    def activation(self, h):
        return F.gelu(h, approximate=self.approximate)

    def forward(self, x):
        return self.proj(self.activation(self.fc(x)))

    @classmethod
    def formula(cls, d_model, hidden=None, bias=True, **_) -> dict:
        hidden = hidden or cls.default_hidden(d_model)
        return {"fc": _linear_count(d_model, hidden, bias), "proj": _linear_count(hidden, d_model, bias)}


@register("mlp", "relu", ReluSettings)
class ReluMLP(GeluMLP):
    """d → hidden (4d by default) → d with ReLU (the original transformer)."""

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = True):
        super().__init__(d_model, hidden, bias)

    def activation(self, h):
        return F.relu(h)


@register("mlp", "swiglu", SwiGLUSettings)
class SwiGLUMLP(nn.Module):
    """SiLU(x W_gate) ⊙ (x W_up) → W_proj; hidden defaults to 8d/3 rounded up to a multiple of 8."""

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = True):
        super().__init__()
        hidden = hidden or self.default_hidden(d_model)
        self.gate = nn.Linear(d_model, hidden, bias=bias)
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.proj.residual_projection = True

    @staticmethod
    def default_hidden(d_model: int) -> int:
        third = -(-8 * d_model // 3)  # ceil(8d/3)
        return -(-third // 8) * 8

    def activation(self, h):
        return F.silu(h)

    def forward(self, x):
        return self.proj(self.activation(self.gate(x)) * self.up(x))

    @classmethod
    def formula(cls, d_model, hidden=None, bias=True) -> dict:
        hidden = hidden or cls.default_hidden(d_model)
        return {
            "gate": _linear_count(d_model, hidden, bias),
            "up": _linear_count(d_model, hidden, bias),
            "proj": _linear_count(hidden, d_model, bias),
        }


@register("mlp", "geglu", GeGLUSettings)
class GeGLUMLP(SwiGLUMLP):
    """GELU(x W_gate) ⊙ (x W_up) → W_proj, GELU in its tanh approximation (Gemma)."""

    def activation(self, h):
        return F.gelu(h, approximate="tanh")
