"""Record what every attention head does, without changing a single logit.

    with builder.capture_attention(model) as rec:
        logits = model(ids)
    rec.pattern(0)   # [B, H, T, T]: rows sum to 1, masked cells exactly 0

While the context is open, each attention layer runs its explicit path (scores, mask,
softmax, weighted sum) and hands the tensors to the recorder; outside it the fused
kernel runs as usual.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

FIELDS = ("q", "k", "v", "scores", "mask", "pattern", "z", "result")


class AttentionRecord:
    """Tensors per layer, detached: q, k, v ``[B, H, T, d_head]``, scores / pattern ``[B, H, Tq, Tk]``,
    mask ``[B|1, 1, Tq, Tk]`` (True = may attend, None = all), z (weighted values) and result
    (each head's update to the residual stream, ``[B, H, T, d_model]``)."""

    def __init__(self):
        self.layers: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, layer: int, tensors: dict) -> None:
        self.layers[layer] = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()}

    def get(self, field: str, layer: int):
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; recorded layers: {sorted(self.layers)}")
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

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [block.attention for block in model.blocks]


@contextmanager
def capture_attention(model: nn.Module):
    record = AttentionRecord()
    modules = attention_modules(model)
    previous = [m.recorder for m in modules]
    for m in modules:
        m.recorder = record
    try:
        yield record
    finally:
        for m, prev in zip(modules, previous):
            m.recorder = prev


def record(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> AttentionRecord:
    """Run ``model`` once on ``ids`` (moved to the model's device) in eval mode without gradients, and return
    what every head did; the model's training mode is put back, whatever happens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_attention(model) as rec:
            model(ids.to(device), attention_mask=None if attention_mask is None else attention_mask.to(device))
    finally:
        model.train(was_training)
    return rec


def head_mask(rec: AttentionRecord, layer: int, t: int) -> torch.Tensor:
    """Layer ``layer``'s mask for the first row as ``[T, T]`` booleans on the CPU (all True when unmasked)."""
    m = rec.mask(layer)
    return torch.ones(t, t, dtype=torch.bool) if m is None else m[0, 0].cpu()
