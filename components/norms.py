"""Normalisation layers."""

from __future__ import annotations

from torch import nn

from .registry import register


@register("norm", "layernorm")
class LayerNorm(nn.LayerNorm):
    """Subtract the mean, divide by the standard deviation, scale (and shift when bias)."""

    def __init__(self, d_model: int, bias: bool = True, eps: float = 1e-5):
        super().__init__(d_model, eps=eps, bias=bias)

    @classmethod
    def formula(cls, d_model, bias=True, eps=1e-5) -> dict:
        return {"norm": {"weight": d_model, "bias": d_model if bias else 0}}


@register("norm", "rmsnorm")
class RMSNorm(nn.RMSNorm):
    """Divide by the root mean square and scale; no centring, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__(d_model, eps=eps)

    @classmethod
    def formula(cls, d_model, eps=1e-6) -> dict:
        return {"norm": {"weight": d_model, "bias": 0}}
