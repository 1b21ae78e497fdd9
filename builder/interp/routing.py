"""Routing made visible: which experts each token of a phrase goes to, layer by layer, and how the load spreads.

    rec = capture_routing_on(model, ids)        # {layer: RouteRecord}: [B, T, E] weights, load per expert
    figure = draw_routing(tokens, rec)          # one tokens x experts grid per mixture-of-experts layer + load

``task=attend`` writes ``routing.png`` and ``routing.json`` beside the attention pictures when the model has
mixture-of-experts layers.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from components.moe import MixtureOfExperts

from ..files import atomic_path, atomic_write
from .capture import recorders


@dataclass
class RouteRecord:
    """One MoE layer on one batch: ``weights`` ``[B, T, n_experts]`` (the router's weight for each chosen expert,
    0 for the others), ``experts`` ``[B, T, top_k]`` and ``load`` ``[n_experts]`` (choices that went to each)."""

    weights: torch.Tensor
    experts: torch.Tensor
    load: torch.Tensor


def moe_layers(model: nn.Module) -> list[MixtureOfExperts]:
    return [m for m in model.modules() if isinstance(m, MixtureOfExperts)]


@contextmanager
def capture_routing(model: nn.Module):
    """While open, every MoE layer's routing of each forward pass lands in the yielded dict, by layer (the last
    pass's)."""
    records: dict[int, RouteRecord] = {}
    layers = moe_layers(model)

    def keep(layer: int, t: dict) -> None:
        experts, weights = t["experts"].detach(), t["weights"].detach().float()
        dense = torch.zeros(*experts.shape[:-1], t["router_logits"].shape[-1]).scatter(-1, experts.cpu(), weights.cpu())
        records[layer] = RouteRecord(dense, experts.cpu(), t["load"].detach().cpu())

    with recorders(layers, keep):
        yield records


def capture_routing_on(model: nn.Module, ids: torch.Tensor) -> dict[int, RouteRecord]:
    """Run ``model`` on ``ids`` in eval mode without gradients; the routing of every MoE layer."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_routing(model) as records:
            model(ids.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    return dict(records)


def draw_routing(tokens: list[str], records: dict[int, RouteRecord], title: str = "") -> Figure:
    """Top: one tokens x experts grid per MoE layer (the weight each chosen expert gets, blank for the others);
    bottom: the share of choices each expert took, per layer (an even load is the dashed line)."""
    layers = sorted(records)
    n_experts = records[layers[0]].weights.shape[-1]
    cols = min(len(layers), 4)
    rows = -(-len(layers) // cols)
    fig = Figure(figsize=(max(7.0, 2.2 * cols + 1.5), 0.22 * len(tokens) * rows + 3.2 + 0.8 * rows))
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
    ax = fig.add_subplot(grid[rows, :])
    width = 0.8 / len(layers)
    for j, layer in enumerate(layers):
        load = records[layer].load.float()
        ax.bar([e + j * width for e in range(n_experts)], (load / load.sum()).numpy(), width=width,
               label=f"layer {layer}")
    ax.set_xticks([e + (len(layers) - 1) * width / 2 for e in range(n_experts)] if n_experts <= 32 else [])
    ax.set_xticklabels([str(e) for e in range(n_experts)] if n_experts <= 32 else [])
    ax.axhline(1 / n_experts, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("expert", fontsize=7)
    ax.set_ylabel("share of choices", fontsize=7)
    ax.tick_params(labelsize=6)
    if len(layers) <= 8:
        ax.legend(fontsize=6, ncol=min(len(layers), 4), frameon=False)
    fig.suptitle(title or "routing: which experts each token goes to", fontsize=9)
    fig.tight_layout()
    return fig


def write_routing(records: dict[int, RouteRecord], tokens: list[str], out_dir: Path, title: str = "") -> dict:
    """routing.png (the grids and the load) and routing.json (each token's experts and weights, the load per expert,
    by layer); returns their paths."""
    out_dir = Path(out_dir)
    png, js = out_dir / "routing.png", out_dir / "routing.json"
    with atomic_path(png) as tmp:
        draw_routing(tokens, records, title).savefig(tmp, dpi=110, format="png")
    payload = {"tokens": tokens, "layers": {str(layer): {
        "experts": r.experts[0].tolist(),
        "weights": [[round(float(r.weights[0, t, e]), 6) for e in row] for t, row in enumerate(r.experts[0].tolist())],
        "load": r.load.tolist()} for layer, r in sorted(records.items())}}
    atomic_write(js, json.dumps(payload, indent=1) + "\n")
    return {"png": png, "json": js}
