"""The one model class: token embedding + positions, a stack of blocks, final norm, unembedding.

Built from already-constructed components, so it knows nothing of configs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionMask, KVCache, StaticKVCache
from .hooks import HookedModel, HookPoint
from .positions import Embedding

LAYOUTS = ("pre", "post", "parallel", "sandwich")


def _same(x):
    return x


class Block(nn.Module):
    """Attention then MLP, each wrapped in a residual. Where the norms sit is the ``layout``:

    - ``pre``:      x + attn(norm_1(x)), then h + mlp(norm_2(h))                       (GPT-2, Llama)
    - ``post``:     norm_1(x + attn(x)), then norm_2(h + mlp(h))                       (the original transformer)
    - ``parallel``: x + attn(norm_1(x)) + mlp(norm_2(x)): both read the same input    (GPT-NeoX, Pythia)
    - ``sandwich``: x + post_norm_1(attn(norm_1(x))), then h + post_norm_2(mlp(norm_2(h)))  (Gemma 2)
    """

    def __init__(self, attention: nn.Module, mlp: nn.Module, norm_1: nn.Module, norm_2: nn.Module,
                 layout: str = "pre", dropout: float = 0.0, post_norm_1: nn.Module | None = None,
                 post_norm_2: nn.Module | None = None):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if (layout == "sandwich") != (post_norm_1 is not None and post_norm_2 is not None):
            raise ValueError("the sandwich layout, and only it, takes post_norm_1 and post_norm_2")
        self.norm_1, self.attention, self.norm_2, self.mlp = norm_1, attention, norm_2, mlp
        if layout == "sandwich":
            self.post_norm_1, self.post_norm_2 = post_norm_1, post_norm_2
        self.layout = layout
        self.drop = nn.Dropout(dropout)
        # TransformerLens's residual hook points (components/hooks.py); resid_mid never runs in the parallel layout
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x, mask: AttentionMask, positions, pos, cache=None):
        drop = self.drop if self.drop.p else _same  # no dropout module call per sublayer when p = 0
        x = self.hook_resid_pre(x)
        if self.layout == "parallel":
            attended = self.hook_attn_out(drop(self.attention(self.norm_1(x), mask, positions, pos, cache)))
            return self.hook_resid_post(x + attended + self.hook_mlp_out(drop(self.mlp(self.norm_2(x)))))
        if self.layout == "post":
            x = self.hook_resid_mid(self.norm_1(x + self.hook_attn_out(drop(self.attention(x, mask, positions, pos,
                                                                                                cache)))))
            return self.hook_resid_post(self.norm_2(x + self.hook_mlp_out(drop(self.mlp(x)))))
        post_1, post_2 = (self.post_norm_1, self.post_norm_2) if self.layout == "sandwich" else (_same, _same)
        x = self.hook_resid_mid(x + self.hook_attn_out(drop(post_1(self.attention(self.norm_1(x), mask, positions,
                                                                                    pos, cache)))))
        return self.hook_resid_post(x + self.hook_mlp_out(drop(post_2(self.mlp(self.norm_2(x))))))

    def norms(self) -> list[nn.Module]:
        """Every norm of the block, in the order they run."""
        extra = [self.post_norm_1, self.post_norm_2] if self.layout == "sandwich" else []
        return [self.norm_1, self.norm_2, *extra]


class Transformer(HookedModel, nn.Module):
    """ids ``[B, T]`` → logits ``[B, T, vocab]``.

    Named hook points (TransformerLens's: ``hook_embed``, ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_z``,
    ``ln_final.hook_normalized``, ...; components/hooks.py) read and edit activations: ``run_with_hooks``,
    ``run_with_cache``, ``hook_dict``.

    ``attention_mask`` (``[B, T]``, 1 = token, 0 = padding) combines with the
    layer's mask kind; ``cache`` (a ``KVCache``) continues a sequence token by token.
    ``scale_embeddings`` multiplies the token embeddings by sqrt(d_model) (Gemma); ``final_softcap`` turns the
    logits into cap·tanh(logits/cap) (Gemma 2).
    """

    def __init__(self, vocab_size: int, d_model: int, positions: nn.Module, blocks: list[nn.Module],
                 final_norm: nn.Module | None, mask, tie_embeddings: bool = True, dropout: float = 0.0,
                 init_std: float = 0.02, scale_embeddings: bool = False, final_softcap: float | None = None):
        super().__init__()
        if final_softcap is not None and final_softcap <= 0:
            raise ValueError(f"final_softcap must be positive, got {final_softcap!r}")
        self.embedding_scale = math.sqrt(d_model) if scale_embeddings else None
        self.final_softcap = final_softcap
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
        self.checkpoint_blocks = False  # set_activation_checkpointing
        for i, block in enumerate(self.blocks):
            block.attention.layer = i
        self.hook_embed, self.hook_final_normalized = HookPoint(), HookPoint()  # the latter: ln_final.hook_normalized
        if hasattr(positions, "table"):  # learned positions: TransformerLens's hook_pos_embed
            self.hook_pos_embed = HookPoint()
        self.name_hooks()
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
            elif hasattr(module, "init_parameters"):  # weights held outside nn.Linear (a mixture of experts')
                module.init_parameters(std, scaled)

    def set_activation_checkpointing(self, on: bool = True) -> None:
        """While training, each block keeps only its input and recomputes its activations in the backward pass
        (``torch.utils.checkpoint``, non-reentrant, the random state kept: dropout draws the same)."""
        self.checkpoint_blocks = bool(on)

    def _run_block(self, block, x, mask, pos, cache):
        if self.checkpoint_blocks and cache is None and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, mask, self.positions, pos, cache, use_reentrant=False)
        return block(x, mask, self.positions, pos, cache)

    def layer_masks(self, q_pos, k_pos, attention_mask=None, filled=None) -> list[AttentionMask]:
        """One AttentionMask per layer; layers with the same rule share the tensor.

        ``filled`` (a position tensor): keys past it are slots of a :class:`StaticKVCache` not written yet, hidden
        whatever the rule."""
        shared: dict = {}
        out = []
        tq, tk = len(q_pos), len(k_pos)
        plain = attention_mask is None and filled is None
        for i in range(len(self.blocks)):
            key = self.mask.layer_key(i)
            if key not in shared:
                if plain and self.mask.plain_causal(i) and tq == tk:
                    shared[key] = AttentionMask(None, is_causal=True)
                elif plain and self.mask.plain_causal(i) and tq == 1:
                    shared[key] = AttentionMask(None)  # the newest token sees everything cached
                else:
                    grid = self.mask.allowed(q_pos, k_pos, i)
                    if filled is not None:
                        written = k_pos[None, :] <= filled
                        grid = written if grid is None else grid & written
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
                cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        t = ids.shape[1]
        limit = self.context_length
        if isinstance(cache, StaticKVCache):  # positions as tensors: nothing here changes from one token to the next
            if attention_mask is not None:
                raise ValueError("attention_mask is not supported with a StaticKVCache (it decodes unpadded rows)")
            if limit is not None and cache.capacity > limit:
                raise ValueError(f"a StaticKVCache of capacity {cache.capacity} is longer than the model's "
                                 f"positional table (model.context_length={limit})")
            pos = cache.positions(t)
            masks = self.layer_masks(pos, cache.slots, filled=pos[-1])
        else:
            start = cache.length if cache is not None else 0
            if limit is not None and start + t > limit:
                raise ValueError(
                    f"sequence of {start + t} tokens is longer than the model's positional table "
                    f"(model.context_length={limit}); feed at most {limit} tokens"
                )
            pos = torch.arange(start, start + t, device=ids.device)
            k_pos = pos if start == 0 else torch.arange(0, start + t, device=ids.device)
            if attention_mask is not None and attention_mask.shape[1] != start + t:
                raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens, expected {start + t}")
            masks = self.layer_masks(pos, k_pos, attention_mask)
        x = self.token_embedding(ids)
        if self.embedding_scale is not None:  # the factor rounded to the activations' dtype first, as Gemma does
            x = x * torch.tensor(self.embedding_scale, dtype=x.dtype, device=x.device)
        x = self.hook_embed(x)
        pos_hook = getattr(self, "hook_pos_embed", None)
        if pos_hook is not None and pos_hook.fns:  # [batch, pos, d_model], a copy per row that a hook may edit
            x = x + pos_hook(self.positions.table(pos).repeat(x.shape[0], 1, 1))
        else:
            x = self.positions(x, pos)
        if self.drop.p:
            x = self.drop(x)
        for block, mask in zip(self.blocks, masks):
            x = self._run_block(block, x, mask, pos, cache)
        if isinstance(cache, StaticKVCache):
            cache.advance(t)
        if last_only:  # the next token's logits only (generation): the unembedding is the largest matmul per token
            x = x[:, -1:]
        logits = self.unembedding(self.hook_final_normalized(self.final_norm(x)))
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits
