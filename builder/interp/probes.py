"""The lecture's claims, measured in a trained model of the senses language (builder/data/senses.py):

* ``sense_probes``: a linear probe for a homonym's sense on its vector after each layer — at the embedding every
  sentence gives the same vector (chance), and where attention has moved the cue's meaning in, the probe reads it;
* ``sense_head``: the head that carries the sense — the mean attention from the homonym to its cue word;
* ``word_classes``: the share of an adjective's nearest tokens that are adjectives (of a noun's, nouns);
* ``lens_agreement``: the share of positions where the last layer's lens guess is the model's own prediction.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..data import adjectives as adj
from ..errors import ConfigError
from .capture import record
from .embed import same_group_fraction
from .lens import logit_lens, residual_streams


def _ids(tokenizer, words: list[str]) -> list[int]:
    ids = tokenizer.encode(" ".join(words))
    if len(ids) != len(words):
        raise ConfigError("checkpoint", None, "a word-level model of the senses language (one token per word: "
                          f"data=lecture or data=senses); its tokenizer makes {len(ids)} tokens of {len(words)} words")
    return ids


def _batches(tokenizer, sentences):
    """Sentences grouped by length: (indices, ids tensor) per group."""
    groups: dict[int, list[int]] = defaultdict(list)
    encoded = [_ids(tokenizer, s.words) for s in sentences]
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    for members in groups.values():
        yield members, torch.tensor([encoded[i] for i in members])


@torch.no_grad()
def homonym_vectors(model: nn.Module, tokenizer, sentences) -> torch.Tensor:
    """``[N, n_layers + 1, d_model]``: each sentence's homonym vector after the embedding and after each layer."""
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(sentences)
    for members, ids in _batches(tokenizer, sentences):
        streams, _ = residual_streams(model, ids.to(model.token_embedding.weight.device))
        stacked = torch.stack(streams, 1).float().cpu()  # [B, L + 1, T, d]
        for row, i in enumerate(members):
            out[i] = stacked[row, :, sentences[i].homonym]
    return torch.stack(out)


def _fit_probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, classes: int, seed: int) -> float:
    """Held-out accuracy of a logistic-regression probe (features standardised on the training rows)."""
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    probe = nn.Linear(z.shape[1], classes)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=g)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-3)
    with torch.enable_grad():  # callers may hold no_grad for the model; the probe itself learns
        for _ in range(200):
            opt.zero_grad()
            nn.functional.cross_entropy(probe(z[train]), y[train]).backward()
            opt.step()
    with torch.no_grad():
        test = ~train
        return float((probe(z[test]).argmax(-1) == y[test]).float().mean())


def sense_probes(model: nn.Module, tokenizer, sentences, train_fraction: float = 0.7, seed: int = 0) -> dict:
    """Per layer: the held-out accuracy of a linear sense probe on the homonym's vector, averaged over the
    homonyms (one probe per homonym and layer), beside chance (the majority sense's share in the test rows)."""
    vectors = homonym_vectors(model, tokenizer, sentences)
    n_layers = vectors.shape[1]
    by_word: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sentences):
        by_word[s.word].append(i)
    accuracy = torch.zeros(n_layers)
    chance = 0.0
    per_word = {}
    g = torch.Generator().manual_seed(seed)
    for word, rows in sorted(by_word.items()):
        senses = sorted({sentences[i].sense for i in rows})
        y = torch.tensor([senses.index(sentences[i].sense) for i in rows])
        train = torch.zeros(len(rows), dtype=torch.bool)
        train[torch.randperm(len(rows), generator=g)[: int(train_fraction * len(rows))]] = True
        accs = [_fit_probe(vectors[rows, layer], y, train, len(senses), seed) for layer in range(n_layers)]
        majority = float(torch.bincount(y[~train], minlength=len(senses)).max()) / int((~train).sum())
        per_word[word] = {"senses": senses, "accuracy": accs, "chance": majority, "sentences": len(rows)}
        accuracy += torch.tensor(accs)
        chance += majority
    k = len(by_word)
    mean = (accuracy / k).tolist()
    rises = next((i for i, a in enumerate(mean) if a >= 0.95), None)
    labels = ["embedding"] + [f"after layer {i}" for i in range(n_layers - 1)]
    return {"labels": labels, "accuracy": mean, "chance": chance / k, "per_homonym": per_word,
            "rises_at": None if rises is None else labels[rises]}


@torch.no_grad()
def sense_head(model: nn.Module, tokenizer, sentences) -> dict:
    """Every head's mean attention from the homonym to its cue word; the best head first."""
    total = None
    for members, ids in _batches(tokenizer, sentences):
        rec = record(model, ids.to(model.token_embedding.weight.device), fields=("pattern",))
        pats = torch.stack([rec.pattern(i).float().cpu() for i in range(len(model.blocks))], 1)  # [B, L, H, T, T]
        for row, i in enumerate(members):
            s = sentences[i]
            w = pats[row, :, :, s.homonym, s.cue]  # [L, H]
            total = w if total is None else total + w
    mean = total / len(sentences)
    flat = int(mean.flatten().argmax())
    layer, head = divmod(flat, mean.shape[1])
    return {"layer": layer, "head": head, "score": float(mean[layer, head]), "scores": mean.tolist()}


def word_classes(model: nn.Module, tokenizer, k: int = 5) -> dict:
    """The share of an adjective's ``k`` nearest tokens (among the adjectives language's adjectives and nouns) that
    are adjectives, and of a noun's that are nouns."""
    return same_group_fraction(model, tokenizer, {"adjectives": list(adj.ADJECTIVES), "nouns": list(adj.NOUNS)}, k=k)


@torch.no_grad()
def lens_agreement(model: nn.Module, tokenizer, sentences) -> float:
    """The share of positions (over the sentences) where the last layer's lens guess is the model's prediction."""
    hits = total = 0
    for _, ids in _batches(tokenizer, sentences):
        for row in ids:
            lens = logit_lens(model, row[None].to(model.token_embedding.weight.device), top_k=1)
            hits += sum(g[0] == p for g, p in zip(lens["top_ids"][-1], lens["prediction"]))
            total += len(lens["prediction"])
    return hits / total
