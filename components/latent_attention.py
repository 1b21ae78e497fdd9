"""Multi-head latent attention (DeepSeek-V2, DeepSeek-V3): keys and values drawn from one small latent per token.

Each token is compressed to a latent ``c`` of ``kv_lora_rank`` channels (RMS-normalised) plus one shared key part of
``qk_rope_head_dim`` channels that the positions turn; every head's key (``qk_nope_head_dim`` unturned channels) and
value (``v_head_dim``) are expanded from ``c``. Queries go through a low-rank bottleneck of ``q_lora_rank`` (with its
own RMSNorm) or one full matrix when it is null, and are split the same way: unturned channels meet the expanded
keys, turned channels meet the shared turned key ("decoupled rotary"). The KV cache holds only ``c`` and the turned
key: ``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer, whatever the number of heads.

The positions are built with the model's ``d_head``, which must be ``qk_rope_head_dim``: they turn exactly the
decoupled rotary part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import HOOKS, AttentionMask, KVCache, heads_out
from .hooks import HookPoint, hooked
from .registry import Annotated, Gt, Settings, defaults_of, doc, register


@dataclass
class LatentSettings(Settings):
    """Keys and values expanded from a compressed latent per token; queries through a low-rank bottleneck."""

    name: str = "latent"
    q_lora_rank: Annotated[int | None, Gt(0), doc("the queries' bottleneck width (DeepSeek-V3: 1536); null: one "
                                                  "full W_q")] = None
    kv_lora_rank: Annotated[int, Gt(0), doc("the latent each token's keys and values are expanded from, what the "
                                            "KV cache holds (DeepSeek-V3: 512)")] = 512
    qk_nope_head_dim: Annotated[int, Gt(0), doc("each head's query/key channels without rotation (128)")] = 128
    qk_rope_head_dim: Annotated[int | None, Gt(0), doc("the turned query/key channels, one key part shared by all "
                                                       "heads (64); null: model.d_head, the width the positions turn "
                                                       "(which it must equal)")] = None
    v_head_dim: Annotated[int, Gt(0), doc("each head's value width (128)")] = 128
    norm_eps: Annotated[float, Gt(0), doc("the epsilon of the latents' RMSNorms")] = 1e-6
    query_scale: Annotated[float | None, Gt(0), doc("what q.k is multiplied by; null: 1/sqrt(qk_nope_head_dim + "
                                                    "qk_rope_head_dim)")] = None
    SHARED = ("d_model", "n_heads", "d_head", "bias", "dropout")

    def problems(self, model):
        if self.qk_rope_head_dim is not None and model.head_dim != self.qk_rope_head_dim:
            yield "qk_rope_head_dim", self.qk_rope_head_dim, (
                f"model.d_head={model.head_dim}: the positions turn d_head channels, so latent attention needs "
                "model.d_head equal to its qk_rope_head_dim")

    @classmethod
    def neutral(cls):
        return defaults_of(cls, "query_scale")

    def canonical(self, model):
        """The rotary width and the scale spelled out."""
        rope = self.qk_rope_head_dim or model.head_dim
        scale = self.query_scale or (self.qk_nope_head_dim + rope) ** -0.5
        return {**super().canonical(model), "qk_rope_head_dim": rope, "query_scale": scale}


@register("attention", "latent", LatentSettings)
class LatentAttention(nn.Module):
    """DeepSeek's multi-head latent attention; ``forward`` has the signature of every attention component."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, bias: bool = False, dropout: float = 0.0,
                 q_lora_rank: int | None = None, kv_lora_rank: int = 512, qk_nope_head_dim: int = 128,
                 qk_rope_head_dim: int | None = None, v_head_dim: int = 128, norm_eps: float = 1e-6,
                 query_scale: float | None = None):
        super().__init__()
        qk_rope_head_dim = qk_rope_head_dim or d_head
        if d_head != qk_rope_head_dim:
            raise ValueError(f"d_head={d_head} must equal qk_rope_head_dim={qk_rope_head_dim} (the positions turn "
                             "d_head channels)")
        self.n_heads, self.nope, self.rope, self.v_dim = n_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.kv_rank = kv_lora_rank
        qk = qk_nope_head_dim + qk_rope_head_dim
        if q_lora_rank is None:
            self.q = nn.Linear(d_model, n_heads * qk, bias=False)
        else:
            self.q_a = nn.Linear(d_model, q_lora_rank, bias=bias)
            self.q_norm = nn.RMSNorm(q_lora_rank, eps=norm_eps)
            self.q_b = nn.Linear(q_lora_rank, n_heads * qk, bias=False)
        self.kv_a = nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_norm = nn.RMSNorm(kv_lora_rank, eps=norm_eps)
        self.kv_b = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o = nn.Linear(n_heads * v_head_dim, d_model, bias=bias)
        self.o.residual_projection = True
        self.scale = query_scale if query_scale is not None else 1.0 / math.sqrt(qk)
        self.dropout = dropout
        self.layer = 0
        # TransformerLens's names (components/hooks.py). q and k exist per head only after the rotation (nope and
        # rope parts joined): hook_rot_q / hook_rot_k; there is no hook_q / hook_k before it
        for name in HOOKS:
            if name not in ("hook_q", "hook_k"):
                setattr(self, name, HookPoint())

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x) if hasattr(self, "q") else self.q_b(self.q_norm(self.q_a(x)))
        return q.view(*x.shape[:2], self.n_heads, self.nope + self.rope).transpose(1, 2)

    def forward(self, x, mask: AttentionMask, positions, pos, cache: KVCache | None = None):
        b, t, _ = x.shape
        q_nope, q_rope = self.queries(x).split([self.nope, self.rope], dim=-1)
        latent, k_rope = self.kv_a(x).split([self.kv_rank, self.rope], dim=-1)
        latent = self.kv_norm(latent)[:, None]  # [B, 1, t, kv_lora_rank]
        q_rope, k_rope = positions.rotate(q_rope, k_rope[:, None], pos, pos)
        if cache is not None:  # the cache holds the latent and the shared turned key, nothing per head
            latent, k_rope = cache.extend(self.layer, latent, k_rope, pos)
        tk = latent.shape[2]
        k_nope, v = self.kv_b(latent[:, 0]).view(b, tk, self.n_heads, -1).transpose(1, 2).split(
            [self.nope, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, self.n_heads, -1, -1)), dim=-1)
        # the hooks see [batch, pos, head, ...]: q and k after the rotation (as hook_rot_q / hook_rot_k), v per head
        q, k, v = hooked(self.hook_rot_q, q), hooked(self.hook_rot_k, k), hooked(self.hook_v, v)
        if not (self.hook_attn_scores.fns or self.hook_pattern.fns or self.hook_attn_scores_unmasked.fns):
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.grid, is_causal=mask.is_causal,
                                               dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        else:  # the fused kernel makes no scores or pattern to hook
            z = self._explicit(q, k, v, mask)
        return heads_out(self.o, self.hook_z(z.transpose(1, 2)), self.hook_result)  # z: [B, T, H, v_head_dim]

    def _explicit(self, q, k, v, mask: AttentionMask):
        """Scores, mask, softmax and the weighted values step by step, each through its hook point."""
        scores = self.hook_attn_scores_unmasked((q @ k.transpose(-2, -1)) * self.scale)
        allowed = mask.dense(q.shape[2], k.shape[2], q.device)
        masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
        pattern = self.hook_pattern(self.hook_attn_scores(masked).softmax(dim=-1))
        return F.dropout(pattern, self.dropout, self.training) @ v

    @classmethod
    def formula(cls, d_model, n_heads, d_head, bias=False, dropout=0.0, q_lora_rank=None, kv_lora_rank=512,
                qk_nope_head_dim=128, qk_rope_head_dim=None, v_head_dim=128, **_) -> dict:
        qk_rope_head_dim = qk_rope_head_dim or d_head
        qk = n_heads * (qk_nope_head_dim + qk_rope_head_dim)
        b = 1 if bias else 0
        if q_lora_rank is None:
            out = {"W_q": {"weight": d_model * qk, "bias": 0}}
        else:
            out = {"W_q_a": {"weight": d_model * q_lora_rank, "bias": b * q_lora_rank},
                   "q_norm": {"weight": q_lora_rank, "bias": 0},
                   "W_q_b": {"weight": q_lora_rank * qk, "bias": 0}}
        kv_a = kv_lora_rank + qk_rope_head_dim
        out |= {"W_kv_a": {"weight": d_model * kv_a, "bias": b * kv_a},
                "kv_norm": {"weight": kv_lora_rank, "bias": 0},
                "W_kv_b": {"weight": kv_lora_rank * n_heads * (qk_nope_head_dim + v_head_dim), "bias": 0},
                "W_o": {"weight": n_heads * v_head_dim * d_model, "bias": b * d_model}}
        return out

    @classmethod
    def head_widths(cls, d_head, qk_nope_head_dim=128, qk_rope_head_dim=None, v_head_dim=128, **_) -> tuple[int, int]:
        """Each head's query/key width and value width (what the attention over the context costs per position)."""
        return qk_nope_head_dim + (qk_rope_head_dim or d_head), v_head_dim

    @classmethod
    def cache_per_token(cls, d_head, kv_lora_rank=512, qk_rope_head_dim=None, **_) -> int:
        """Numbers the KV cache holds per token and layer: the latent and the shared turned key."""
        return kv_lora_rank + (qk_rope_head_dim or d_head)
