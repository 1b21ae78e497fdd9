"""Positions (the ``embedding`` kind): how a token learns where it stands.

Absolute kinds add a vector to each token embedding (``forward``); rotary turns
q and k by an angle that grows with the position (``rotate``). Each takes the
absolute positions ``pos`` (a LongTensor ``[T]``) so a KV cache can continue a
sequence past offset 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register


class Embedding(nn.Embedding):
    """``nn.Embedding`` that draws no values on the meta device.

    (``normal_`` on meta tensors goes through a decomposition whose first use imports
    ``torch._dynamo``: over a second of start-up for a parameter count that needs no values.)
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Positions(nn.Module):
    """No positional information at all; the base of every positions kind."""

    #: the longest sequence this kind can place, or None when unbounded
    max_positions: int | None = None

    def __init__(self, d_model: int, context_length: int, d_head: int):
        super().__init__()
        self.d_model, self.context_length, self.d_head = d_model, context_length, d_head

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor):
        return q, k

    @classmethod
    def formula(cls, d_model: int, context_length: int, d_head: int, **_) -> dict:
        return {}

register("embedding", "none")(Positions)

@register("embedding", "learned")
class LearnedPositions(Positions):
    """A learned table of ``context_length`` position vectors (GPT-2, GPT-3)."""

    def __init__(self, d_model: int, context_length: int, d_head: int):
        super().__init__(d_model, context_length, d_head)
        self.max_positions = context_length
        self.table = Embedding(context_length, d_model)

    def forward(self, x, pos):
        return x + self.table(pos)

    @classmethod
    def formula(cls, d_model, context_length, d_head, **_):
        return {"positions": {"weight": context_length * d_model, "bias": 0}}

def _sinusoid(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``[T, dim]`` angles pos / 10000^(2i/dim), i over dim//2 frequencies."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32) / dim))
    return pos.to(torch.float32)[:, None] * inv_freq[None, :]

@register("embedding", "sinusoidal")
class SinusoidalPositions(Positions):
    """Fixed sines and cosines of "Attention is all you need"; no parameters."""

    def forward(self, x, pos):
        angles = _sinusoid(pos, self.d_model)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[:, : self.d_model]
        return x + table.to(x.dtype)

@register("embedding", "rotary")
class RotaryPositions(Positions):
    """RoPE: rotate pairs of q and k channels (first half with second half) by pos·θ_i."""

    def __init__(self, d_model: int, context_length: int, d_head: int, base: float = 10000.0):
        super().__init__(d_model, context_length, d_head)
        if d_head % 2:
            raise ValueError(f"rotary positions need an even d_head, got {d_head}")
        self.base = base

    def _cos_sin(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.d_head // 2
        inv_freq = 1.0 / (self.base ** (torch.arange(half, device=pos.device, dtype=torch.float32) / half))
        angles = pos.to(torch.float32)[:, None] * inv_freq[None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

    def rotate(self, q, k, q_pos, k_pos):
        q_angles = self._cos_sin(q_pos, q.dtype)
        k_angles = q_angles if k_pos is q_pos and k.dtype == q.dtype else self._cos_sin(k_pos, k.dtype)
        return self._turn(q, *q_angles), self._turn(k, *k_angles)

