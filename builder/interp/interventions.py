"""Does a head matter? Ablation and activation patching, on the model's named hook points (components/hooks.py).

    ablation = ablate(model, [ids, ...], kind="mean")          # each head, then each MLP, knocked out in turn
    patching = patch(model, clean_ids, corrupted_ids, (a, b))   # what the clean run restores to the corrupted one

**Ablation** replaces what one head writes (its ``hook_z``: the weighted values, so W_o adds nothing of it) or what
one MLP writes (``hook_mlp_out``) by zero, or by its mean over every token of the inputs (``mean``: the head keeps
its average contribution, loses what depends on the input), and measures the change of the mean next-token loss, or
of a logit difference ``logit(a) - logit(b)`` at each input's last position.

**Activation patching** runs the corrupted prompt with one activation taken from the clean run — the residual
stream entering a layer at one position (``hook_resid_pre``), attention's or the MLP's output at one position
(``hook_attn_out``, ``hook_mlp_out``), or one head's output at every position (``hook_z``) — and reports the share
of the clean-vs-corrupted logit difference it restores: (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted),
LD = logit(a) - logit(b) at the last position; 1 is everything, 0 nothing. The two prompts have the same length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from ..errors import ConfigError
from ..generate import encode_prompt
from .plots import ShownFigure, token_labels

ABLATIONS = ("zero", "mean")
PATCHED_STREAMS = ("resid_pre", "attn_out", "mlp_out")


def answer_ids(tokenizer, answers, key: str = "answers") -> tuple[int, int] | None:
    """``[right, wrong]`` as two token ids (None stays None); each must be one token of ``tokenizer``."""
    if answers is None:
        return None
    ids = []
    for word in answers:
        tokens = encode_prompt(tokenizer, str(word), key=key)
        if len(tokens) != 1:
            raise ConfigError(key, list(answers), f"two words that are one token each for this model's tokenizer; "
                              f"{word!r} is {len(tokens)} tokens")
        ids.append(tokens[0])
    if ids[0] == ids[1]:
        raise ConfigError(key, list(answers), "two different tokens: the measure is logit(right) - logit(wrong)")
    return ids[0], ids[1]


def _n_heads(model: nn.Module) -> int:
    return int(model.blocks[0].attention.n_heads)


def _zeroed(kind: str, means: dict, name: str, head: int | None) -> Callable:
    """The hook function that knocks out head ``head`` (or the whole activation: None) of hook ``name``."""
    def fn(x, hook):
        x = x.clone()
        if head is None:
            x[:] = 0 if kind == "zero" else means[name]
        else:
            x[:, :, head] = 0 if kind == "zero" else means[name][head]
        return x
    return fn


def mean_activations(model: nn.Module, inputs: Sequence[torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Each hook's activation averaged over every token of ``inputs`` (batch and position): [head, d_head] for
    hook_z, [d_model] for hook_mlp_out."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for ids in inputs:
        _, cache = model.run_with_cache(ids, names_filter=names)
        for name in names:
            flat = cache[name].flatten(0, 1).double()
            sums[name] = sums.get(name, 0) + flat.sum(0)
        count += ids.numel()
    return {name: (s / count).float() for name, s in sums.items()}


def _measure(model: nn.Module, inputs: Sequence[torch.Tensor], answers: tuple[int, int] | None,
             fwd_hooks=()) -> float:
    """The mean next-token loss over ``inputs`` (answers None), or the mean of logit(a) - logit(b) at each input's
    last position."""
    total, count = 0.0, 0
    for ids in inputs:
        logits = model.run_with_hooks(ids, fwd_hooks=fwd_hooks).float()
        if answers is None:
            if ids.shape[1] < 2:
                continue
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
            total, count = total + float(loss), count + ids[:, 1:].numel()
        else:
            last = logits[:, -1]
            total, count = total + float((last[:, answers[0]] - last[:, answers[1]]).sum()), count + ids.shape[0]
    return total / max(count, 1)


@torch.no_grad()
def ablate(model: nn.Module, inputs: Sequence[torch.Tensor], kind: str = "mean",
           answers: tuple[int, int] | None = None, heads: bool = True, mlps: bool = True) -> dict:
    """Knock out each head, then each MLP, in turn; returns ``baseline`` (the metric with nothing knocked out),
    ``heads`` ([layer][head] change of the metric), ``mlps`` ([layer] change) and what was measured."""
    if kind not in ABLATIONS:
        raise ValueError(f"kind must be one of {', '.join(ABLATIONS)}, got {kind!r}")
    was_training = model.training
    model.eval()
    try:
        n_layers, n_heads = len(model.blocks), _n_heads(model)
        z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
        mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
        means = mean_activations(model, inputs, z_names + mlp_names) if kind == "mean" else {}
        baseline = _measure(model, inputs, answers)
        head_changes = [[_measure(model, inputs, answers, [(z_names[layer], _zeroed(kind, means, z_names[layer], h))])
                         - baseline for h in range(n_heads)] for layer in range(n_layers)] if heads else []
        mlp_changes = [_measure(model, inputs, answers, [(name, _zeroed(kind, means, name, None))]) - baseline
                       for name in mlp_names] if mlps else []
    finally:
        model.train(was_training)
    return {"ablation": kind, "metric": "loss" if answers is None else "logit_diff", "baseline": baseline,
            "heads": head_changes, "mlps": mlp_changes, "tokens": int(sum(ids.numel() for ids in inputs))}


def _restore(cache, name: str, position: int | None = None, head: int | None = None) -> Callable:
    """The hook function that puts the clean run's activation back: at one position, for one head, or all."""
    def fn(x, hook):
        x = x.clone()
        clean = cache[name]
        if head is not None:
            x[:, :, head] = clean[:, :, head]
        elif position is not None:
            x[:, position] = clean[:, position]
        else:
            x = clean.clone()
        return x
    return fn


@torch.no_grad()
def patch(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, answers: tuple[int, int]) -> dict:
    """Activation patching from ``clean`` into ``corrupted`` (``[1, T]`` each, the same T): the share of the
    logit difference restored by each layer's residual stream, attention output and MLP output at each position
    (``resid_pre`` / ``attn_out`` / ``mlp_out``: [layer][position]) and by each head's output at every position
    (``heads``: [layer][head]). Also ``clean_diff`` and ``corrupted_diff``, the logit differences of the two runs."""
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} differ in shape")
    was_training = model.training
    model.eval()
    try:
        n_layers, t = len(model.blocks), clean.shape[1]
        names = [f"blocks.{layer}.{p}" for layer in range(n_layers)
                 for p in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_z")]
        _, cache = model.run_with_cache(clean, names_filter=names)
        clean_diff = _measure(model, [clean], answers)
        corrupted_diff = _measure(model, [corrupted], answers)
        span = clean_diff - corrupted_diff

        def share(fwd_hooks) -> float:
            return (_measure(model, [corrupted], answers, fwd_hooks) - corrupted_diff) / span if span else 0.0

        out = {stream: [[share([(f"blocks.{layer}.hook_{stream}", _restore(cache, f"blocks.{layer}.hook_{stream}",
                                                                             position))])
                         for position in range(t)] for layer in range(n_layers)] for stream in PATCHED_STREAMS}
        out["heads"] = [[share([(f"blocks.{layer}.attn.hook_z", _restore(cache, f"blocks.{layer}.attn.hook_z",
                                                                        head=h))])
                         for h in range(_n_heads(model))] for layer in range(n_layers)]
    finally:
        model.train(was_training)
    return {**out, "clean_diff": clean_diff, "corrupted_diff": corrupted_diff}


# ------------------------------------------------------------------------------------------- pictures


CELL = 0.5  # inches per heatmap column: room for a value of CELL_CHARS characters written in the cell
CELL_CHARS = 5
MIN_COLUMNS = 4  # a panel is at least this many columns wide, so its title fits over it


def cell_text(v: float, symmetric: bool = True) -> str:
    """A value as written in its cell, at most CELL_CHARS characters: ``+0.01`` (or ``0.01`` unsigned) below 10,
    whole numbers up to 999, and a power of ten beyond (``+2e3``); "" for a value that is not a number."""
    if not np.isfinite(v):
        return ""
    sign = "+" if symmetric else ""
    if abs(v) < 9.995:
        return f"{v:{sign}.2f}"
    if abs(v) < 999.5:
        return f"{v:{sign}.0f}"
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{'+' if symmetric and v > 0 else ''}{mantissa}e{int(exponent)}"


def value_grid(fig, ax, values: np.ndarray, xlabels: list[str], ylabels: list[str], title: str, label: str,
          symmetric: bool = True, least: float = 0.0):
    """A heatmap with its values written in (small grids), labelled axes and a colour bar; ``symmetric``: a
    diverging scale around 0, else 0 to 1 (shares, accuracies)."""
    lim = float(np.nanmax(np.abs(values))) if values.size else 1.0
    lim = (max(lim, least) or 1.0) if symmetric else 1.0
    im = ax.imshow(values, cmap="RdBu_r" if symmetric else "viridis", vmin=-lim if symmetric else 0.0, vmax=lim,
                   aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=8, rotation=90 if max(map(len, xlabels)) > 3 else 0)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_title(title, fontsize=9)
    if values.size <= 200:
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, cell_text(v, symmetric), ha="center", va="center", fontsize=6,
                    color=("white" if abs(v) > 0.6 * lim else "black") if symmetric else
                    ("black" if v > 0.6 else "white"))
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def ablation_figure(result: dict, title: str = "") -> Figure:
    """Layer x head: the change of the metric when each head is knocked out; a column beside it for the MLPs."""
    heads = np.asarray(result["heads"], dtype=float)
    mlps = np.asarray(result["mlps"], dtype=float)
    n_layers = max(heads.shape[0] if heads.size else 0, len(mlps))
    widths = ([CELL * max(heads.shape[1], MIN_COLUMNS) + 2.4] if heads.size else []) + ([2.6] if mlps.size else [])
    fig = ShownFigure(figsize=(0.4 + sum(widths), 1.8 + 0.5 * n_layers), layout="constrained")
    what = "loss" if result["metric"] == "loss" else "logit difference"
    axes = fig.subplots(1, len(widths), squeeze=False, width_ratios=widths)[0]
    rows = [f"layer {i}" for i in range(n_layers)]
    if heads.size:
        value_grid(fig, axes[0], heads, [f"H{h}" for h in range(heads.shape[1])], rows,
              f"{result['ablation']}-ablating each head", f"change in {what}")
    if mlps.size:
        value_grid(fig, axes[-1], mlps[:, None], ["MLP"], rows, "each MLP", f"change in {what}")
    fig.suptitle(title or f"{result['ablation']} ablation: change in {what} (baseline {result['baseline']:.3f})",
                 fontsize=10)
    return fig


def patching_figure(result: dict, tokens: list[str], title: str = "") -> Figure:
    """The share of the logit difference restored: residual stream, attention and MLP outputs per layer x position,
    and each head."""
    labels = token_labels(tokens)
    n_layers = len(result["heads"])
    n_heads = len(result["heads"][0])
    widths = [max(len(tokens), MIN_COLUMNS)] * 3 + [max(n_heads, MIN_COLUMNS)]
    fig = ShownFigure(figsize=(1.2 + CELL * sum(widths) + 4 * 1.1, 2.0 + 0.6 * n_layers), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=widths)
    rows = [f"layer {i}" for i in range(n_layers)]
    names = {"resid_pre": "residual stream entering", "attn_out": "attention output", "mlp_out": "MLP output"}
    for ax, stream in zip(axes, PATCHED_STREAMS):
        value_grid(fig, ax, np.asarray(result[stream]), labels, rows, names[stream], "share restored", least=1.0)
    heads = np.asarray(result["heads"])
    value_grid(fig, axes[3], heads, [f"H{h}" for h in range(heads.shape[1])], rows, "each head (all positions)",
          "share restored", least=1.0)
    fig.suptitle(title or "activation patching: share of the clean - corrupted logit difference restored", fontsize=10)
    return fig
