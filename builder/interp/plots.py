"""Pictures of attention, as the lecture draws them: patterns with tokens on both axes, the
score grid before and after the mask, the softmax, and the size of each head's update.

Masked cells are drawn grey and hatched, so they never look like cells that merely got ~0 weight.
Everything is drawn on ``matplotlib.figure.Figure`` objects: no backend is chosen, so notebooks keep theirs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..figures import ShownFigure, place_labels, renderer_for, wrapped
from ..figures import save_png as save_figure  # every picture is written (and its text checked) there

MASKED_COLOR = "#d9d9d9"
MASKED_EDGE = "#8c8c8c"  # the hatch lines over masked cells


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def token_labels(tokens: list[str]) -> list[str]:
    """Printable labels: whitespace made visible, long tokens shortened."""
    out = []
    for t in tokens:
        t = t.replace("\n", "\\n").replace("\t", "\\t")
        t = t.replace(" ", "\u2423") if t.strip() == "" else t.strip()
        out.append(t if len(t) <= 12 else t[:11] + "\u2026")
    return out


def masked_hatching(masked: np.ndarray):
    """Hatching over exactly the masked cells: one rectangle per run of masked cells in a row, edges on
    the cell edges (imshow puts cell (i, j) at [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5])."""
    rects = []
    for i, row in enumerate(masked):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        for start, stop in zip(edges[::2], edges[1::2]):
            rects.append(Rectangle((start - 0.5, i - 0.5), stop - start, 1.0))
    return PatchCollection(rects, facecolor="none", edgecolor=MASKED_EDGE, linewidth=0.0, hatch="///")


def _heatmap(ax, grid, mask, tokens, cmap="Blues", vmin=None, vmax=None, values=False, fontsize=7, axis_labels=True,
             max_labels: int = 64, aspect: str = "equal"):
    grid = np.asarray(grid, dtype=float)
    shown = np.ma.masked_where(~mask, grid) if mask is not None else np.ma.masked_invalid(grid)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad=MASKED_COLOR)
    im = ax.imshow(shown, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect=aspect)
    t = grid.shape[0]
    if mask is not None and (~mask).any():
        ax.add_collection(masked_hatching(~np.asarray(mask, dtype=bool)))
        ax.set_xlim(-0.5, grid.shape[1] - 0.5)
        ax.set_ylim(t - 0.5, -0.5)
    if tokens is not None:  # every token when they fit, else every k-th (its position in front), so rows stay findable
        labels = token_labels(tokens)
        step = -(-len(labels) // max_labels)
        ticks = list(range(0, len(labels), step))
        shown = [labels[i] if step == 1 else f"{i}:{labels[i]}" for i in ticks]
        ax.set_xticks(ticks, shown, rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks, shown, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if axis_labels:
        ax.set_xlabel("key (looked at)", fontsize=fontsize + 1)
        ax.set_ylabel("query (looking)", fontsize=fontsize + 1)
    if values and t <= 16:
        for y in range(t):
            for x in range(t):
                if mask is None or mask[y, x]:
                    v = grid[y, x]
                    ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=max(5, fontsize - 1),
                            color="white" if vmax is not None and v > 0.6 * vmax else "black")
    return im


def draw_head(path, tokens: list[str], pattern, mask=None, title: str = "") -> Path:
    """One head's pattern ``[T, T]`` (rows: queries, columns: keys), values printed when T is small."""
    pattern, mask = _np(pattern), _np(mask)
    mask = None if mask is None else mask.astype(bool)
    t = pattern.shape[0]
    size = min(14, max(4, 0.45 * t + 2))
    fig = ShownFigure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    # cells kept square by the figure's shape, not by a fixed aspect: constrained layout then places the axis labels
    # (with a fixed aspect and a two-line title it left 'query (looking)' off the canvas from ~30 tokens on)
    im = _heatmap(ax, pattern, mask, tokens, vmin=0, vmax=1, values=True, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight (softmax)")
    fig.suptitle(title + "\ngrey hatched = masked (not allowed), white = allowed but ~0 weight", fontsize=9)
    return save_figure(fig, path)


def draw_patterns(path, tokens: list[str], patterns, masks=None, layer_ids=None, head_ids=None,
                  title: str = "", kv_heads=None, layer_notes=None) -> Path:
    """``patterns_figure`` written to ``path`` as a PNG."""
    return save_figure(patterns_figure(tokens, patterns, masks, layer_ids, head_ids, title, kv_heads, layer_notes), path)


def patterns_figure(tokens: list[str], patterns, masks=None, layer_ids=None, head_ids=None, title: str = "",
                    kv_heads=None, layer_notes=None) -> Figure:
    """A grid, layers × heads, each cell one head's pattern ``patterns[l, h]`` with tokens on both axes.

    ``kv_heads[l][h]``: the key/value head each drawn head reads (grouped-query attention), shown in its title
    (``L0 H5 · kv1``); ``layer_notes[l]``: the layer's mask in words, shown when it is not plain causal
    (``L1 H0 · band 4``)."""
    patterns = _np(patterns)
    n_layers, n_heads, t, _ = patterns.shape
    masks = None if masks is None else _np(masks).astype(bool).reshape(n_layers, t, t)
    layer_ids = list(layer_ids) if layer_ids is not None else list(range(n_layers))
    head_ids = list(head_ids) if head_ids is not None else list(range(n_heads))
    labelled = t <= 24
    cell = 2.6 if labelled else 2.2
    width = cell * n_heads + 1.2
    suptitle = wrapped((title + "\n" if title else "") + "rows: queries, columns: keys; grey hatched = masked", width, 9)
    lines = suptitle.count("\n") + 1  # the suptitle's lines: room for each, and for each row's titles
    # constrained layout: it makes room for the colour bar's ticks and label and for the title's lines
    fig = ShownFigure(figsize=(width, (cell + 0.3) * n_layers + 0.5 + 0.2 * lines), layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    for i in range(n_layers):
        for j in range(n_heads):
            ax = axes[i][j]
            im = _heatmap(ax, patterns[i, j], None if masks is None else masks[i], tokens, vmin=0, vmax=1, fontsize=5,
                          axis_labels=False, max_labels=24 if labelled else 8)
            name = f"L{layer_ids[i]} H{head_ids[j]}"
            if kv_heads is not None:
                name += f" · kv{kv_heads[i][j]}"
            if layer_notes is not None and layer_notes[i] not in ("", "causal"):
                name += f" · {layer_notes[i]}"
            ax.set_title(name, fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.02 if n_heads > 2 else 0.05, pad=0.01, label="attention weight (softmax)")
    return fig


def draw_steps(path, tokens: list[str], scores, mask, pattern, update_norms, title: str = "",
               score_label: str = "query · key / sqrt(d_head)") -> Path:
    """``steps_figure`` written to ``path`` as a PNG."""
    return save_figure(steps_figure(tokens, scores, mask, pattern, update_norms, title, score_label), path)


def steps_figure(tokens: list[str], scores, mask, pattern, update_norms, title: str = "",
                 score_label: str = "query · key / sqrt(d_head)") -> Figure:
    """The lecture's steps for one head, two by two: q·k scores → after the mask → softmax → the size of each
    token's update, each score panel with its colour scale."""
    scores, pattern, update_norms = _np(scores), _np(pattern), _np(update_norms)
    mask = None if mask is None else _np(mask).astype(bool)
    t = scores.shape[0]
    size = min(6.5, max(3.4, 0.22 * t + 2))
    fig = ShownFigure(figsize=(2 * size + 2.4, 2 * size + 1.6), layout="constrained")
    axes = fig.subplots(2, 2).flatten()
    lim = float(np.abs(scores).max()) or 1.0
    fs = 7 if t <= 24 else 5
    im = _heatmap(axes[0], scores, None, tokens, cmap="RdBu_r", vmin=-lim, vmax=lim, values=t <= 10, fontsize=fs,
                  max_labels=32)
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04, label="score")
    axes[0].set_title(f"1. {score_label}\n(a row's common offset is ignored by its softmax: horizontal stripes\n"
                      "are one query scoring every key higher or lower, not a pattern)", fontsize=8)
    im = _heatmap(axes[1], scores, mask, tokens, cmap="RdBu_r", vmin=-lim, vmax=lim, values=t <= 10, fontsize=fs,
                  max_labels=32)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label="score")
    axes[1].set_title("2. after the mask (grey hatched = -inf: may not look)", fontsize=8)
    im = _heatmap(axes[2], pattern, mask, tokens, vmin=0, vmax=1, values=t <= 10, fontsize=fs, max_labels=32)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04, label="attention weight")
    axes[2].set_title("3. softmax over each row: the weights sum to 1", fontsize=8)
    labels = token_labels(tokens)
    axes[3].barh(range(t), update_norms, color="#dd8452")
    step = -(-t // 32)
    axes[3].set_yticks(range(0, t, step), [labels[i] if step == 1 else f"{i}:{labels[i]}" for i in range(0, t, step)],
                       fontsize=fs)
    axes[3].invert_yaxis()
    axes[3].set_xlabel("size of the update (L2 norm)", fontsize=8)
    axes[3].set_title("4. the update each token receives from this head:\n||Σ weight · value · W_o||", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def lens_figure(tokens: list[str], guesses: list[list[str]], probs, labels: list[str], prediction: list[str],
                title: str = "") -> Figure:
    """The logit lens: rows are the residual stream after the embedding and after each layer, columns the
    positions; each cell names the stream's top next-token guess, coloured by its probability. The bottom row is
    the model's own prediction (the last layer's row must match it)."""
    probs = np.asarray(probs, dtype=float)  # [streams, T]
    n, t = probs.shape
    width = min(28, max(6, 0.9 * t + 3))
    fig = ShownFigure(figsize=(width, 0.45 * (n + 1) + 2.2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(probs, cmap="Greens", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for i in range(n):
        for j in range(t):
            ax.text(j, i, token_labels([guesses[i][j]])[0], ha="center", va="center", fontsize=7,
                    color="white" if probs[i, j] > 0.6 else "black")
    for j in range(t):
        ax.text(j, n, token_labels([prediction[j]])[0], ha="center", va="center", fontsize=7, fontweight="bold")
    ax.set_ylim(n + 0.5, -0.5)
    ax.set_yticks(range(n + 1), labels + ["model's prediction"], fontsize=8)
    ax.set_xticks(range(t), token_labels(tokens), rotation=90, fontsize=8)
    ax.set_xlabel("position (the token read; each cell guesses the token after it)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="probability of the top guess")
    ax.set_title((title + "\n" if title else "") + "top next-token guess read off the residual stream after each "
                 "layer (final norm + unembedding)", fontsize=9)
    return fig


def attribution_figure(parts: dict[str, float], logit: float, token: str, position_token: str, top: int = 20) -> Figure:
    """Direct attribution: the ``top`` largest shares of a logit (heads, MLPs, embeddings, biases), signed bars,
    with the sum of every part beside the model's logit."""
    ranked = sorted(parts.items(), key=lambda kv: -abs(kv[1]))
    shown = ranked[:top]
    rest = sum(v for _, v in ranked[top:])
    names = [k for k, _ in shown] + ([f"{len(ranked) - top} other parts"] if len(ranked) > top else [])
    values = [v for _, v in shown] + ([rest] if len(ranked) > top else [])
    fig = ShownFigure(figsize=(7.5, 0.3 * len(names) + 1.8))
    ax = fig.subplots()
    ax.barh(range(len(names)), values, color=["#2b8cbe" if v >= 0 else "#e34a33" for v in values])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("share of the logit (through the final norm, its scale frozen, and the unembedding row)", fontsize=8)
    ax.set_title(f"who wrote the logit of {token_labels([token])[0]!r} after {token_labels([position_token])[0]!r}: "
                 f"parts sum to {sum(parts.values()):.3f}, the model's logit is {logit:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def nearest_figure(neighbours: dict[str, list[tuple[str, float]]], space: str = "embedding") -> Figure:
    """For each word, its nearest tokens by cosine similarity, as bars."""
    words = list(neighbours)
    k = max((len(v) for v in neighbours.values()), default=1)
    fig = ShownFigure(figsize=(3.2 * max(1, len(words)), 0.32 * k + 1.6))
    axes = fig.subplots(1, max(1, len(words)), squeeze=False)[0]
    for ax, word in zip(axes, words):
        pairs = neighbours[word]
        ax.barh(range(len(pairs)), [c for _, c in pairs], color="#6baed6")
        ax.set_yticks(range(len(pairs)), token_labels([t for t, _ in pairs]), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(min(0.0, min((c for _, c in pairs), default=0.0)), 1.0)
        ax.set_title(f"nearest to {token_labels([word])[0]!r}", fontsize=9)
        ax.set_xlabel(f"cosine similarity ({space})", fontsize=8)
    fig.tight_layout()
    return fig


def direction_figure(projections: dict[str, float], alignment: dict[str, float], title: str = "") -> Figure:
    """Each word's coordinate along a direction made from word pairs, sorted; the pairs' alignment in the title."""
    ranked = sorted(projections.items(), key=lambda kv: kv[1])
    fig = ShownFigure(figsize=(6.5, 0.3 * len(ranked) + 1.8))
    ax = fig.subplots()
    ax.barh(range(len(ranked)), [v for _, v in ranked], color=["#e34a33" if v < 0 else "#2b8cbe" for _, v in ranked])
    ax.set_yticks(range(len(ranked)), token_labels([w for w, _ in ranked]), fontsize=8)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("projection on the direction (mean of the pairs' differences, unit length)", fontsize=8)
    aligned = ", ".join(f"{k} {v:.2f}" for k, v in alignment.items())
    ax.set_title((title + "\n" if title else "") + f"each pair's difference vs the direction (cosine): {aligned}",
                 fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def map_figure(words: list[str], groups: list[str], xy, explained, title: str = "") -> Figure:
    """Chosen tokens in the plane of the two principal components of their vectors, coloured by group."""
    xy = np.asarray(xy, dtype=float)
    fig = ShownFigure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    names = list(dict.fromkeys(groups))
    colours = matplotlib.colormaps["tab10"]
    for n, g in enumerate(names):
        sel = [i for i, x in enumerate(groups) if x == g]
        ax.scatter(xy[sel, 0], xy[sel, 1], color=colours(n % 10), label=g, s=28)
    legend = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside the map
    ax.margins(0.2)  # room for the labels of the outermost words
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of the variance)", fontsize=8)
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)", fontsize=8)
    ax.set_title((title + "\n" if title else "") + "token vectors, first two principal components", fontsize=9)
    fig.tight_layout()
    place_labels(ax, xy, token_labels(words), fontsize=7, avoid=[legend.get_window_extent(renderer_for(fig)).extents])
    return fig


def context_figure(views: dict) -> Figure:
    """One word in several contexts: the contexts' pairwise similarity after each layer (top row, one colour bar
    beside the row), its mean falling as the senses separate (bottom left), and the size of each head's update to
    the word, the largest outlined (bottom right)."""
    sims = np.asarray(views["similarity"], dtype=float)  # [L + 1, C, C]
    n, c = sims.shape[0], sims.shape[1]
    low = min(0.0, float(sims.min()))
    # constrained layout: the colour bars take their own room (never a matrix's column) and no label is cut
    fig = ShownFigure(figsize=(max(8.0, 2.4 * n + 1.5), 6.6 + 0.18 * c), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    names = [f"{i + 1}" for i in range(c)]
    axes = top.subplots(1, n, squeeze=False)[0]
    for layer, ax in enumerate(axes):
        im = ax.imshow(sims[layer], cmap="viridis", vmin=low, vmax=1, interpolation="nearest")
        if c <= 6:
            for i in range(c):
                for j in range(c):
                    ax.text(j, i, f"{sims[layer, i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if sims[layer, i, j] > low + 0.6 * (1 - low) else "white")
        ax.set_xticks(range(c), names, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
        ax.set_title(views["labels"][layer], fontsize=8)
    top.colorbar(im, ax=axes, fraction=0.05, pad=0.02, shrink=0.8).set_label("cosine", fontsize=8)
    contexts = "\n".join(f"{i + 1}: {t if len(t) <= 90 else t[:89] + chr(0x2026)}" for i, t in enumerate(views["contexts"]))
    top.suptitle(f"{views['word']!r} in context (similarity of its vectors, layer by layer)\n{contexts}", fontsize=8)
    left, right = bottom.subplots(1, 2, width_ratios=[1, 1.3])
    left.plot(range(n), views["mean_similarity"], marker="o")
    left.set_xticks(range(n), views["labels"], rotation=30, ha="right", fontsize=7)
    left.set_ylabel("mean similarity of the contexts", fontsize=8)
    left.set_ylim(-1.05, 1.05)
    left.tick_params(axis="y", labelsize=7)
    left.axhline(0, color="grey", linewidth=0.5)
    sizes = np.asarray(views["update_sizes"], dtype=float)
    im2 = right.imshow(sizes, cmap="Oranges", aspect="auto", interpolation="nearest")
    right.set_xlabel("head", fontsize=8)
    right.set_ylabel("layer", fontsize=8)
    right.set_xticks(range(sizes.shape[1]))
    right.set_yticks(range(sizes.shape[0]))
    right.tick_params(labelsize=7)
    for h in views["top_heads"]:
        right.add_patch(Rectangle((h["head"] - 0.5, h["layer"] - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    right.set_title(f"each head's update to {views['word']!r} (mean size);\noutlined: the {len(views['top_heads'])} "
                    "largest (context.json: where they looked)", fontsize=8)
    bottom.colorbar(im2, ax=right, fraction=0.06, pad=0.02).set_label("update size", fontsize=8)
    return fig
