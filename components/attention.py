"""Attention: queries ask, keys answer, values move information between tokens.

One fused projection makes q, k and v (W_q, W_k, W_v stacked row-wise); W_o maps
the concatenated heads back to the residual stream. The default path is the
fused ``scaled_dot_product_attention``; while a function is attached to a hook
point of the scores or the pattern (see components/hooks.py) the explicit path
runs instead (q·k, mask, softmax, weighted sum). Both give the same output.

Hook points (TransformerLens's names and layouts): ``hook_q`` [batch, pos, head, d_head], ``hook_k`` and
``hook_v`` [batch, pos, kv_head, d_head] — for grouped-query attention one per *key/value* head, n_kv_heads of
them, as TransformerLens's GroupedQueryAttention holds them: editing key/value head g edits what every query head
of its group reads —, ``hook_rot_q`` / ``hook_rot_k`` (after the rotation, same layouts),
``hook_attn_scores_unmasked`` and ``hook_attn_scores`` (masked cells -inf) and ``hook_pattern`` [batch, head,
query, key], ``hook_z`` [batch, pos, head, d_head] and ``hook_result`` [batch, pos, head, d_model] (each head's
update; the output is their sum plus W_o's bias). With a KV cache, q/k/v hooks see the new tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookPoint, hooked
from .registry import Annotated, Gt, Settings, defaults_of, doc, register

HOOKS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores_unmasked", "hook_attn_scores",
         "hook_pattern", "hook_z", "hook_result")


@dataclass
class MultiHeadSettings(Settings):
    """Every head has its own W_q, W_k, W_v; W_o mixes the heads back (GPT-2, GPT-3)."""

    name: str = "multi_head"
    qkv_bias: Annotated[bool | None, doc("biases on q, k and v whatever model.bias says (Qwen2); null: model.bias")] = None
    qk_norm: Annotated[bool, doc("an RMSNorm over each head's q and k before the rotation (Qwen3)")] = False
    qk_norm_eps: Annotated[float, Gt(0), doc("the q/k norms' epsilon")] = 1e-6
    query_scale: Annotated[float | None, Gt(0), doc("what q.k is multiplied by; null: 1/sqrt(d_head)")] = None
    softcap: Annotated[float | None, Gt(0), doc("scores become cap * tanh(scores / cap) (Gemma 2: 50); null: "
                                                "none")] = None
    sinks: Annotated[bool, doc("a learned logit per head joins each softmax as a key with no value (gpt-oss)")] = False
    SHARED = ("d_model", "n_heads", "d_head", "bias", "dropout")

    @classmethod
    def neutral(cls):
        return defaults_of(cls, "qkv_bias", "qk_norm", "qk_norm_eps", "query_scale", "softcap", "sinks")

    def canonical(self, model):
        """As grouped_query with n_heads key/value heads, the biases and the scale spelled out."""
        s = super().canonical(model)
        s.update(name="grouped_query", n_kv_heads=model.n_heads)
        if s["qkv_bias"] is None:
            s["qkv_bias"] = model.bias
        if s["query_scale"] is None:
            s["query_scale"] = model.head_dim ** -0.5
        if not s["qk_norm"]:
            s["qk_norm_eps"] = self.neutral()["qk_norm_eps"]
        return s


@dataclass
class GroupedQuerySettings(MultiHeadSettings):
    """n_heads query heads share n_kv_heads key/value heads; n_kv_heads=1 is multi-query attention."""

    name: str = "grouped_query"
    n_kv_heads: Annotated[int, Gt(0), doc("key/value heads, a divisor of model.n_heads (1: multi-query)")] = 1

    def problems(self, model):
        if model.n_heads % self.n_kv_heads:
            yield "n_kv_heads", self.n_kv_heads, f"a positive divisor of model.n_heads={model.n_heads}"

    def canonical(self, model):
        return {**super().canonical(model), "n_kv_heads": self.n_kv_heads}


@dataclass
class AttentionMask:
    """What a layer may look at: a boolean grid (True = attend) or the plain causal rule."""

    grid: torch.Tensor | None  # [B or 1, 1, Tq, Tk]
    is_causal: bool = False

    def dense(self, tq: int, tk: int, device) -> torch.Tensor | None:
        if self.is_causal:
            return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)[None, None]
        return self.grid


def heads_out(o: nn.Linear, z: torch.Tensor, hook_result: HookPoint) -> torch.Tensor:
    """W_o applied to the heads' outputs ``z`` [B, T, H, d]: one matmul, unless a function on ``hook_result`` replaces
    or edits in place each head's update [B, T, H, d_model], whose sum (plus W_o's bias) is then the output."""
    b, t, n_heads, d = z.shape
    if hook_result.fns:
        result = torch.einsum("bthd,mhd->bthm", z, o.weight.view(o.out_features, n_heads, d))
        version = result._version
        edited = hook_result(result)
        if edited is not result or result._version != version:  # (only read: W_o's one matmul, as without it)
            out = edited.sum(dim=2)
            return out if o.bias is None else out + o.bias
    return o(z.reshape(b, t, n_heads * d))


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    Each layer's keys and values live in one buffer of ``capacity`` positions, allocated on first use and written
    in place; ``extend`` returns views of the filled part, so a decoding step copies only its own token's k and v
    (no ``torch.cat`` of the whole history per token). A sequence longer than the capacity doubles the buffer.
    """

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.lengths: dict[int, int] = {}

    @property
    def length(self) -> int:
        """Tokens held (those of the first layer: every layer holds as many once a forward pass ends)."""
        return next(iter(self.lengths.values())) if self.lengths else 0

    def _room(self, layer: int, k: torch.Tensor, v: torch.Tensor, needed: int) -> None:
        held = self.keys.get(layer)
        if held is not None and held.shape[2] >= needed:
            return
        size = max(needed, self.capacity or 0, 2 * held.shape[2] if held is not None else 0)
        keys = k.new_empty(*k.shape[:2], size, k.shape[3])
        values = v.new_empty(*v.shape[:2], size, v.shape[3])  # (latent attention caches two widths)
        if held is not None:
            n = self.lengths[layer]
            keys[:, :, :n], values[:, :, :n] = held[:, :, :n], self.values[layer][:, :, :n]
        self.keys[layer], self.values[layer] = keys, values

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None = None):
        """Append ``k`` and ``v`` ``[B, H_kv, t, d_head]``; returns every key and value held. (``pos``, the tokens'
        positions, is what :class:`StaticKVCache` writes at; this cache appends.)"""
        start = self.lengths.get(layer, 0)
        end = start + k.shape[2]
        self._room(layer, k, v, end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class StaticKVCache:
    """A cache of fixed size for compiled decoding: no Python number that changes per token reaches the model.

    Each layer's keys and values live in one zero-filled buffer of ``capacity`` positions; a forward pass writes its
    tokens at the positions ``next + [0, t)``, ``next`` being a tensor the pass advances in place, and attention reads
    the whole buffer with the mask hiding the slots not written yet. So every decoding step has the same shapes and
    the same Python state, and a ``torch.compile``d step compiles once for a whole continuation (the growing
    :class:`KVCache` changes a slice length every token, which compiled code would have to handle per length).
    Holds at most ``capacity`` tokens: more is an error, not a doubling.
    """

    def __init__(self, capacity: int, device=None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.slots = torch.arange(capacity, device=device)
        self.next = torch.zeros((), dtype=torch.long, device=device)
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    @property
    def length(self) -> int:
        """Tokens held (reads the position tensor: for callers outside compiled code)."""
        return int(self.next)

    def positions(self, t: int) -> torch.Tensor:
        """The positions the next ``t`` tokens take, ``[t]``; in eager code, an error past the capacity."""
        if not torch.compiler.is_compiling() and self.length + t > self.capacity:
            raise ValueError(f"a StaticKVCache of capacity {self.capacity} holds {self.length} tokens: "
                             f"no room for {t} more")
        return self.next + torch.arange(t, device=self.next.device)

    def advance(self, t: int) -> None:
        self.next += t

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None = None):
        """Write ``k`` and ``v`` at the positions ``pos``; returns the whole buffers (the mask hides what is unwritten)."""
        if layer not in self.keys:
            self.keys[layer] = k.new_zeros(*k.shape[:2], self.capacity, k.shape[3])
            self.values[layer] = v.new_zeros(*v.shape[:2], self.capacity, v.shape[3])
        self.keys[layer].index_copy_(2, pos, k)
        self.values[layer].index_copy_(2, pos, v)
        return self.keys[layer], self.values[layer]


@register("attention", "grouped_query", GroupedQuerySettings)
class GroupedQueryAttention(nn.Module):
    """``n_heads`` query heads share ``n_kv_heads`` key/value heads (1 = multi-query).

    Options the open decoder families need: ``qkv_bias`` (biases on q, k, v whatever ``bias`` says: Qwen2),
    ``qk_norm`` (an RMSNorm over each head's q and k before the rotation: Qwen3), ``query_scale`` (what q·k is
    multiplied by, 1/sqrt(d_head) when None: Gemma 2 uses query_pre_attn_scalar^-1/2) and ``softcap``
    (scores become cap·tanh(scores/cap) before the mask: Gemma 2) and ``sinks`` (a learned logit per head that
    joins every softmax as a key with no value, so a head can attend to nothing: gpt-oss).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        n_kv_heads: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        qkv_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        query_scale: float | None = None,
        softcap: float | None = None,
        sinks: bool = False,
    ):
        super().__init__()
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        if query_scale is not None and query_scale <= 0:
            raise ValueError(f"query_scale must be positive, got {query_scale!r}")
        if softcap is not None and softcap <= 0:
            raise ValueError(f"softcap must be positive, got {softcap!r}")
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, d_head
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * d_head, bias=bias if qkv_bias is None else qkv_bias)
        self.o = nn.Linear(n_heads * d_head, d_model, bias=bias)
        self.o.residual_projection = True  # GPT-2 init scales it by 1/sqrt(2 n_layers)
        self.q_norm = nn.RMSNorm(d_head, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(d_head, eps=qk_norm_eps) if qk_norm else None
        self.scale = query_scale if query_scale is not None else 1.0 / math.sqrt(d_head)
        self.softcap = softcap
        self.sinks = nn.Parameter(torch.zeros(n_heads)) if sinks else None
        self.dropout = dropout
        self.layer = 0  # set by the model: which block this is
        for name in HOOKS:
            setattr(self, name, HookPoint())

    def split_sizes(self) -> list[int]:
        return [self.n_heads * self.d_head, self.n_kv_heads * self.d_head, self.n_kv_heads * self.d_head]

    def split_rows(self, parts: int) -> torch.Tensor:
        """The fused q/k/v projection's rows reordered so that ``parts`` equal consecutive chunks each hold whole
        heads: chunk r is query heads r·n/parts .. (r+1)·n/parts - 1, then the key and value heads those queries
        read (grouped-query: kv heads r·kv/parts ..). Stacked as built (all q, all k, all v), an even split would
        give one part every query and half the keys. ``parts`` must divide n_heads and n_kv_heads."""
        if self.n_heads % parts or self.n_kv_heads % parts:
            raise ValueError(f"{parts} parts do not divide n_heads={self.n_heads} and n_kv_heads={self.n_kv_heads}")
        rows = torch.arange(sum(self.split_sizes())).split(self.split_sizes())
        return torch.cat([piece for r in range(parts) for part in rows for piece in part.chunk(parts)[r:r + 1]])

    def keep_heads(self, parts: int) -> None:
        """From now on this module computes 1/``parts`` of the heads (its q/k/v rows and W_o columns split over
        ``parts`` tensor-parallel processes, :meth:`split_rows`): its head counts become the local ones."""
        if self.sinks is not None:
            raise ValueError("attention sinks (one logit per head) are not split over tensor-parallel processes")
        self.split_rows(parts)  # (refuses counts that do not divide)
        self.n_heads, self.n_kv_heads = self.n_heads // parts, self.n_kv_heads // parts

    def forward(self, x, mask: AttentionMask, positions, pos, cache: KVCache | None = None):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes(), dim=-1)
        q = q.view(b, t, self.n_heads, self.d_head)
        k = k.view(b, t, self.n_kv_heads, self.d_head)
        v = v.view(b, t, self.n_kv_heads, self.d_head)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k = positions.rotate(q.transpose(1, 2), k.transpose(1, 2), pos, pos)
        q, k, v = hooked(self.hook_rot_q, q), hooked(self.hook_rot_k, k), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.extend(self.layer, k, v, pos)
        if self.softcap is None and self.sinks is None and not (
                self.hook_attn_scores.fns or self.hook_pattern.fns or self.hook_attn_scores_unmasked.fns):
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask.grid,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=mask.is_causal,
                scale=self.scale,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        else:  # the fused kernel has no soft-capping nor sinks, and makes no scores or pattern to hook
            y = self._explicit(q, k, v, mask)
        return heads_out(self.o, self.hook_z(y.transpose(1, 2)), self.hook_result)  # z: [B, T, H, d_head]

    def _explicit(self, q, k, v, mask: AttentionMask):
        """The lecture's steps one by one: q·k scores, mask, softmax, weighted sum of values."""
        repeat = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = self.hook_attn_scores_unmasked(scores)
        allowed = mask.dense(q.shape[2], k.shape[2], q.device)
        masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
        scores = self.hook_attn_scores(masked)
        pattern = self.hook_pattern(scores.softmax(dim=-1) if self.sinks is None else _sink_softmax(scores, self.sinks))
        return F.dropout(pattern, self.dropout, self.training) @ v  # [B, H, Tq, d_head]

    def breakdown(self) -> dict:
        """Parameters of W_q, W_k, W_v, W_o (and the q/k norms) as built (weights and biases)."""
        rows = self.split_sizes()
        fan_in = self.qkv.in_features
        has_bias = self.qkv.bias is not None
        out = {
            name: {"weight": r * fan_in, "bias": r if has_bias else 0}
            for name, r in zip(("W_q", "W_k", "W_v"), rows)
        }
        out["W_o"] = {"weight": self.o.weight.numel(), "bias": self.o.bias.numel() if self.o.bias is not None else 0}
        if self.q_norm is not None:
            out["qk_norm"] = {"weight": 2 * self.d_head, "bias": 0}
        if self.sinks is not None:
            out["sinks"] = {"weight": self.n_heads, "bias": 0}
        return out

    @classmethod
    def formula(cls, d_model, n_heads, d_head, n_kv_heads=1, bias=True, dropout=0.0, qkv_bias=None, qk_norm=False,
                sinks=False, **_) -> dict:
        b = 1 if (bias if qkv_bias is None else qkv_bias) else 0
        q, kv = n_heads * d_head, n_kv_heads * d_head
        out = {
            "W_q": {"weight": d_model * q, "bias": b * q},
            "W_k": {"weight": d_model * kv, "bias": b * kv},
            "W_v": {"weight": d_model * kv, "bias": b * kv},
            "W_o": {"weight": q * d_model, "bias": d_model if bias else 0},
        }
        if qk_norm:
            out["qk_norm"] = {"weight": 2 * d_head, "bias": 0}
        if sinks:
            out["sinks"] = {"weight": n_heads, "bias": 0}
        return out


@register("attention", "multi_head", MultiHeadSettings)
class MultiHeadAttention(GroupedQueryAttention):
    """Every head has its own W_q, W_k, W_v (GPT-2, GPT-3)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, bias: bool = True, dropout: float = 0.0,
                 qkv_bias: bool | None = None, qk_norm: bool = False, qk_norm_eps: float = 1e-6,
                 query_scale: float | None = None, softcap: float | None = None, sinks: bool = False):
        super().__init__(d_model, n_heads, d_head, n_kv_heads=n_heads, bias=bias, dropout=dropout, qkv_bias=qkv_bias,
                         qk_norm=qk_norm, qk_norm_eps=qk_norm_eps, query_scale=query_scale, softcap=softcap,
                         sinks=sinks)

    @classmethod
    def formula(cls, d_model, n_heads, d_head, bias=True, dropout=0.0, **options) -> dict:
        return super().formula(d_model, n_heads, d_head, n_heads, bias, dropout, **options)


def _sink_softmax(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys and one sink logit per head ``[H]``, the sink's share dropped: rows sum to less than 1."""
    sink = sinks.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:-1], 1)
    return torch.cat((scores, sink), dim=-1).softmax(dim=-1)[..., :-1]
