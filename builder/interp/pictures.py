"""Every picture of the lecture for one phrase: the patterns grid, single heads, the steps, the page."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ConfigError
from ..generate import encode_prompt
from .capture import head_layout, head_mask, kv_group, record
from .page import write_attention_html
from .plots import draw_head, draw_patterns, draw_steps

PAGE_CELLS = 64 * 1024 * 1024 // 2  # attention weights one page may hold (random weights: ~40 MB of HTML)


def pick(values, available: int, key: str) -> list[int]:
    """Chosen layer or head indices (all when none are given); negative indices count from the end."""
    if values is None:
        return list(range(available))
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not -available <= v < available:
            raise ConfigError(key, list(values), f"indices between 0 and {available - 1}")
        out.append(v % available)
    return out


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids] if tokenizer is not None else [str(i) for i in ids]


def encode_text(tokenizer, text: str, model, key: str = "text") -> torch.Tensor:
    """``text`` as a [1, T] batch of the model's token ids; ConfigError naming ``key`` for text its tokenizer cannot
    encode or longer than its context."""
    ids = encode_prompt(tokenizer, text, key=key) if tokenizer is not None else None
    if ids is None:
        raise ConfigError("checkpoint", None, "a model that carries its tokenizer, to turn text into tokens")
    limit = model.context_length
    if limit and len(ids) > limit:
        raise ConfigError(key, f"<{len(ids)} tokens>", f"at most model.context_length={limit} tokens")
    return torch.tensor([ids])


def head_title(rec, layer: int, head: int) -> str:
    """``"layer 1 head 5"``, with ``" · kv 1 (shared by heads 4-7)"`` where heads share keys and values and
    ``" · band 4"`` on a sliding-window layer."""
    text = f"layer {layer} head {head}"
    if rec.n_kv_heads(layer) != rec.pattern(layer).shape[1]:
        group = rec.sharing(layer, head)
        text += f" · kv {rec.kv_head(layer, head)} (shared by heads {group[0]}-{group[-1]})"
    note = rec.mask_note(layer)
    if note.startswith("band"):
        text += f" · {note}"
    return text


def score_label(module) -> str:
    """What step 1 of the lecture's steps shows: q·k times the layer's scale (``/ sqrt(d_head)`` unless the model
    sets another, Gemma 2's ``query_scale``), soft-capped where the layer caps its scores."""
    scale, d_head = getattr(module, "scale", None), getattr(module, "d_head", None)
    if scale is None or d_head is None or math.isclose(float(scale), 1.0 / math.sqrt(d_head), rel_tol=1e-6):
        text = "query · key / sqrt(d_head)"
    else:
        text = f"query · key × {float(scale):.4g}"
    cap = getattr(module, "softcap", None)
    if cap:
        text += f", capped: {float(cap):g}·tanh(s/{float(cap):g})"
    return text


def layer_summary(model, rec) -> list[str]:
    """Lines that say which heads share keys and values and which layers are banded (nothing for plain GPT)."""
    lines = []
    layouts = {pair for pair in head_layout(model) if pair is not None}
    for n_heads, n_kv in sorted(layouts):
        if n_kv != n_heads:
            groups = " · ".join(f"kv {kv} ← heads {g[0]}-{g[-1]}"
                                for kv in range(n_kv) for g in [kv_group(kv, n_heads, n_kv)])
            lines.append(f"grouped-query attention: {n_heads} query heads share {n_kv} key/value heads "
                         f"({n_heads // n_kv} each): {groups}")
    notes = dict(sorted(rec.notes.items())) or {layer: rec.mask_note(layer) for layer in sorted(rec.layers)}
    if any(n != "causal" for n in notes.values()):
        lines.append("masks: " + ", ".join(f"layer {layer} {n}" for layer, n in notes.items()))
    return lines


def focused_head(rec, layers: list[int], heads: list[int]) -> tuple[int, int]:
    """The head whose queries, on average, put the most weight on one token other than themselves and the first
    token (where heads with nothing to do park their attention): the most telling head for the steps picture."""
    best, choice = -1.0, (layers[0], heads[0])
    for layer in layers:
        p = rec.pattern(layer)[0].float()  # [H, T, T]
        t = p.shape[-1]
        if t < 3:
            return choice
        other = p.clone()
        other[:, :, 0] = 0
        other.diagonal(dim1=-2, dim2=-1).zero_()
        focus = other[:, 2:].amax(-1).mean(-1)  # queries from the third token on have a choice to make
        for head in heads:
            if float(focus[head]) > best:
                best, choice = float(focus[head]), (layer, head)
    return choice


def write_attention_pictures(model, tokenizer, text: str, out_dir: Path, layers=None, heads=None,
                             title: str = "") -> dict:
    """patterns.png, head_L*_H*.png, steps_L*_H*.png and attention.html for ``text``; returns their paths
    (and ``"summary"``: lines on grouped heads and banded layers)."""
    out_dir = Path(out_dir)
    ids = encode_text(tokenizer, text, model)
    tokens = token_strings(tokenizer, ids[0].tolist())
    n_layers = len(model.blocks)
    n_heads = model.blocks[0].attention.n_heads
    chosen_layers = pick(layers, n_layers, "layers")
    chosen_heads = pick(heads, n_heads, "heads")
    t = len(tokens)
    cells = len(chosen_layers) * len(chosen_heads) * t * (t + 1) // 2
    if cells > PAGE_CELLS:
        raise ConfigError("layers", None if layers is None else list(layers),
                          f"at most {PAGE_CELLS:,} attention weights in one page (layers x heads x T(T+1)/2, "
                          f"e.g. 2 x 32 heads on 1,024 tokens): {len(chosen_layers)} layers x {len(chosen_heads)} "
                          f"heads on {t} tokens make {cells:,}; choose fewer with layers=[...] heads=[...] or a "
                          f"shorter text")
    rec = record(model, ids, fields=("scores", "mask", "pattern", "result"), layers=chosen_layers)
    patterns = torch.stack([rec.pattern(layer)[0, chosen_heads].float().cpu() for layer in chosen_layers])
    masks = torch.stack([head_mask(rec, layer, t) for layer in chosen_layers])
    summary = layer_summary(model, rec)
    files = {"patterns": draw_patterns(out_dir / "patterns.png", tokens, patterns, masks, chosen_layers, chosen_heads,
                                       title="\n".join([f"{title} — {text!r}", *summary]),
                                       kv_heads=[[rec.kv_head(lay, h) for h in chosen_heads] for lay in chosen_layers]
                                       if any(rec.n_kv_heads(lay) != n_heads for lay in chosen_layers) else None,
                                       layer_notes=[rec.mask_note(lay) for lay in chosen_layers])}
    # one picture per chosen head; without a choice, all of them when few, else the last layer's first four
    singles = [(lay, h) for lay in chosen_layers for h in chosen_heads]
    if layers is None and heads is None and len(singles) > 16:
        singles = [(chosen_layers[-1], h) for h in chosen_heads[:4]]
    files["heads"] = []
    for layer, head in singles:
        files["heads"].append(draw_head(out_dir / f"head_L{layer}_H{head}.png", tokens,
                                        rec.pattern(layer)[0, head].float().cpu(), head_mask(rec, layer, t),
                                        title=f"{title} {head_title(rec, layer, head)}"))
    layer, head = singles[0] if layers is not None and heads is not None else focused_head(rec, chosen_layers, chosen_heads)
    why = "" if layers is not None and heads is not None else " (the head that looks hardest at one other token)"
    files["steps"] = draw_steps(out_dir / f"steps_L{layer}_H{head}.png", tokens, rec.scores(layer)[0, head].float().cpu(),
                                head_mask(rec, layer, t), rec.pattern(layer)[0, head].float().cpu(),
                                rec.result(layer)[0, head].float().norm(dim=-1).cpu(),
                                title=f"{title} {head_title(rec, layer, head)}{why}: from scores to the update",
                                score_label=score_label(model.blocks[layer].attention))
    layouts = head_layout(model)
    kv_heads = [layouts[lay] for lay in chosen_layers] if all(layouts[lay] for lay in chosen_layers) else None
    files["html"] = write_attention_html(out_dir / "attention.html", tokens, patterns.numpy(), masks.numpy(),
                                         title=f"{title} — {text}", layer_ids=chosen_layers, head_ids=chosen_heads,
                                         kv_heads=kv_heads, layer_notes=[rec.mask_note(lay) for lay in chosen_layers])
    files["summary"] = summary
    return files
