"""The lecture made causal: knock a head out, or swap what it writes, and see whether the story breaks.

* ``sense_causal``: on sentences of the senses language (builder/data/senses.py), the model's *sense choice* for
  the word after the homonym — which sense's next words (``dug``/``burrowed`` against ``reacted``/``dissolved``...)
  get more probability at the homonym — is right for nearly every sentence; mean-ablating the sense head (found
  automatically: probes.sense_head) should drop it to chance while ablating any other head barely moves it; and
  patching the sense head's output at the homonym from a sentence whose cue names another sense should flip the
  choice to that sense.
* ``adjective_causal``: on the adjectives language, mean-ablating the adjective head (heads.score_heads' best
  ``adjective_noun`` head) should raise the loss of the prediction made at a noun that has adjectives (the verb or
  tail word that only its key adjective tells) far more than the loss elsewhere.

Both read and edit ``blocks.{l}.attn.hook_z`` (components/hooks.py); ablation is by the head's mean over every
token of the sentences measured.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import adjectives as adj
from ..data import senses
from .interventions import mean_activations, value_grid
from .plots import ShownFigure
from .probes import _batches, sense_head


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _heads(model: nn.Module) -> list[tuple[int, int]]:
    return [(layer, h) for layer in range(len(model.blocks)) for h in range(model.blocks[layer].attention.n_heads)]


def _mean_ablated(means: dict, layer: int, head: int):
    def fn(z, hook):
        z = z.clone()
        z[:, :, head] = means[_z(layer)][head]
        return z
    return fn


def _sense_table(tokenizer) -> dict[str, tuple[list[str], list[list[int]]]]:
    """homonym -> (its senses, sorted; each sense's next-word token ids)."""
    return {word: (sorted(table), [tokenizer.encode(" ".join(table[s][1])) for s in sorted(table)])
            for word, table in senses.HOMONYMS.items()}


def _chosen(logits: torch.Tensor, members, sentences, table) -> list[str]:
    """Per sentence, the sense whose next words the model gives the most probability at the homonym."""
    out = []
    for row, i in enumerate(members):
        s = sentences[i]
        names, ids = table[s.word]
        probs = logits[row, s.homonym].float().softmax(-1)
        out.append(names[int(torch.stack([probs[w].sum() for w in ids]).argmax())])
    return out


def _accuracy(model, sentences, encoded, table, fwd_hooks=(), by_word: bool = False):
    """The share of sentences whose sense the model chooses right (``by_word``: also per homonym)."""
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    for members, ids in encoded:
        logits = model.run_with_hooks(ids, fwd_hooks=fwd_hooks)
        for c, i in zip(_chosen(logits, members, sentences, table), members):
            word = sentences[i].word
            seen[word] = seen.get(word, 0) + 1
            right[word] = right.get(word, 0) + (c == sentences[i].sense)
    total = sum(right.values()) / len(sentences)
    return (total, {w: right[w] / seen[w] for w in sorted(seen)}) if by_word else total


def swapped_cue(sentence: senses.SenseSentence, rng: random.Random) -> tuple[senses.SenseSentence, str]:
    """The same sentence with its cue word replaced by a cue of another sense of the same homonym (same length)."""
    table = senses.HOMONYMS[sentence.word]
    other = rng.choice(sorted(s for s in table if s != sentence.sense))
    words = list(sentence.words)
    words[sentence.cue] = rng.choice(table[other][0])
    return senses.SenseSentence(words, sentence.homonym, sentence.cue, other), other


@torch.no_grad()
def sense_causal(model: nn.Module, tokenizer, sentences, seed: int = 0) -> dict:
    """Sense-choice accuracy trained, with each head mean-ablated, and the share of cue-swapped pairs whose choice
    flips to the donor's sense when a head's output at the homonym is patched in; the sense head's figures apart."""
    model.eval()
    table = _sense_table(tokenizer)
    encoded = list(_batches(tokenizer, sentences))
    chance = sum(1 / len(senses.HOMONYMS[s.word]) for s in sentences) / len(sentences)
    means = mean_activations(model, [ids for _, ids in encoded], [_z(layer) for layer in range(len(model.blocks))])
    trained = _accuracy(model, sentences, encoded, table)
    ablated = {f"L{layer}H{h}": _accuracy(model, sentences, encoded, table, [(_z(layer), _mean_ablated(means, layer, h))])
               for layer, h in _heads(model)}
    rng = random.Random(seed)
    pairs = [swapped_cue(s, rng) for s in sentences]
    donors = [p[0] for p in pairs]
    flipped = {}
    for layer, h in _heads(model):
        hits = 0
        for members, ids in encoded:
            donor_ids = torch.stack([torch.tensor(tokenizer.encode(donors[i].text)) for i in members])
            _, cache = model.run_with_cache(donor_ids, names_filter=_z(layer))
            where = torch.tensor([sentences[i].homonym for i in members])
            rows = torch.arange(len(members))

            def patch(z, hook, cache=cache, where=where, rows=rows, h=h):
                z = z.clone()
                z[rows, where, h] = cache[hook.name][rows, where, h]
                return z

            logits = model.run_with_hooks(ids, fwd_hooks=[(_z(layer), patch)])
            chosen = _chosen(logits, members, sentences, table)
            hits += sum(c == pairs[i][1] for c, i in zip(chosen, members))
        flipped[f"L{layer}H{h}"] = hits / len(sentences)
    found = sense_head(model, tokenizer, sentences)
    name = f"L{found['layer']}H{found['head']}"
    others = {k: v for k, v in ablated.items() if k != name}
    alone, per_word = _accuracy(model, sentences, encoded, table,
                                [(_z(found["layer"]), _mean_ablated(means, found["layer"], found["head"]))], by_word=True)
    # a head that carries some homonyms' senses as well (a backup): the second head whose ablation, with the sense
    # head's, drops the accuracy most
    with_second = {f"L{layer}H{h}": _accuracy(model, sentences, encoded, table, [
        (_z(found["layer"]), _mean_ablated(means, found["layer"], found["head"])),
        (_z(layer), _mean_ablated(means, layer, h))]) for layer, h in _heads(model) if f"L{layer}H{h}" != name}
    second = min(with_second, key=with_second.get) if with_second else None
    return {"sense_head": name, "sentences": len(sentences), "chance": chance, "trained": trained,
            "ablated": ablated, "sense_head_ablated": alone, "sense_head_ablated_by_homonym": per_word,
            "second_head": second, "both_ablated": with_second.get(second),
            "largest_other_drop": max(trained - v for v in others.values()) if others else 0.0,
            "flipped": flipped, "sense_head_flipped": flipped[name],
            "largest_other_flipped": max((v for k, v in flipped.items() if k != name), default=0.0)}


@torch.no_grad()
def adjective_causal(model: nn.Module, tokenizer, sentences, adjective_head: tuple[int, int]) -> dict:
    """The mean next-token loss at nouns that have adjectives and at every other position, trained and with each
    head mean-ablated; the adjective head's rise on each apart."""
    model.eval()
    encoded = list(_batches(tokenizer, sentences))
    means = mean_activations(model, [ids for _, ids in encoded], [_z(layer) for layer in range(len(model.blocks))])

    def losses(fwd_hooks=()) -> tuple[float, float]:
        at_nouns = elsewhere = n_nouns = n_else = 0.0
        for members, ids in encoded:
            logits = model.run_with_hooks(ids, fwd_hooks=fwd_hooks)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
            loss = loss.view(len(members), -1)
            noun = torch.zeros_like(loss, dtype=torch.bool)
            for row, i in enumerate(members):
                for position, adjectives in sentences[i].noun_adjectives.items():
                    noun[row, position] = bool(adjectives)
            at_nouns, n_nouns = at_nouns + float(loss[noun].sum()), n_nouns + int(noun.sum())
            elsewhere, n_else = elsewhere + float(loss[~noun].sum()), n_else + int((~noun).sum())
        return at_nouns / n_nouns, elsewhere / n_else

    base = losses()
    rises = {}
    for layer, h in _heads(model):
        nouns, other = losses([(_z(layer), _mean_ablated(means, layer, h))])
        rises[f"L{layer}H{h}"] = {"nouns": nouns - base[0], "elsewhere": other - base[1]}
    name = f"L{adjective_head[0]}H{adjective_head[1]}"
    return {"adjective_head": name, "loss_at_nouns": base[0], "loss_elsewhere": base[1], "rises": rises,
            "adjective_head_rise": rises[name],
            "largest_other_rise_at_nouns": max((v["nouns"] for k, v in rises.items() if k != name), default=0.0)}


def adjective_sentences(n: int = 400, seed: int = 1234) -> list:
    return adj.generate(n, seed=seed)


def sense_figure(result: dict) -> ShownFigure:
    """Layer x head: the sense-choice accuracy with each head mean-ablated, and the share of pairs each head's
    patched output flips."""
    names = list(result["ablated"])
    layers = sorted({int(n[1:n.index("H")]) for n in names})
    heads = sorted({int(n[n.index("H") + 1:]) for n in names})
    grid = lambda d: np.array([[d[f"L{la}H{h}"] for h in heads] for la in layers])  # noqa: E731
    fig = ShownFigure(figsize=(3.2 + 1.4 * max(len(heads), 2), 1.8 + 0.6 * len(layers)), layout="constrained")
    axes = fig.subplots(1, 2)
    rows, cols = [f"layer {la}" for la in layers], [f"H{h}" for h in heads]
    value_grid(fig, axes[0], grid(result["ablated"]), cols, rows, "sense accuracy, the head ablated", "accuracy",
          symmetric=False)
    value_grid(fig, axes[1], grid(result["flipped"]), cols, rows, "pairs flipped, the head patched", "share flipped",
          symmetric=False)
    fig.suptitle(f"sense choice after the homonym: trained {result['trained']:.0%}, chance {result['chance']:.0%}",
                 fontsize=10)
    return fig
