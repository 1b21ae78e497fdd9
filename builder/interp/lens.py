"""The final vector: what each layer's residual stream already predicts, and who wrote the prediction.

    lens = logit_lens(model, ids)                       # top guesses read off the stream after every layer
    parts = direct_attribution(model, ids, position=-1) # the predicted token's logit, split by head and MLP

The logit lens reads the residual stream after the embedding and after each block through the final norm and
the unembedding, as if the model stopped there; after the last block that is exactly the model's prediction.

Both read the model's named hook points (components/hooks.py): the streams at ``blocks.0.hook_resid_pre`` and
``blocks.{l}.hook_resid_post``. Direct attribution writes the last residual stream as the sum of what wrote it — the
embeddings, each head's update (``blocks.{l}.attn.hook_result``), each layer's W_o bias and each MLP's output
(``blocks.{l}.hook_mlp_out``) — and passes every part through
the final norm with the norm's scale frozen at the full stream's (its centring and gain are linear), then through
the predicted token's unembedding row. The parts add up to the logit (the final norm's bias is its own part).
That holds for the ``pre`` and ``parallel`` layouts, where every sublayer adds to the stream directly; a ``post``
or ``sandwich`` layout normalises inside the stream and is refused, and a final soft-cap is undone (the parts add up
to the logit before the cap, reported beside it).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

ADDITIVE_LAYOUTS = ("pre", "parallel")


def stream_names(model: nn.Module) -> list[str]:
    """The hook points holding the stream after the embedding and after each block."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(len(model.blocks))]


@torch.no_grad()
def residual_streams(model: nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The stream after the embedding and after each block (``n_layers + 1`` tensors ``[B, T, d_model]``) and the
    model's logits, from one forward pass."""
    names = stream_names(model)
    logits, cache = model.run_with_cache(ids, names_filter=names)
    return [cache[name] for name in names], logits


def read_out(model: nn.Module, stream: torch.Tensor) -> torch.Tensor:
    """Logits of a residual stream: the final norm, the unembedding and the final soft-cap, as the model does."""
    logits = model.unembedding(model.final_norm(stream))
    cap = getattr(model, "final_softcap", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


@torch.no_grad()
def logit_lens(model: nn.Module, ids: torch.Tensor, top_k: int = 5) -> dict:
    """For each stream (``embedding``, then after each layer) and position: the top ``top_k`` token ids and their
    probabilities, and the model's own prediction. ``ids``: ``[1, T]``."""
    was_training = model.training
    model.eval()
    try:
        streams, logits = residual_streams(model, ids)
        probs = [read_out(model, s)[0].float().softmax(-1) for s in streams]
    finally:
        model.train(was_training)
    tops = [p.topk(min(top_k, p.shape[-1]), dim=-1) for p in probs]
    return {
        "labels": ["embedding"] + [f"after layer {i}" for i in range(len(streams) - 1)],
        "top_ids": [t.indices.tolist() for t in tops],  # [stream][position][k]
        "top_probs": [t.values.tolist() for t in tops],
        "prediction": logits[0].argmax(-1).tolist(),
    }


def _norm_parts(norm: nn.Module, parts: dict[str, torch.Tensor], full: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each part through ``norm`` with its scale frozen at ``full``'s: the parts' images add up to ``norm(full)``."""
    if isinstance(norm, nn.Identity):
        return dict(parts)
    eps = norm.eps if norm.eps is not None else torch.finfo(full.dtype).eps
    if isinstance(norm, nn.LayerNorm):
        scale = (full.var(-1, unbiased=False, keepdim=True) + eps).rsqrt()
        gain = norm.weight if norm.weight is not None else 1.0
        out = {k: (v - v.mean(-1, keepdim=True)) * scale * gain for k, v in parts.items()}
        if norm.bias is not None:
            out["final norm bias"] = norm.bias.expand_as(full)
        return out
    if isinstance(norm, nn.RMSNorm):
        scale = (full.float().pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        gain = norm.weight.float() + (1.0 if getattr(norm, "unit_offset", False) else 0.0)
        return {k: v.float() * scale * gain for k, v in parts.items()}
    raise ConfigError("model.norm", type(norm).__name__, "a layernorm or rmsnorm final norm, whose scale can be "
                      "frozen to split the logit into parts")


@torch.no_grad()
def direct_attribution(model: nn.Module, ids: torch.Tensor, position: int = -1, token: int | None = None) -> dict:
    """The logit of ``token`` (default: the model's prediction) at ``position``, split into the embeddings, each
    head of each layer, each layer's W_o bias and each MLP. Returns ``parts`` (name -> logit share), ``logit``
    (the model's, before any final soft-cap), ``total`` (the parts' sum) and ``token``."""
    layout = getattr(model.blocks[0], "layout", "pre")
    if layout not in ADDITIVE_LAYOUTS:
        raise ConfigError("model.norm.layout", layout, f"one of {', '.join(ADDITIVE_LAYOUTS)}: a layout whose "
                          "sublayers add straight into the residual stream, so its parts add up to the logit")
    was_training = model.training
    model.eval()
    n = len(model.blocks)
    names = stream_names(model)[::n] + [f"blocks.{i}.{point}" for i in range(n)
                                       for point in ("attn.hook_result", "hook_mlp_out")]
    try:  # one forward pass reads the first and last streams, each head's update and each MLP's output
        _, cache = model.run_with_cache(ids, names_filter=names)
    finally:
        model.train(was_training)
    pos = position % ids.shape[1]
    parts = {"embeddings": cache[names[0]][0, pos]}
    for layer, block in enumerate(model.blocks):
        result = cache[f"blocks.{layer}.attn.hook_result"][0, pos]  # [H, d_model]
        for head in range(result.shape[0]):
            parts[f"L{layer}H{head}"] = result[head]
        if block.attention.o.bias is not None:
            parts[f"L{layer} attention bias"] = block.attention.o.bias
        parts[f"L{layer} MLP"] = cache[f"blocks.{layer}.hook_mlp_out"][0, pos]
    final = cache[names[1]][0, pos]
    normed = _norm_parts(model.final_norm, parts, final)
    logits = model.unembedding(model.final_norm(final))
    token = int(logits.argmax()) if token is None else token
    row = model.unembedding.weight[token].float()
    shares = {name: float(v.float() @ row) for name, v in normed.items()}
    return {"token": token, "position": pos, "parts": shares, "total": sum(shares.values()),
            "logit": float(logits[token])}
