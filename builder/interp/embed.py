"""Directions in embedding space carry meaning: nearest tokens, a direction made from word pairs, a 2-D map.

    near = nearest_tokens(model, tokenizer, "cat", k=8)                       # cosine, in the embedding
    near = nearest_tokens(model, tokenizer, "cat", space="unembedding")       # ... in the unembedding
    d = pair_direction(model, tokenizer, [("man", "woman"), ("king", "queen")], ["uncle", "aunt"])
    fig = embedding_figure(model, tokenizer, words=["cat"], pairs=..., groups={"nouns": [...], ...})

A word must be one token of the model's tokenizer (a word-level or BPE model); anything else is refused by name,
with how many tokens it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

SPACES = ("embedding", "unembedding")


def token_id(tokenizer, word: str, key: str = "words") -> int:
    """The id of ``word`` when it is exactly one token (a leading space is tried too, as BPE vocabularies store
    most words with it)."""
    if tokenizer is None:
        raise ConfigError("checkpoint", None, "a model that carries its tokenizer, to look words up")
    tried, unknown = [], None
    for form in (word, " " + word):
        try:
            ids = tokenizer.encode(form)
        except (ValueError, KeyError) as err:
            unknown = unknown or err
            continue
        if len(ids) == 1:
            return ids[0]
        tried.append(len(ids))
    many = f"; it is {min(tried)} tokens" if tried else f"; the tokenizer cannot encode it: {unknown}"
    raise ConfigError(key, word, f"a word that is one token of the model's tokenizer{many} (a character-level "
                      "model has no word vectors: use a word-level or BPE model, e.g. experiment=adjective_head)")


def matrix(model: nn.Module, space: str = "embedding") -> torch.Tensor:
    """``[vocab, d_model]``: the token embedding, or the unembedding's rows (the same matrix when tied)."""
    if space not in SPACES:
        raise ConfigError("space", space, f"one of {', '.join(SPACES)}")
    weight = model.token_embedding.weight if space == "embedding" else model.unembedding.weight
    return weight.detach().float()


def nearest_tokens(model: nn.Module, tokenizer, word: str, k: int = 10, space: str = "embedding",
                   vocabulary: list[int] | None = None) -> list[tuple[int, float]]:
    """The ``k`` tokens whose vectors point most nearly the way ``word``'s does (cosine), the word itself left out.
    ``vocabulary``: the ids to search (default: every id the tokenizer knows)."""
    w = matrix(model, space)
    i = token_id(tokenizer, word)
    ids = torch.tensor(vocabulary if vocabulary is not None else range(min(w.shape[0], _vocab(tokenizer, w))))
    ids = ids[ids != i]
    cos = F.cosine_similarity(w[ids], w[i][None], dim=-1)
    best = cos.topk(min(k, len(ids)))
    return [(int(ids[j]), float(v)) for v, j in zip(best.values, best.indices)]


def _vocab(tokenizer, w: torch.Tensor) -> int:
    return getattr(tokenizer, "vocab_size", w.shape[0])


def pair_direction(model: nn.Module, tokenizer, pairs, words=(), space: str = "embedding") -> dict:
    """The lecture's direction: the mean of ``vector(b) - vector(a)`` over the pairs ``(a, b)``, made unit length;
    each pair's words and each of ``words`` projected on it (``projections``: word -> coordinate), and how well
    each pair's own difference lines up with the direction (``alignment``: word pair -> cosine)."""
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ConfigError("pairs", [list(p) for p in pairs], "a list of word pairs, e.g. [[man,woman],[king,queen]]")
    w = matrix(model, space)
    diffs = torch.stack([w[token_id(tokenizer, b, "pairs")] - w[token_id(tokenizer, a, "pairs")] for a, b in pairs])
    direction = F.normalize(diffs.mean(0), dim=0)
    shown = list(dict.fromkeys([x for p in pairs for x in p] + list(words)))
    return {
        "direction": direction,
        "projections": {x: float(w[token_id(tokenizer, x)] @ direction) for x in shown},
        "alignment": {f"{a}->{b}": float(F.cosine_similarity(d, direction, dim=0)) for (a, b), d in zip(pairs, diffs)},
    }


def pca_2d(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two principal components of ``vectors`` ``[N, d]``: the 2-D coordinates and the share of the
    variance each component explains."""
    centred = vectors - vectors.mean(0, keepdim=True)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    var = s.pow(2)
    return centred @ v[:2].T, var[:2] / var.sum().clamp_min(1e-12)


def embedding_map(model: nn.Module, tokenizer, groups: dict, space: str = "embedding") -> dict:
    """Chosen tokens in two dimensions (PCA), with the group each belongs to."""
    if not isinstance(groups, dict) or not groups or not all(
            isinstance(ws, (list, tuple)) and ws and all(isinstance(x, str) for x in ws) for ws in groups.values()):
        raise ConfigError("groups", groups, "a mapping of group name -> words, e.g. {nouns: [cat, dog], verbs: [ran]}")
    w = matrix(model, space)
    words = [(g, x) for g, ws in groups.items() for x in ws]
    if len(words) < 3:
        raise ConfigError("groups", groups, "at least 3 words in all, to lay them out in two dimensions")
    coords, explained = pca_2d(w[torch.tensor([token_id(tokenizer, x, "groups") for _, x in words])])
    return {"words": [x for _, x in words], "groups": [g for g, _ in words], "xy": coords.tolist(),
            "explained": explained.tolist()}


def same_group_fraction(model: nn.Module, tokenizer, groups: dict, k: int = 5, space: str = "embedding") -> dict:
    """For each group: the share of its words' nearest tokens (searched among all grouped words) that are in the same
    group — word classes in the embedding, measured. Each word's ``k`` nearest, but never more than the other words
    of its group (a group of 3 has 2 others: its words are asked for their 2 nearest), so groups that are perfectly
    apart read 1.0 whatever their size; a group of one word has nothing to find (0.0)."""
    ids = {x: token_id(tokenizer, x, "groups") for ws in groups.values() for x in ws}
    group_of = {ids[x]: g for g, ws in groups.items() for x in ws}
    out = {}
    for g, ws in groups.items():
        hits = total = 0
        others = len({ids[x] for x in ws}) - 1
        for x in ws:
            for j, _ in nearest_tokens(model, tokenizer, x, min(k, others), space, vocabulary=list(group_of)) if others else []:
                hits += group_of[j] == g
                total += 1
        out[g] = hits / total if total else 0.0
    return out
