"""Positions (the ``embedding`` kind): how a token learns where it stands.

Absolute kinds add a vector to each token embedding (``forward``); rotary turns
q and k by an angle that grows with the position (``rotate``). Each takes the
absolute positions ``pos`` (a LongTensor ``[T]``) so a KV cache can continue a
sequence past offset 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .registry import Annotated, Gt, Interval, OneOf, Settings, defaults_of, doc, register

POSITION_ARGS = ("d_model", "context_length", "d_head")


@dataclass
class RotarySettings(Settings):
    """RoPE: q and k turned by position; no parameters."""

    name: str = "rotary"
    base: Annotated[float, Gt(0), doc("the rotation base: pair i turns at base^(-2i/rotated) per position (Llama 3: "
                                      "500,000)")] = 10000.0
    fraction: Annotated[float, Interval(gt=0, le=1), doc("the share of each head's channels that turns (Pythia: "
                                                         "0.25); int(d_head * fraction) must be even")] = 1.0
    scale_factor: Annotated[float | None, Gt(0), doc("Llama 3.1's frequency scaling: how much long wavelengths "
                                                     "stretch (8.0); null: none")] = None
    low_freq_factor: Annotated[float, Gt(0), doc("Llama 3.1 scaling: wavelengths longer than original_context / "
                                                 "low_freq_factor stretch fully")] = 1.0
    high_freq_factor: Annotated[float, Gt(0), doc("Llama 3.1 scaling: wavelengths shorter than original_context / "
                                                  "high_freq_factor are kept")] = 4.0
    original_context: Annotated[int, Gt(0), doc("Llama 3.1 / YaRN scaling: the context the model was trained "
                                                "at")] = 8192
    scaling: Annotated[str, OneOf("llama3", "yarn"), doc("how scale_factor stretches the wavelengths: Llama 3.1's "
                                                         "bands or YaRN's ramp (gpt-oss, DeepSeek-V3)")] = "llama3"
    beta_fast: Annotated[float, Gt(0), doc("YaRN: channel pairs turning more than this often over the original "
                                           "context are kept")] = 32.0
    beta_slow: Annotated[float, Gt(0), doc("YaRN: pairs turning less often than this are stretched fully")] = 1.0
    truncate: Annotated[bool, doc("YaRN: round the ramp's ends to whole channel pairs")] = True
    mscale: Annotated[float | None, Gt(0), doc("YaRN: cos and sin times (0.1 mscale ln s + 1) / (0.1 mscale_all_dim "
                                               "ln s + 1) when both are set; null: times 0.1 ln s + 1")] = None
    mscale_all_dim: Annotated[float | None, Gt(0), doc("YaRN: see mscale")] = None
    SHARED = POSITION_ARGS

    def problems(self, model):
        if self.scale_factor is not None and self.scaling == "llama3" and not self.low_freq_factor < self.high_freq_factor:
            yield "low_freq_factor", self.low_freq_factor, \
                f"less than model.embedding.high_freq_factor={self.high_freq_factor} when scale_factor is set"
        d_head = model.shared()["d_head"]
        rotated = int(d_head * self.fraction)
        if rotated % 2 or rotated == 0:
            yield "fraction", self.fraction, (f"a share of the head width {d_head} that turns an even, positive "
                                              f"number of channels (int({d_head} * {self.fraction}) = {rotated})")

    @classmethod
    def neutral(cls):
        return defaults_of(cls)  # every default turns as plain RoPE at base 10,000

    def canonical(self, model):
        """The scaling options the chosen scaling (none, llama3 or yarn) does not read at their defaults."""
        yarn = ("beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim")
        if self.scale_factor is None:
            unread = ("low_freq_factor", "high_freq_factor", "original_context", "scaling", *yarn)
        elif self.scaling == "yarn":
            unread = ("low_freq_factor", "high_freq_factor")
        else:
            unread = yarn
        return {**super().canonical(model), **defaults_of(type(self), *unread)}


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

register("embedding", "none", shared=POSITION_ARGS)(Positions)

@register("embedding", "learned", shared=POSITION_ARGS)
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

@register("embedding", "sinusoidal", shared=POSITION_ARGS)
class SinusoidalPositions(Positions):
    """Fixed sines and cosines of "Attention is all you need"; no parameters."""

    def forward(self, x, pos):
        angles = _sinusoid(pos, self.d_model)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[:, : self.d_model]
        return x + table.to(x.dtype)

@register("embedding", "rotary", RotarySettings)
class RotaryPositions(Positions):
    """RoPE: rotate pairs of q and k channels (first half with second half) by pos·θ_i.

    ``fraction`` < 1 turns only the first ``int(fraction · d_head)`` channels of each head (GPT-NeoX's
    ``rotary_pct``) and leaves the rest as they are. ``scale_factor`` applies Llama 3.1's frequency scaling:
    wavelengths longer than ``original_context / low_freq_factor`` are stretched by ``scale_factor``, shorter than
    ``original_context / high_freq_factor`` kept, and the band between blended smoothly. ``scaling="yarn"``
    applies YaRN's instead: pairs turning more than ``beta_fast`` times over ``original_context`` keep their speed,
    fewer than ``beta_slow`` times are slowed by ``scale_factor``, a linear ramp between, and cos and sin are
    multiplied by the attention factor ``0.1 ln(scale_factor) + 1`` (or the ratio ``mscale`` / ``mscale_all_dim``
    make).
    """

    def __init__(self, d_model: int, context_length: int, d_head: int, base: float = 10000.0,
                 fraction: float = 1.0, scale_factor: float | None = None, low_freq_factor: float = 1.0,
                 high_freq_factor: float = 4.0, original_context: int = 8192, scaling: str = "llama3",
                 beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True, mscale: float | None = None,
                 mscale_all_dim: float | None = None):
        super().__init__(d_model, context_length, d_head)
        if isinstance(fraction, bool) or not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.rotated = int(d_head * fraction)
        if self.rotated % 2 or self.rotated == 0:
            raise ValueError(f"rotary positions turn pairs of channels: int(d_head * fraction) = "
                             f"int({d_head} * {fraction}) = {self.rotated} must be even and positive")
        if base <= 0:
            raise ValueError(f"base must be positive, got {base!r}")
        if scaling not in ("llama3", "yarn"):
            raise ValueError(f"scaling must be llama3 or yarn, got {scaling!r}")
        if scale_factor is not None and (scale_factor <= 0 or original_context <= 0 or (
                scaling == "llama3" and not 0 < low_freq_factor < high_freq_factor)):
            raise ValueError("Llama 3 frequency scaling needs scale_factor > 0, 0 < low_freq_factor < "
                             f"high_freq_factor and original_context > 0; got scale_factor={scale_factor}, "
                             f"low_freq_factor={low_freq_factor}, high_freq_factor={high_freq_factor}, "
                             f"original_context={original_context}")
        self.base, self.fraction = base, fraction
        self.scale_factor, self.low_freq_factor, self.high_freq_factor = scale_factor, low_freq_factor, high_freq_factor
        self.original_context = original_context
        self.scaling, self.beta_fast, self.beta_slow, self.truncate = scaling, beta_fast, beta_slow, truncate
        self.attention_factor = 1.0
        if scaling == "yarn" and scale_factor is not None:
            def m(scale):
                return 1.0 if scale_factor <= 1 else 0.1 * scale * math.log(scale_factor) + 1.0
            self.attention_factor = m(mscale) / m(mscale_all_dim) if mscale and mscale_all_dim else m(1.0)
        self._memo = None  # (pos, dtype, (cos, sin)) of the last call: every layer of one forward shares them

    def inv_freq(self, device=None) -> torch.Tensor:
        """The rotation speed of each channel pair, ``[rotated // 2]`` (float32)."""
        half = self.rotated // 2
        inv_freq = 1.0 / (self.base ** (torch.arange(half, device=device, dtype=torch.float32) / half))
        if self.scale_factor is None:
            return inv_freq
        if self.scaling == "yarn":
            return self._yarn(inv_freq)
        wavelen = 2 * math.pi / inv_freq
        long_wave = self.original_context / self.low_freq_factor
        short_wave = self.original_context / self.high_freq_factor
        stretched = torch.where(wavelen > long_wave, inv_freq / self.scale_factor, inv_freq)
        smooth = (self.original_context / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * stretched / self.scale_factor + smooth * stretched
        between = (wavelen >= short_wave) & (wavelen <= long_wave)
        return torch.where(between, blended, stretched)

    def _yarn(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """YaRN: each pair's speed blended between kept and slowed by scale_factor along a ramp over the pairs."""
        dim = self.rotated

        def pair(rotations):  # the channel (of dim) whose pair turns `rotations` times over the original context
            return dim * math.log(self.original_context / (rotations * 2 * math.pi)) / (2 * math.log(self.base))

        low, high = pair(self.beta_fast), pair(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv_freq.device) - low)
                / (high - low if high != low else 0.001)).clamp(0, 1)
        return inv_freq / self.scale_factor * ramp + inv_freq * (1 - ramp)

    def _cos_sin(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, rotated]`` tables: cos of each pair's angle on both of its channels, and sin with the sign each
        channel takes (−sin on the first half, +sin on the second), so a turn is x·cos + swap(x)·sin."""
        angles = pos.to(torch.float32)[:, None] * self.inv_freq(pos.device)[None, :]
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)

    def _turn(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot = self.rotated
        if rot == x.shape[-1]:
            return _Turn.apply(x, cos, sin)
        return torch.cat((_Turn.apply(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)

    def _angles(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for ``pos``, computed once per position tensor: the model hands every layer the same one."""
        if torch.compiler.is_compiling():  # the graph computes them once anyway; a memo would be guarded on
            return self._cos_sin(pos, dtype)
        memo = self._memo
        if memo is not None and memo[0] is pos and memo[1] == dtype:
            return memo[2]
        angles = self._cos_sin(pos, dtype)
        self._memo = (pos, dtype, angles)
        return angles

    def rotate(self, q, k, q_pos, k_pos):
        q_angles = self._angles(q_pos, q.dtype)
        k_angles = q_angles if k_pos is q_pos and k.dtype == q.dtype else self._angles(k_pos, k.dtype)
        return self._turn(q, *q_angles), self._turn(k, *k_angles)


def _turned(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """x·cos + sign·swap(x)·sin, swap exchanging the two halves of the last dimension: three passes."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return (x * cos).addcmul_(swapped, sin, value=sign)


class _Turn(torch.autograd.Function):
    """The rotation of each channel pair (x1, x2) by its angle: (x1·cos − x2·sin, x2·cos + x1·sin).

    Its backward is the rotation by minus the angle (a rotation's transpose is its inverse), the same three passes
    on the gradient with nothing saved but the tables; differentiating the formula op by op instead takes four
    half-width products, their sums, a concatenation and the slices' scatter back, each way."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _turned(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _turned(grad, cos, sin, -1.0), None, None
