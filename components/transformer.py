"""The one model class: token embedding + positions, a stack of blocks, final norm, unembedding.

Built from already-constructed components, so it knows nothing of configs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import AttentionMask, KVCache
from .positions import Embedding


class Block(nn.Module):
    """attention then MLP, each wrapped in a residual; norms before (``pre``) or after (``post``)."""

    def __init__(self, attention: nn.Module, mlp: nn.Module, norm_1: nn.Module, norm_2: nn.Module,
                 layout: str = "pre", dropout: float = 0.0):
        super().__init__()
        if layout not in ("pre", "post"):
            raise ValueError(f"layout must be 'pre' or 'post', got {layout!r}")
        self.norm_1, self.attention, self.norm_2, self.mlp = norm_1, attention, norm_2, mlp
        self.layout = layout
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask: AttentionMask, positions, pos, cache=None):
        if self.layout == "pre":
            x = x + self.drop(self.attention(self.norm_1(x), mask, positions, pos, cache))
            return x + self.drop(self.mlp(self.norm_2(x)))
        x = self.norm_1(x + self.drop(self.attention(x, mask, positions, pos, cache)))
        return self.norm_2(x + self.drop(self.mlp(x)))


class Transformer(nn.Module):
    """ids ``[B, T]`` → logits ``[B, T, vocab]``.

    ``attention_mask`` (``[B, T]``, 1 = token, 0 = padding) combines with the
    layer's mask kind; ``cache`` (a ``KVCache``) continues a sequence token by token.
    """

    def __init__(self, vocab_size: int, d_model: int, positions: nn.Module, blocks: list[nn.Module],
                 final_norm: nn.Module | None, mask, tie_embeddings: bool = True, dropout: float = 0.0,
                 init_std: float = 0.02):
        super().__init__()
        self.token_embedding = Embedding(vocab_size, d_model)
        self.positions = positions
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm if final_norm is not None else nn.Identity()
        self.unembedding = nn.Linear(d_model, vocab_size, bias=False)
        self.tie_embeddings = tie_embeddings
        if tie_embeddings:
            self.unembedding.weight = self.token_embedding.weight
        self.mask = mask
        for i, block in enumerate(self.blocks):
            block.attention.layer = i
        self.init_weights(init_std)

    @property
    def context_length(self) -> int | None:
        return self.positions.max_positions

    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2: N(0, std) everywhere, residual output projections N(0, std / sqrt(2 n_layers))."""
        if self.token_embedding.weight.is_meta:
            return  # built on the meta device to be counted: there are no values to draw
        scaled = std / math.sqrt(2 * len(self.blocks))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, scaled if getattr(module, "residual_projection", False) else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    def layer_masks(self, q_pos, k_pos, attention_mask=None) -> list[AttentionMask]:
        """One AttentionMask per layer; layers with the same rule share the tensor."""
        shared: dict = {}
        out = []
        tq, tk = len(q_pos), len(k_pos)
        for i in range(len(self.blocks)):
            key = self.mask.layer_key(i)
            if key not in shared:
                if attention_mask is None and self.mask.plain_causal(i) and tq == tk:
                    shared[key] = AttentionMask(None, is_causal=True)
                elif attention_mask is None and self.mask.plain_causal(i) and tq == 1:
                    shared[key] = AttentionMask(None)  # the newest token sees everything cached
                else:
                    grid = self.mask.allowed(q_pos, k_pos, i)
                    grid = None if grid is None else grid[None, None]
                    if attention_mask is not None:
                        pad = attention_mask.to(torch.bool)[:, None, None, :]
                        grid = pad if grid is None else grid & pad
                        # a query that may see nothing (padding) looks everywhere instead of making NaNs
                        grid = grid | ~grid.any(dim=-1, keepdim=True)
                    shared[key] = AttentionMask(grid)
            out.append(shared[key])
        return out

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        t = ids.shape[1]
        start = cache.length if cache is not None else 0
        limit = self.context_length
        if limit is not None and start + t > limit:
            raise ValueError(
                f"sequence of {start + t} tokens is longer than the model's positional table "
                f"(model.context_length={limit}); feed at most {limit} tokens"
            )
        pos = torch.arange(start, start + t, device=ids.device)
        k_pos = torch.arange(0, start + t, device=ids.device)
        if attention_mask is not None and attention_mask.shape[1] != start + t:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens, expected {start + t}")
        masks = self.layer_masks(pos, k_pos, attention_mask)
        x = self.drop(self.positions(self.token_embedding(ids), pos))
        for block, mask in zip(self.blocks, masks):
            x = block(x, mask, self.positions, pos, cache)
        return self.unembedding(self.final_norm(x))
