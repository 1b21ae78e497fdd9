"""Masks: which keys each query may look at.

A mask answers ``allowed(q_pos, k_pos, layer)`` with a boolean ``[Tq, Tk]`` grid
(True = may attend) from absolute positions, so the same rule serves a full
sequence and a KV-cached continuation. ``None`` means "everything allowed".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import Annotated, Ge, Gt, OneOf, Settings, defaults_of, doc, register

Window = Annotated[int, Gt(0), doc("the band's width: a token sees itself and window - 1 tokens before it")]


@dataclass
class SlidingWindowSettings(Settings):
    name: str = "sliding_window"
    window: Window = 64

    @classmethod
    def neutral(cls):
        return {"window": None}  # no band


@dataclass
class AlternatingSettings(Settings):
    name: str = "alternating"
    window: Window = 64
    band_layers: Annotated[str, OneOf("odd", "even"), doc("which layers are banded: odd (GPT-3) or even (Gemma 2); "
                                                          "the others are dense causal")] = "odd"

    @classmethod
    def neutral(cls):
        return {"window": None, **defaults_of(cls, "band_layers")}


@dataclass
class PrefixSettings(Settings):
    name: str = "prefix"
    prefix: Annotated[int, Ge(0), doc("the first tokens, which see each other both ways")] = 16


@register("mask", "causal")
class CausalMask:
    """Each token sees itself and what came before it (GPT)."""

    #: True when no layer lets a token see a later one
    causal = True

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor, layer: int) -> torch.Tensor | None:
        return k_pos[None, :] <= q_pos[:, None]

    def plain_causal(self, layer: int) -> bool:
        """True where the layer's rule is exactly the causal one (the fused is_causal path)."""
        return True

    def layer_key(self, layer: int):
        """Layers with equal keys share one mask per forward pass."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


@register("mask", "none")
class NoMask(CausalMask):
    """Bidirectional: every token sees every token (BERT-style)."""

    causal = False

    def allowed(self, q_pos, k_pos, layer):
        return None

    def plain_causal(self, layer):
        return False


def _positive_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    return window


@register("mask", "sliding_window", SlidingWindowSettings)
class SlidingWindowMask(CausalMask):
    """Causal band: a token sees itself and the ``window - 1`` tokens before it."""

    def __init__(self, window: int = 256):
        self.window = _positive_window(window)

    def allowed(self, q_pos, k_pos, layer):
        back = q_pos[:, None] - k_pos[None, :]
        return (back >= 0) & (back < self.window)

    def plain_causal(self, layer):
        return False


@register("mask", "alternating", AlternatingSettings)
class AlternatingMask(SlidingWindowMask):
    """Dense causal layers alternating with causal bands of width ``window``.

    ``band_layers="odd"``: even layers dense, odd layers banded (GPT-3); ``"even"``: the other way round (Gemma 2).
    """

    def __init__(self, window: int = 256, band_layers: str = "odd"):
        super().__init__(window)
        if band_layers not in ("odd", "even"):
            raise ValueError(f"band_layers must be 'odd' or 'even', got {band_layers!r}")
        self.band_layers = band_layers

    def banded(self, layer: int) -> bool:
        return layer % 2 == (1 if self.band_layers == "odd" else 0)

    def allowed(self, q_pos, k_pos, layer):
        if self.banded(layer):
            return super().allowed(q_pos, k_pos, layer)
        return CausalMask.allowed(self, q_pos, k_pos, layer)

    def plain_causal(self, layer):
        return not self.banded(layer)

    def layer_key(self, layer):
        return layer % 2


@register("mask", "prefix", PrefixSettings)
class PrefixMask(CausalMask):
    """Prefix LM: the first ``prefix`` tokens see each other both ways; later ones are causal."""

    causal = False

    def __init__(self, prefix: int = 16):
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ValueError(f"prefix must be a non-negative integer, got {prefix!r}")
        self.prefix = prefix

    def allowed(self, q_pos, k_pos, layer):
        return (k_pos[None, :] <= q_pos[:, None]) | (k_pos[None, :] < self.prefix)

    def plain_causal(self, layer):
        return self.prefix == 0
