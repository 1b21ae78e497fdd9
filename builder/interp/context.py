"""Meaning refined by context: one word in several contexts, followed through the layers.

    out = context_views(model, tokenizer, "mole", ["the mole dug a tunnel", "one mole of carbon", ...])

For each context the word's vector is read off the residual stream after the embedding and after each layer (at
the word's last token). Then, layer by layer: the contexts' pairwise cosine similarity (the senses separate where
it falls), the tokens nearest each vector (cosine, in the embedding), and the heads whose update to the word's
position was largest, with the tokens those heads looked at.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..generate import encode_prompt
from .capture import record
from .lens import residual_streams


def _find(ids: list[int], word_ids: list[int]) -> int | None:
    """The position of the last token of the last occurrence of ``word_ids`` in ``ids``."""
    n = len(word_ids)
    for start in range(len(ids) - n, -1, -1):
        if ids[start: start + n] == word_ids:
            return start + n - 1
    return None


def word_position(tokenizer, context: str, word: str) -> tuple[list[int], int]:
    """A context's token ids and the position of ``word`` in it (its last token; a leading space is tried too)."""
    ids = encode_prompt(tokenizer, context, key="contexts")
    for form in (word, " " + word):
        try:
            word_ids = tokenizer.encode(form)
        except (ValueError, KeyError):
            continue
        if word_ids and (pos := _find(ids, word_ids)) is not None:
            return ids, pos
    raise ConfigError("contexts", context, f"a text that contains the word {word!r} (as the tokenizer splits it)")


@torch.no_grad()
def context_views(model: nn.Module, tokenizer, word: str, contexts: list[str], top_heads: int = 3,
                  nearest: int = 5) -> dict:
    """Everything the context picture shows, as plain numbers (see the module's docstring)."""
    if tokenizer is None:
        raise ConfigError("checkpoint", None, "a model that carries its tokenizer, to find the word in the contexts")
    if not isinstance(contexts, (list, tuple)) or len(contexts) < 2:
        raise ConfigError("contexts", contexts, "two or more texts that use the word, e.g. "
                          "contexts=['the mole dug a tunnel','a mole of carbon']")
    was_training = model.training
    model.eval()
    vectors, moved, looked = [], [], []
    embedding = model.token_embedding.weight.detach().float()
    try:
        for text in contexts:
            ids, pos = word_position(tokenizer, text, word)
            batch = torch.tensor([ids], device=embedding.device)
            limit = model.context_length
            if limit and len(ids) > limit:
                raise ConfigError("contexts", text, f"at most model.context_length={limit} tokens")
            streams, _ = residual_streams(model, batch)
            vectors.append(torch.stack([s[0, pos].float() for s in streams]))  # [L + 1, d]
            rec = record(model, batch, fields=("result", "pattern"))
            size = torch.stack([rec.result(i)[0, :, pos].float().norm(dim=-1) for i in range(len(model.blocks))])
            moved.append(size)  # [L, H]
            looked.append((ids, [[rec.pattern(i)[0, h, pos].float() for h in range(size.shape[1])]
                                 for i in range(len(model.blocks))]))
    finally:
        model.train(was_training)
    stacked = torch.stack(vectors)  # [C, L + 1, d]
    unit = F.normalize(stacked, dim=-1)
    similarity = torch.einsum("ild,jld->lij", unit, unit)  # [L + 1, C, C]
    c = len(contexts)
    off = ~torch.eye(c, dtype=torch.bool)
    near = []
    for layer in range(stacked.shape[1]):
        cos = F.normalize(stacked[:, layer], dim=-1) @ F.normalize(embedding, dim=-1).T  # [C, vocab]
        best = cos.topk(min(nearest, cos.shape[-1]), dim=-1)
        near.append([[(tokenizer.decode([int(j)]), float(v)) for v, j in zip(vals, idx)]
                     for vals, idx in zip(best.values, best.indices)])
    mean_moved = torch.stack(moved).mean(0)  # [L, H]
    order = mean_moved.flatten().argsort(descending=True)[:top_heads]
    heads = []
    n_heads = mean_moved.shape[1]
    for flat in order.tolist():
        layer, head = divmod(flat, n_heads)
        where = []
        for ids, rows in looked:
            row = rows[layer][head]
            k = min(3, row.shape[0])
            top = row.topk(k)
            where.append([(tokenizer.decode([ids[int(j)]]), float(v)) for v, j in zip(top.values, top.indices)])
        heads.append({"layer": layer, "head": head, "update_size": float(mean_moved[layer, head]), "looked_at": where})
    return {
        "word": word, "contexts": list(contexts),
        "labels": ["embedding"] + [f"after layer {i}" for i in range(stacked.shape[1] - 1)],
        "similarity": similarity.tolist(),
        "mean_similarity": [float(s[off].mean()) for s in similarity],
        "nearest": near,  # [layer][context] -> [(token, cosine)]
        "update_sizes": mean_moved.tolist(),
        "top_heads": heads,
    }
