"""Routing made visible: which experts each token of a phrase goes to, layer by layer, and how the load spreads.

    rec = capture_routing_on(model, ids)        # {layer: RouteRecord}: [B, T, E] weights, load per expert
    figure = draw_routing(tokens, rec)          # one tokens x experts grid per mixture-of-experts layer + load

The routing is read at each MoE layer's hook points (``blocks.{l}.mlp.hook_router_logits`` / ``hook_expert_weights``
/ ``hook_expert_indices``, components/hooks.py) through the capture (``capture_attention`` records them as the
fields ``router_logits``, ``expert_weights``, ``experts``: ``rec.routing(layer)``). ``task=attend`` writes
``routing.png`` and ``routing.json`` beside the attention pictures when the model has mixture-of-experts layers; the
tour adds a section; during training the attention probe draws ``attention/expert_load_step<N>.png``, the load per
expert over each validation's batches (``load_figure``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from ..figures import ShownFigure, save_png
from ..files import atomic_write
from .capture import ROUTING_FIELDS, record


@dataclass
class RouteRecord:
    """One MoE layer on one batch: ``weights`` ``[B, T, n_experts]`` (the router's weight for each chosen expert,
    0 for the others), ``experts`` ``[B, T, top_k]`` and ``load`` ``[n_experts]`` (choices that went to each)."""

    weights: torch.Tensor
    experts: torch.Tensor
    load: torch.Tensor


def moe_layers(model: nn.Module) -> list[int]:
    """The layers whose MLP is a mixture of experts: those with the hook point ``blocks.{l}.mlp.hook_expert_indices``."""
    return sorted({point.layer() for point in model.hook_points(lambda name: name.endswith("mlp.hook_expert_indices"))})


def capture_routing_on(model: nn.Module, ids: torch.Tensor) -> dict[int, RouteRecord]:
    """Run ``model`` on ``ids`` in eval mode without gradients; the routing of every MoE layer, as the capture
    records it (capture.ROUTING_FIELDS, read at the layers' ``blocks.{l}.mlp.hook_*`` points)."""
    rec = record(model, ids, fields=ROUTING_FIELDS)
    records = {}
    for layer in rec.routed_layers():
        routing = rec.routing(layer)
        n_experts = routing["router_logits"].shape[-1]
        experts, weights = routing["experts"].cpu(), routing["expert_weights"].float().cpu()
        dense = torch.zeros(*experts.shape[:-1], n_experts).scatter(-1, experts, weights)
        records[layer] = RouteRecord(dense, experts, torch.bincount(experts.flatten(), minlength=n_experts))
    return records


def draw_routing(tokens: list[str], records: dict[int, RouteRecord], title: str = "") -> Figure:
    """Top: one tokens x experts grid per MoE layer (the weight each chosen expert gets, blank for the others);
    bottom: the share of choices each expert took, per layer (an even load is the dashed line)."""
    layers = sorted(records)
    n_experts = records[layers[0]].weights.shape[-1]
    cols = min(len(layers), 4)
    rows = -(-len(layers) // cols)
    fig = ShownFigure(figsize=(max(7.0, 2.2 * cols + 1.5), 0.22 * len(tokens) * rows + 3.2 + 0.8 * rows))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[max(1.0, 0.22 * len(tokens))] * rows + [2.0])
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        w = records[layer].weights[0].numpy()
        ax.imshow(w, aspect="auto", cmap="Greens", vmin=0, vmax=max(1e-9, float(w.max())))
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_xticks(range(n_experts) if n_experts <= 16 else [])
        ax.tick_params(labelsize=6)
        ax.set_yticks(range(len(tokens)))
        ax.set_yticklabels([repr(t)[1:-1].replace(" ", "␣") for t in tokens] if i % cols == 0 else [], fontsize=6)
        if i // cols == rows - 1:
            ax.set_xlabel("expert", fontsize=7)
    draw_load(fig.add_subplot(grid[rows, :]), {layer: records[layer].load for layer in layers})
    fig.suptitle(title or "routing: which experts each token goes to", fontsize=9)
    fig.tight_layout()
    return fig


def draw_load(ax, loads: dict[int, torch.Tensor]) -> None:
    """On ``ax``: the share of choices each expert took, a bar per MoE layer (``loads``: layer -> choices per
    expert); an even load is the dashed line."""
    layers = sorted(loads)
    n_experts = len(loads[layers[0]])
    width = 0.8 / len(layers)
    for j, layer in enumerate(layers):
        load = loads[layer].float().cpu()
        ax.bar([e + j * width for e in range(n_experts)], (load / load.sum().clamp(min=1)).numpy(), width=width,
               label=f"layer {layer}")
    ax.set_xticks([e + (len(layers) - 1) * width / 2 for e in range(n_experts)] if n_experts <= 32 else [])
    ax.set_xticklabels([str(e) for e in range(n_experts)] if n_experts <= 32 else [])
    ax.axhline(1 / n_experts, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("expert", fontsize=7)
    ax.set_ylabel("share of choices", fontsize=7)
    ax.tick_params(labelsize=6)
    if len(layers) <= 8:
        ax.legend(fontsize=6, ncol=min(len(layers), 4), frameon=False)


def load_figure(loads: dict[int, torch.Tensor], title: str = "") -> Figure:
    """The load per expert alone: each MoE layer's share of the choices (over a validation pass, say)."""
    n_experts = len(next(iter(loads.values())))
    fig = ShownFigure(figsize=(max(6.0, 0.35 * n_experts * min(len(loads), 4) + 2.0), 3.2))
    draw_load(fig.add_subplot(), loads)
    fig.suptitle(title or "load per expert", fontsize=9)
    fig.tight_layout()
    return fig


def write_routing(records: dict[int, RouteRecord], tokens: list[str], out_dir: Path, title: str = "") -> dict:
    """routing.png (the grids and the load) and routing.json (each token's experts and weights, the load per expert,
    by layer); returns their paths."""
    out_dir = Path(out_dir)
    png, js = out_dir / "routing.png", out_dir / "routing.json"
    save_png(draw_routing(tokens, records, title), png)
    payload = {"tokens": tokens, "layers": {str(layer): {
        "experts": r.experts[0].tolist(),
        "weights": [[round(float(r.weights[0, t, e]), 6) for e in row] for t, row in enumerate(r.experts[0].tolist())],
        "load": r.load.tolist()} for layer, r in sorted(records.items())}}
    atomic_write(js, json.dumps(payload, indent=1) + "\n")
    return {"png": png, "json": js}
