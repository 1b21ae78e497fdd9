"""Every picture of the lecture for one phrase: the patterns grid, single heads, the steps, the page."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..generate import encode_prompt
from .capture import head_mask, record
from .page import write_attention_html
from .plots import draw_head, draw_patterns, draw_steps


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


def encode_text(tokenizer, text: str, model) -> torch.Tensor:
    ids = encode_prompt(tokenizer, text, key="text") if tokenizer is not None else None
    if ids is None:
        raise ConfigError("checkpoint", None, "a model that carries its tokenizer, to turn text into tokens")
    limit = model.context_length
    if limit and len(ids) > limit:
        raise ConfigError("text", f"<{len(ids)} tokens>", f"at most model.context_length={limit} tokens")
    return torch.tensor([ids])


def write_attention_pictures(model, tokenizer, text: str, out_dir: Path, layers=None, heads=None,
                             title: str = "") -> dict:
    """patterns.png, head_L*_H*.png, steps_L*_H*.png and attention.html for ``text``; returns their paths."""
    out_dir = Path(out_dir)
    ids = encode_text(tokenizer, text, model)
    tokens = token_strings(tokenizer, ids[0].tolist())
    n_layers = len(model.blocks)
    n_heads = model.blocks[0].attention.n_heads
    chosen_layers = pick(layers, n_layers, "layers")
    chosen_heads = pick(heads, n_heads, "heads")
    rec = record(model, ids)
    t = len(tokens)
    patterns = torch.stack([rec.pattern(layer)[0, chosen_heads] for layer in chosen_layers])
    masks = torch.stack([head_mask(rec, layer, t) for layer in chosen_layers])
    files = {"patterns": draw_patterns(out_dir / "patterns.png", tokens, patterns, masks, chosen_layers, chosen_heads,
                                       title=f"{title} — {text!r}")}
    # one picture per chosen head; without a choice, all of them when few, else the last layer's first four
    singles = [(lay, h) for lay in chosen_layers for h in chosen_heads]
    if layers is None and heads is None and len(singles) > 16:
        singles = [(chosen_layers[-1], h) for h in chosen_heads[:4]]
    files["heads"] = []
    for layer, head in singles:
        files["heads"].append(draw_head(out_dir / f"head_L{layer}_H{head}.png", tokens, rec.pattern(layer)[0, head],
                                        head_mask(rec, layer, t), title=f"{title} layer {layer} head {head}"))
    layer, head = singles[0]
    files["steps"] = draw_steps(out_dir / f"steps_L{layer}_H{head}.png", tokens, rec.scores(layer)[0, head],
                                head_mask(rec, layer, t), rec.pattern(layer)[0, head],
                                rec.result(layer)[0, head].norm(dim=-1),
                                title=f"{title} layer {layer} head {head}: from scores to the update")
    files["html"] = write_attention_html(out_dir / "attention.html", tokens, patterns.numpy(), masks.numpy(),
                                         title=f"{title} — {text}", layer_ids=chosen_layers, head_ids=chosen_heads)
    return files
