"""Record what every attention head does, without changing a single logit.

    with builder.capture_attention(model) as rec:
        logits = model(ids)
    rec.pattern(0)   # [B, H, T, T]: rows sum to 1, masked cells exactly 0
    rec.kv_head(0, 5)  # which key/value head query head 5 reads (grouped-query attention)
    rec.mask_note(1)   # "causal", "band 4" (a sliding-window layer), "bidirectional", "prefix 16", ...
    rec.routing(0)     # a mixture-of-experts layer: router_logits [B, T, E], experts / expert_weights [B, T, k]

The capture stands on the model's named hook points (components/hooks.py): while the context is open it reads
``blocks.{l}.attn.hook_*`` and keeps what it was asked for. Asking for the scores, the mask or the pattern makes
each attention layer run its explicit path (scores, mask, softmax, weighted sum); q, k, v, z and each head's result
come from the fused kernel's path as they are. Outside it the fused kernel runs as usual.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

FIELDS = ("q", "k", "v", "scores", "mask", "pattern", "z", "result")
ROUTING_FIELDS = ("router_logits", "expert_weights", "experts")  # recorded only in mixture-of-experts layers


class AttentionRecord:
    """Tensors per layer, detached: q, k, v ``[B, H, T, d_head]``, scores / pattern ``[B, H, Tq, Tk]``,
    mask ``[B|1, 1, Tq, Tk]`` (True = may attend, None = all), z (weighted values) and result
    (each head's update to the residual stream, ``[B, H, T, d_model]``). k and v are repeated to one per query
    head; with a KV cache they are the new tokens' (the scores and the pattern cover every key)."""

    def __init__(self, fields=None, layers=None):
        """``fields`` / ``layers``: keep only these (default: every field of every layer) — a long input of a
        big model records ``[B, H, T, d_model]`` per layer for ``result`` alone."""
        self.fields = None if fields is None else frozenset(fields)
        self.only = None if layers is None else frozenset(layers)
        self.layers: dict[int, dict[str, torch.Tensor]] = {}
        self.heads: dict[int, tuple[int, int]] = {}  # layer -> (n_heads, n_kv_heads), from the modules
        self.notes: dict[int, str] = {}  # layer -> its mask rule in words (mask_note), from the model's rule

    def __call__(self, layer: int, tensors: dict) -> None:
        """Keep ``tensors`` (field -> tensor) of ``layer``, detached, if asked for."""
        if self.only is not None and layer not in self.only:
            return
        kept = self.layers.setdefault(layer, {})
        kept.update({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()
                     if self.fields is None or k in self.fields})

    def get(self, field: str, layer: int):
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; recorded layers: {sorted(self.layers)}")
        if field not in self.layers[layer]:
            raise KeyError(f"{field!r} was not recorded; recorded fields: {sorted(self.layers[layer])}")
        return self.layers[layer][field]

    def q(self, layer: int):
        return self.get("q", layer)

    def k(self, layer: int):
        return self.get("k", layer)

    def v(self, layer: int):
        return self.get("v", layer)

    def scores(self, layer: int):
        """Scaled q·k before the mask."""
        return self.get("scores", layer)

    def mask(self, layer: int):
        return self.get("mask", layer)

    def pattern(self, layer: int):
        """After mask and softmax: ``[B, H, Tq, Tk]``."""
        return self.get("pattern", layer)

    def result(self, layer: int):
        """Each head's update to the residual stream: ``[B, H, T, d_model]``."""
        return self.get("result", layer)

    def routing(self, layer: int) -> dict[str, torch.Tensor]:
        """A mixture-of-experts layer's routing, as its hook points hold it: ``router_logits`` ``[B, T, n_experts]``,
        ``experts`` (the chosen ones) and ``expert_weights`` (theirs) ``[B, T, top_k]``."""
        return {field: self.get(field, layer) for field in ROUTING_FIELDS}

    def routed_layers(self) -> list[int]:
        """The recorded layers that hold a routing (mixture-of-experts layers, when ROUTING_FIELDS were asked for)."""
        return sorted(layer for layer, kept in self.layers.items() if "experts" in kept)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def n_kv_heads(self, layer: int) -> int:
        """Key/value heads of ``layer`` (equal to its query heads for multi-head attention)."""
        return self.heads[layer][1] if layer in self.heads else self.pattern(layer).shape[1]

    def kv_head(self, layer: int, head: int) -> int:
        """The key/value head query head ``head`` of ``layer`` reads."""
        n_heads, n_kv = self.heads.get(layer, (None, None))
        return head if n_heads is None else kv_head_of(head, n_heads, n_kv)

    def sharing(self, layer: int, head: int) -> list[int]:
        """Every query head of ``layer`` that reads the same key/value head as ``head`` (itself included)."""
        n_heads, n_kv = self.heads.get(layer, (None, None))
        return [head] if n_heads is None else kv_group(self.kv_head(layer, head), n_heads, n_kv)

    def mask_note(self, layer: int) -> str:
        """The layer's mask in words: from the model's rule when known, else from the recorded grid."""
        if layer in self.notes:
            return self.notes[layer]
        m = self.mask(layer)
        return describe_grid(None if m is None else m[0, 0])


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [block.attention for block in model.blocks]


# ---------------------------------------------------------------------------------- grouped-query heads


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """Grouped-query attention: query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``."""
    if n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
    return head // (n_heads // n_kv_heads)


def kv_group(kv: int, n_heads: int, n_kv_heads: int) -> list[int]:
    """The query heads that read key/value head ``kv``."""
    size = n_heads // n_kv_heads
    return list(range(kv * size, (kv + 1) * size))


def head_layout(model: nn.Module) -> list[tuple[int, int] | None]:
    """``(n_heads, n_kv_heads)`` of every layer (a module without ``n_kv_heads`` has one per query head; None for
    one that does not say how many heads it has)."""
    out = []
    for m in attention_modules(model):
        n_heads = getattr(m, "n_heads", None)
        if n_heads is None:
            out.append(None)
            continue
        out.append((int(n_heads), int(getattr(m, "n_kv_heads", None) or n_heads)))
    return out


# ---------------------------------------------------------------------------------------------- masks


def describe_grid(allowed) -> str:
    """A ``[T, T]`` boolean grid (True = may attend; None = everything) in words:
    ``"bidirectional"``, ``"causal"``, ``"band W"`` (a token sees itself and the W - 1 before it),
    ``"prefix P"`` or ``"custom"``. A band at least as wide as the grid reads as causal."""
    if allowed is None:
        return "bidirectional"
    if isinstance(allowed, torch.Tensor):
        a = allowed.detach().to(torch.bool).cpu()
    else:  # numpy (the page's masks): copied, so a read-only array is fine
        a = torch.tensor(np.asarray(allowed, dtype=bool))
    t = a.shape[-1]
    if a.ndim != 2 or a.shape[0] != t:
        return "custom"
    if bool(a.all()):
        return "bidirectional"
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    if torch.equal(a, causal):
        return "causal"
    width = int(a.sum(dim=1).max())
    if torch.equal(a, causal & ~causal.tril(-width)):
        return f"band {width}"
    prefix = int(a[0].sum())
    if torch.equal(a, causal | (torch.arange(t)[None, :] < prefix)):
        return f"prefix {prefix}"
    return "custom"


def describe_rule(rule, layer: int) -> str | None:
    """A model's mask rule (``components/masks.py``: ``allowed(q_pos, k_pos, layer)``) for ``layer`` in words,
    probed on enough positions that a band shows as one even where a given input is shorter than it."""
    allowed = getattr(rule, "allowed", None)
    if allowed is None:
        return None
    for name in ("window", "prefix"):
        value = getattr(rule, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return None
    n = max(int(getattr(rule, "window", 0) or 0), int(getattr(rule, "prefix", 0) or 0), 6) + 2
    pos = torch.arange(n)
    try:
        grid = allowed(pos, pos, layer)
    except Exception:  # an unusual rule: fall back to the recorded grid
        return None
    return describe_grid(grid)


def mask_notes(model: nn.Module) -> list[str | None]:
    """Every layer's mask rule in words (None where the model has no rule this can read)."""
    rule = getattr(model, "mask", None)
    seen: dict = {}
    out = []
    for i in range(len(model.blocks)):
        try:
            key = ("key", rule.layer_key(i)) if hasattr(rule, "layer_key") else ("layer", i)
        except Exception:
            key = ("layer", i)
        if key not in seen:
            seen[key] = describe_rule(rule, i)
        out.append(seen[key])
    return out


# ------------------------------------------------------------------------------------------- capture


# field -> (the hook point it is read from, how the hook's TransformerLens layout becomes the record's)
_HEADS_FIRST = lambda x, repeat: x.transpose(1, 2)  # noqa: E731 - [B, T, H, ...] -> [B, H, T, ...]
_SOURCES = {
    "q": ("hook_rot_q", _HEADS_FIRST),
    "k": ("hook_rot_k", lambda x, repeat: x.transpose(1, 2).repeat_interleave(repeat, dim=1)),
    "v": ("hook_v", lambda x, repeat: x.transpose(1, 2).repeat_interleave(repeat, dim=1)),
    "scores": ("hook_attn_scores_unmasked", lambda x, repeat: x),
    "mask": ("hook_attn_scores", lambda x, repeat: _allowed(x)),
    "pattern": ("hook_pattern", lambda x, repeat: x),
    "z": ("hook_z", _HEADS_FIRST),
    "result": ("hook_result", _HEADS_FIRST),
}
# a mixture of experts' routing: blocks.{l}.mlp.<hook>, kept in TransformerLens's [B, T, ...] layout
_MLP_SOURCES = {"router_logits": "hook_router_logits", "expert_weights": "hook_expert_weights",
                "experts": "hook_expert_indices"}


def _allowed(masked_scores: torch.Tensor) -> torch.Tensor | None:
    """The cells the mask let through (``[B, 1, Tq, Tk]``, True = may attend), from the masked scores (-inf where
    masked); None when nothing is masked."""
    allowed = masked_scores[:, :1].isfinite()
    return None if bool(allowed.all()) else allowed


@contextmanager
def capture_attention(model: nn.Module, fields=None, layers=None):
    """Record every attention layer while open (``fields`` / ``layers``: keep only these; see AttentionRecord), by
    reading the model's ``blocks.{l}.attn.hook_*`` points; in a mixture-of-experts layer also its routing
    (ROUTING_FIELDS, from ``blocks.{l}.mlp.hook_router_logits`` / ``hook_expert_weights`` /
    ``hook_expert_indices``: ``rec.routing(layer)``)."""
    record = AttentionRecord(fields, layers)
    modules = attention_modules(model)
    for i, (layout, note) in enumerate(zip(head_layout(model), mask_notes(model))):
        if layout is not None:
            record.heads[i] = layout
        if note is not None:
            record.notes[i] = note
    hooks = []
    for i, layout in enumerate(head_layout(model)):
        if record.only is not None and i not in record.only:
            continue
        repeat = 1 if layout is None else layout[0] // layout[1]
        for field, (point, convert) in _SOURCES.items():
            if (record.fields is None or field in record.fields) and hasattr(modules[i], point):
                hooks.append((f"blocks.{i}.attn.{point}", _keeper(record, i, field, convert, repeat)))
        for field, point in _MLP_SOURCES.items():
            if (record.fields is None or field in record.fields) and hasattr(model.blocks[i].mlp, point):
                hooks.append((f"blocks.{i}.mlp.{point}", _keeper(record, i, field, lambda x, repeat: x, 1)))
    with model.hooks(hooks):
        yield record


def _keeper(record: AttentionRecord, layer: int, field: str, convert, repeat: int):
    def keep(x, hook):
        record(layer, {field: convert(x.detach(), repeat)})
    return keep


def record(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, fields=None,
           layers=None) -> AttentionRecord:
    """Run ``model`` once on ``ids`` (moved to the model's device) in eval mode without gradients, and return
    what every head did (``fields`` / ``layers``: only these); the model's training mode is put back, whatever
    happens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_attention(model, fields, layers) as rec:
            model(ids.to(device), attention_mask=None if attention_mask is None else attention_mask.to(device))
    finally:
        model.train(was_training)
    return rec


def head_mask(rec: AttentionRecord, layer: int, t: int) -> torch.Tensor:
    """Layer ``layer``'s mask for the first row as ``[T, T]`` booleans on the CPU (all True when unmasked)."""
    m = rec.mask(layer)
    return torch.ones(t, t, dtype=torch.bool) if m is None else m[0, 0].cpu()
