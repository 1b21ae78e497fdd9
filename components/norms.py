"""Normalisation layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    """Divide by the root mean square and scale; no centring, no bias.

    ``unit_offset``: the gain is ``1 + weight`` with ``weight`` starting at zero, computed in float32 (Gemma).
    """

    def __init__(self, d_model: int, eps: float = 1e-6, unit_offset: bool = False):
        self.unit_offset = unit_offset  # read by reset_parameters, which nn.RMSNorm's constructor calls
        super().__init__(d_model, eps=eps)

    def reset_parameters(self) -> None:
        if self.weight is not None and not self.weight.is_meta:
            (nn.init.zeros_ if self.unit_offset else nn.init.ones_)(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.unit_offset:
            return super().forward(x)
        normed = F.rms_norm(x.float(), self.normalized_shape, None, self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)

    @classmethod
    def formula(cls, d_model, eps=1e-6, unit_offset=False) -> dict:
        return {"norm": {"weight": d_model, "bias": 0}}
