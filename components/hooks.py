"""Named hook points: read and edit any activation, with TransformerLens's names and layouts.

    def zero_head(z, hook):            # z: [batch, pos, head, d_head]
        z[:, :, 3] = 0
        return z                       # a returned tensor replaces the activation; None keeps it
    logits = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    logits, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))
    cache["blocks.0.attn.hook_pattern"]  # [batch, head, query, key]; also cache["pattern", 0]

Every :class:`HookPoint` is an identity until a function is attached; the model's code calls it where the
activation is made, so a function sees (and may replace) exactly what flows on. The names and layouts are
TransformerLens's:

==============================================  =================================  ===================================
name                                            layout                             what
==============================================  =================================  ===================================
``hook_embed``                                  [batch, pos, d_model]              token embeddings (scaled, Gemma)
``hook_pos_embed``                              [batch, pos, d_model]              learned positions' vectors only
``blocks.{l}.hook_resid_pre``                   [batch, pos, d_model]              the stream entering block l
``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``  [batch, pos, d_model]              what attention / the MLP adds
``blocks.{l}.hook_resid_mid``                   [batch, pos, d_model]              between the two (not ``parallel``)
``blocks.{l}.hook_resid_post``                  [batch, pos, d_model]              the stream leaving block l
``blocks.{l}.attn.hook_q``                      [batch, pos, head, d_head]         queries (after a q/k norm)
``blocks.{l}.attn.hook_k`` / ``hook_v``          [batch, pos, kv_head, d_head]      keys / values: one per *key/value*
                                                                                   head (grouped-query attention:
                                                                                   n_kv_heads, as TransformerLens)
``blocks.{l}.attn.hook_rot_q`` / ``hook_rot_k``  as hook_q / hook_k                after the positions' rotation
``blocks.{l}.attn.hook_attn_scores``            [batch, head, query, key]          scaled (soft-capped) q·k, masked
                                                                                   cells -inf
``blocks.{l}.attn.hook_pattern``                [batch, head, query, key]          after the softmax
``blocks.{l}.attn.hook_z``                      [batch, pos, head, d_head]         each head's weighted values
``blocks.{l}.attn.hook_result``                 [batch, pos, head, d_model]        each head's update (W_o's bias is
                                                                                   added after the sum over heads)
``blocks.{l}.mlp.hook_router_logits``           [batch, pos, n_experts]            a mixture of experts' router
                                                                                   logits (float32), before scoring;
                                                                                   an edit changes the choice
``blocks.{l}.mlp.hook_expert_weights``          [batch, pos, top_k]                the chosen experts' weights
``blocks.{l}.mlp.hook_expert_indices``          [batch, pos, top_k] (int64)        the experts each token goes to
``ln_final.hook_normalized``                    [batch, pos, d_model]              the stream after the final norm
==============================================  =================================  ===================================

(``blocks.{l}.attn.hook_attn_scores_unmasked`` — the scores before the mask, which the lecture's pictures draw —
is ours alone.) The mixture-of-experts points exist only in the layers that have experts; ``hook_expert_weights``
and ``hook_expert_indices`` are TransformerLens's MoE names and layouts, ``hook_router_logits`` (the logits over
every expert) is ours. With nothing attached a hook point costs one attribute test; the scores and the pattern, which
the fused attention kernel never makes, are computed only while a function is attached to one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from .registry import closest

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """An identity with a name, to which functions ``fn(activation, hook)`` attach; each may return a tensor that
    replaces the activation (the next function sees the replacement). Holds no parameters or buffers, so a model's
    state dict does not change."""

    def __init__(self):
        super().__init__()
        self.name: str = ""
        self.fns: list[HookFn] = []

    def __call__(self, x):  # nothing attached: not even nn.Module's call machinery runs
        return self.forward(x) if self.fns else x

    def forward(self, x):
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x

    def layer(self) -> int | None:
        """The block this point belongs to (``blocks.3.attn.hook_z`` -> 3), None outside the blocks."""
        parts = self.name.split(".")
        return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else None

    def extra_repr(self) -> str:
        return f"{self.name!r}, {len(self.fns)} attached" if self.fns else repr(self.name)


def hooked(point: HookPoint, x: torch.Tensor, dims: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """``point`` applied to ``x`` seen with ``dims`` swapped (attention keeps heads before positions; the hooks see
    TransformerLens's [batch, pos, head, ...]); ``x`` itself when nothing is attached."""
    return point(x.transpose(*dims)).transpose(*dims) if point.fns else x


# TransformerLens's short names: cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
_IN_ATTN = ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "attn_scores_unmasked", "pattern", "z", "result")


def act_name(name: str, layer: int | None = None) -> str:
    """The full hook name from a short one: ``act_name("pattern", 0)`` -> ``blocks.0.attn.hook_pattern``;
    ``act_name("resid_post", 2)`` -> ``blocks.2.hook_resid_post``; ``act_name("embed")`` -> ``hook_embed``."""
    if "." in name or name.startswith("hook_"):
        return name
    if name in ("scores", "attn"):
        name = {"scores": "attn_scores", "attn": "pattern"}[name]
    if layer is None:
        return "ln_final.hook_normalized" if name == "normalized" else f"hook_{name}"
    return f"blocks.{layer}.attn.hook_{name}" if name in _IN_ATTN else f"blocks.{layer}.hook_{name}"


class ActivationCache(dict):
    """What :meth:`HookedModel.run_with_cache` recorded: name -> tensor; also indexable as ``cache["z", 1]``."""

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = act_name(*key)
        try:
            return super().__getitem__(key)
        except KeyError:
            raise KeyError(f"{key!r} was not cached; cached: {', '.join(self) or 'nothing'}") from None


def _matcher(names) -> Callable[[str], bool]:
    """A hook name filter from None (every name), a name, a list of names or a predicate."""
    if names is None:
        return lambda name: True
    if callable(names):
        return names
    if isinstance(names, str):
        return lambda name: name == names
    chosen = set(names)
    return lambda name: name in chosen


class HookedModel:
    """What a model with named hook points offers (a mixin: the model sets ``hook_dict`` with :meth:`name_hooks`)."""

    hook_dict: dict[str, HookPoint]

    def name_hooks(self) -> None:
        """Name every :class:`HookPoint` of the model: the blocks' as ``blocks.{l}.<name>``, their attention's as
        ``blocks.{l}.attn.<name>``, the final norm's as ``ln_final.hook_normalized``, the rest by their own name."""
        names: dict[str, HookPoint] = {}
        for path, module in self.named_modules():
            if not isinstance(module, HookPoint):
                continue
            parts = path.split(".")
            if parts[0] == "blocks" and len(parts) == 4 and parts[2] == "attention":  # blocks.{l}.attention.hook_x
                parts[2] = "attn"
            name = "ln_final.hook_normalized" if path == "hook_final_normalized" else ".".join(parts)
            module.name = name
            names[name] = module
        self.hook_dict = dict(sorted(names.items(), key=lambda item: _running_order(item[0])))

    def hook_points(self, names=None) -> list[HookPoint]:
        """The hook points whose names ``names`` (None, a name, a list or a predicate) selects; an unknown name is
        an error naming the known ones."""
        if isinstance(names, str) and names not in self.hook_dict:
            raise KeyError(_unknown(names, self.hook_dict))
        if isinstance(names, (list, tuple, set, frozenset)):
            for name in names:
                if name not in self.hook_dict:
                    raise KeyError(_unknown(name, self.hook_dict))
        match = _matcher(names)
        return [point for name, point in self.hook_dict.items() if match(name)]

    @contextmanager
    def hooks(self, fwd_hooks=()):
        """Attach ``fwd_hooks`` (pairs of a name or predicate and a function) while open; every one is removed on
        leaving, whatever happens inside."""
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for names, fn in fwd_hooks:
                for point in self.hook_points(names):
                    point.fns.append(fn)
                    attached.append((point, fn))
            yield self
        finally:
            for point, fn in reversed(attached):
                point.fns.remove(fn)

    def run_with_hooks(self, *args, fwd_hooks=(), **kwargs):
        """The model's output with ``fwd_hooks`` attached for this one call (TransformerLens's call shape)."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter=None, fwd_hooks=(), **kwargs):
        """``(output, cache)``: the activations at every hook point ``names_filter`` selects (None: all), detached.
        ``fwd_hooks`` run too, before the recording: the cache holds what flowed on."""
        cache = ActivationCache()

        def keep(x, hook):
            cache[hook.name] = x.detach()

        with self.hooks([*fwd_hooks, (names_filter if names_filter is not None else (lambda name: True), keep)]):
            out = self(*args, **kwargs)
        return out, cache


_BLOCK_ORDER = ("hook_resid_pre", "attn.", "hook_attn_out", "hook_resid_mid", "mlp.", "hook_mlp_out",
                "hook_resid_post")


def _running_order(name: str) -> tuple:
    """Sorts hook names in the order a forward pass reaches them: embeddings, block by block, the final norm."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        rest = ".".join(parts[2:])
        rank = next((i for i, p in enumerate(_BLOCK_ORDER) if rest.startswith(p)), len(_BLOCK_ORDER))
        return (1, int(parts[1]), rank)
    return (2 if name.startswith("ln_final") else 0, 0, 0)


def _unknown(name: str, known) -> str:
    return (f"no hook point named {name!r}{closest(name, known)}; this model has {len(known)}: "
            f"{', '.join(list(known)[:8])}, ...")
