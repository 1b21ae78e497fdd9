"""task=heads: score every attention head against named patterns and draw the best head of each.

    scores = score_heads(model, tokenizer)
    scores["adjective_noun"][0]   # {"layer": 1, "head": 2, "score": 0.83}: the best head first

Every entry also says which key/value head the query head reads (``"kv_head"``) and how many query heads
share it (``"kv_shared"``: 1 for multi-head attention; the table prints ``own``, else ``1 (heads 4-7)``).

Patterns (each score is a mean attention weight, so it lies in [0, 1]):

* ``adjective_noun``: from each noun that has adjectives, the attention mass on its own adjectives
  (summed over them), on sentences of the adjectives language (``builder/adjectives.py``), each
  led by another sentence as context (see ``adjective_probes``). Skipped,
  with the reason in ``scores["skipped"]``, when the tokenizer does not spell those sentences one
  token per word (a model not trained on that language).
* ``previous_token``: from position t to t - 1 (t >= 1), on random token ids.
* ``first_token``: from position t to position 0 (t >= 1; position 0 can only look at itself).
* ``induction``: on a random sequence repeated, ``[r, r]``, from each position t of the second half
  to the token just after the previous occurrence of the current token, t - len(r) + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.adjectives import LECTURE_SENTENCE, generate
from ..tables import table
from .capture import head_layout, head_mask, kv_head_of, record
from .pictures import head_title
from .plots import draw_head

PATTERNS = ("adjective_noun", "previous_token", "first_token", "induction")
PROBE_SEED = 1234
N_PROBE_SENTENCES = 200
MIN_PROBE_NOUNS = 20
RANDOM_ROWS = 16
RANDOM_LENGTH = 64  # at most; never more than the model's context
INDUCTION_HALF = 32  # at most len(r); never more than half the model's context
DRAW_LENGTH = 16  # tokens in the pictures of the random-token patterns
# a head "does" a pattern when at least this share of its attention goes where the pattern says (uniform attention
# over the 32-64 tokens of a random probe scores about 0.02-0.03); below it the model is said to have no such head
FOUND = 0.3


# ------------------------------------------------------------------------------------------- probes


def _context(model) -> int | None:
    return getattr(model, "context_length", None)


def _vocab_size(model) -> int:
    return model.token_embedding.num_embeddings


def _token_ids(tokenizer, words: list[str]) -> list[int] | None:
    """The ids of ``words`` if the tokenizer spells them one token per word, else None."""
    try:
        ids = tokenizer.encode(" ".join(words))
    except (ValueError, KeyError):
        return None
    if len(ids) != len(words):
        return None
    try:
        if any(tokenizer.decode([i]).strip() != w for i, w in zip(ids, words)):
            return None
    except (ValueError, KeyError):
        return None
    return ids


def adjective_probes(tokenizer, sentences, context: int | None):
    """Batch the sentences one per row, right-padded: ``(ids, attention_mask, targets, nouns)`` or a reason (str).

    Each row is one probe sentence, led by the previous probe sentence as context when both fit the
    model's context (training windows run across sentences, so a sentence alone at position 0 is
    out of distribution, and a noun with few tokens before it gives its adjectives much weight by
    chance). Only the probe sentence's nouns count: ``targets[b, t, s]`` is 1 where s is an adjective
    of the noun at t; ``nouns[b, t]`` marks nouns with adjectives.
    """
    if tokenizer is None:
        return "the model carries no tokenizer, so the probe sentences cannot be encoded"
    encoded = [(_token_ids(tokenizer, s.words), s) for s in sentences]
    encoded = [(ids, s) for ids, s in encoded if ids is not None and (context is None or len(ids) <= context)]
    rows = []
    for i, (ids, s) in enumerate(encoded):
        lead = encoded[i - 1][0] if len(encoded) > 1 else []
        if context is not None and len(lead) + len(ids) > context:
            lead = []
        rows.append((lead + ids, len(lead), s))
    n_nouns = sum(1 for _, _, s in rows for adjs in s.noun_adjectives.values() if adjs)
    if n_nouns < MIN_PROBE_NOUNS:
        kind = getattr(tokenizer, "kind", type(tokenizer).__name__)
        return (f"the tokenizer (kind={kind}) spells only {len(rows)} of {len(sentences)} adjectives-language probe "
                f"sentences one token per word ({n_nouns} nouns with adjectives, {MIN_PROBE_NOUNS} needed): "
                "train on data=adjectives to score this pattern")
    width = max(len(row) for row, _, _ in rows)
    b = len(rows)
    ids = torch.zeros(b, width, dtype=torch.long)
    attention_mask = torch.zeros(b, width, dtype=torch.long)
    targets = torch.zeros(b, width, width)
    nouns = torch.zeros(b, width)
    for r, (row, offset, s) in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
        for noun, adjs in s.noun_adjectives.items():
            if adjs:
                nouns[r, offset + noun] = 1
                targets[r, offset + noun, [offset + a for a in adjs]] = 1
    return ids, attention_mask, targets, nouns


def random_ids(vocab_size: int, rows: int, length: int, seed: int, distinct: bool = False) -> torch.Tensor:
    """``[rows, length]`` random token ids; ``distinct``: no id twice in a row when the vocabulary allows it."""
    gen = torch.Generator().manual_seed(seed)
    if distinct and vocab_size >= length:
        return torch.stack([torch.randperm(vocab_size, generator=gen)[:length] for _ in range(rows)])
    return torch.randint(vocab_size, (rows, length), generator=gen)


def _patterns(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every head's pattern: ``[L, B, H, T, T]``."""
    rec = record(model, ids, attention_mask, fields=("pattern",))
    return torch.stack([rec.pattern(layer).float().cpu() for layer in range(len(model.blocks))])


def _kv_layouts(model, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``(n_heads, n_kv_heads)`` per layer; a module that does not say has one key/value head per query head."""
    layouts = head_layout(model)
    return [(layouts[i] if i < len(layouts) and layouts[i] is not None else (n_heads, n_heads)) for i in range(n_layers)]


def _ranked(per_head: torch.Tensor, layouts: list[tuple[int, int]] | None = None) -> list[dict]:
    """``[L, H]`` scores → entries sorted best first (ties: lower layer, then lower head), each with the key/value
    head it reads and how many query heads share that one."""
    n_layers, n_heads = per_head.shape
    layouts = layouts or [(n_heads, n_heads)] * n_layers
    entries = []
    for layer in range(n_layers):
        total, n_kv = layouts[layer]
        for head in range(n_heads):
            entries.append({"layer": layer, "head": head, "score": float(per_head[layer, head]),
                            "kv_head": kv_head_of(head, total, n_kv), "kv_shared": total // n_kv})
    return sorted(entries, key=lambda e: (-e["score"], e["layer"], e["head"]))


# ------------------------------------------------------------------------------------------- scores


def _diagonal_mean(p: torch.Tensor, offset: int, start: int) -> torch.Tensor:
    """Mean over batch and query t >= start of ``p[..., t, t - offset]``; ``p``: ``[L, B, H, T, T]``."""
    diag = torch.diagonal(p, offset=-offset, dim1=-2, dim2=-1)  # [L, B, H, T - offset]: query t = offset + i
    return diag[..., start - offset:].mean(dim=(1, 3))


def score_heads(model, tokenizer, probes: Sequence | None = None) -> dict:
    """``{pattern: [{"layer", "head", "score"}, ...] best first, "skipped": {pattern: reason}}``.

    ``probes``: the adjectives-language sentences (``builder.adjectives.Sentence``) for ``adjective_noun``;
    default ``generate(200, seed=1234)``. The other patterns use seeded random token ids.
    """
    context = _context(model)
    vocab = _vocab_size(model)
    out: dict = {}
    skipped: dict[str, str] = {}
    layouts = None  # known once a pattern is recorded: (n_heads, n_kv_heads) per layer

    def ranked(per_head: torch.Tensor) -> list[dict]:
        nonlocal layouts
        layouts = layouts or _kv_layouts(model, per_head.shape[0], per_head.shape[1])
        return _ranked(per_head, layouts)

    sentences = list(probes) if probes is not None else generate(N_PROBE_SENTENCES, seed=PROBE_SEED)
    batch = adjective_probes(tokenizer, sentences, context)
    if isinstance(batch, str):
        out["adjective_noun"] = []
        skipped["adjective_noun"] = batch
    else:
        ids, attention_mask, targets, nouns = batch
        p = _patterns(model, ids, attention_mask)  # [L, B, H, T, T]
        mass = (p * targets[None, :, None]).sum(-1)  # [L, B, H, T]
        out["adjective_noun"] = ranked((mass * nouns[None, :, None]).sum(dim=(1, 3)) / nouns.sum())

    length = min(RANDOM_LENGTH, context or RANDOM_LENGTH)
    if length < 2:
        for name in ("previous_token", "first_token"):
            out[name], skipped[name] = [], f"model.context_length={context}: no query has a previous token"
    else:
        p = _patterns(model, random_ids(vocab, RANDOM_ROWS, length, PROBE_SEED))
        out["previous_token"] = ranked(_diagonal_mean(p, offset=1, start=1))
        out["first_token"] = ranked(p[..., 1:, 0].mean(dim=(1, 3)))

    half = min(INDUCTION_HALF, (context or 2 * INDUCTION_HALF) // 2)
    if half < 2:
        out["induction"], skipped["induction"] = [], f"model.context_length={context}: too short to repeat a sequence"
    else:
        r = random_ids(vocab, RANDOM_ROWS, half, PROBE_SEED + 1, distinct=True)
        p = _patterns(model, torch.cat([r, r], dim=1))
        # query t in [half, 2 half) looks at t - half + 1: the diagonal at offset half - 1
        out["induction"] = ranked(_diagonal_mean(p, offset=half - 1, start=half))

    out["skipped"] = skipped
    return {name: out[name] for name in (*PATTERNS, "skipped")}


def best_heads(scores: dict, k: int = 1) -> dict[str, list[dict]]:
    """The ``k`` best entries of every scored pattern (patterns that were skipped are left out)."""
    return {name: entries[:k] for name, entries in scores.items()
            if name != "skipped" and isinstance(entries, list) and entries}


# ------------------------------------------------------------------------------------------- task


def drawing_probe(pattern: str, model, tokenizer) -> torch.Tensor:
    """``[1, T]`` ids to draw ``pattern``'s best head on: a probe of the kind the score was measured on."""
    vocab = _vocab_size(model)
    if pattern == "adjective_noun":
        candidates = [LECTURE_SENTENCE.split()] + [s.words for s in generate(N_PROBE_SENTENCES, seed=PROBE_SEED)]
        for words in candidates:
            ids = _token_ids(tokenizer, words) if tokenizer is not None else None
            if ids is not None and (_context(model) is None or len(ids) <= _context(model)):
                return torch.tensor([ids])
        raise ValueError("no adjectives-language probe fits this tokenizer")
    if pattern == "induction":
        half = min(DRAW_LENGTH // 2, INDUCTION_HALF, (_context(model) or DRAW_LENGTH) // 2)
        r = random_ids(vocab, RANDOM_ROWS, half, PROBE_SEED + 1, distinct=True)[:1]
        return torch.cat([r, r], dim=1)
    length = min(DRAW_LENGTH, RANDOM_LENGTH, _context(model) or DRAW_LENGTH)
    return random_ids(vocab, RANDOM_ROWS, min(RANDOM_LENGTH, _context(model) or RANDOM_LENGTH), PROBE_SEED)[:1, :length]


def found(scores: dict) -> dict[str, bool]:
    """For each scored pattern: whether its best head scores FOUND or more (the model has such a head)."""
    return {name: entries[0]["score"] >= FOUND for name, entries in best_heads(scores, 1).items()}


def absent(pattern: str, best: dict) -> str:
    """The line that says the model has no ``pattern`` head: its best head scores below FOUND."""
    return (f"no {pattern} head: the best, L{best['layer']} H{best['head']}, scores {best['score']:.3f}, below "
            f"{FOUND} (a head that does it puts at least {FOUND:.0%} of its attention there)")


def draw_best(model, tokenizer, scores: dict, out_dir: Path) -> dict[str, str]:
    """``best_{pattern}_L{l}_H{h}.png`` for the best head of each scored pattern (titled as no such head when it
    scores below FOUND); returns pattern → file name."""
    drawn = {}
    for pattern, (best,) in best_heads(scores, 1).items():
        ids = drawing_probe(pattern, model, tokenizer)
        layer, head = best["layer"], best["head"]
        rec = record(model, ids, fields=("pattern", "mask"), layers=[layer])
        tokens = ([tokenizer.decode([int(i)]) for i in ids[0]] if tokenizer is not None
                  else [str(int(i)) for i in ids[0]])
        name = f"best_{pattern}_L{layer}_H{head}.png"
        draw_head(Path(out_dir) / name, tokens, rec.pattern(layer)[0, head].float().cpu(),
                  head_mask(rec, layer, ids.shape[1]),
                  f"{pattern}: {head_title(rec, layer, head)} (score {best['score']:.3f})" if best["score"] >= FOUND
                  else f"this model has no {pattern} head (no head scores {FOUND} or more);\n"
                       f"the highest: {head_title(rec, layer, head)}, score {best['score']:.3f}")
        drawn[pattern] = name
    return drawn


def _kv_cell(e: dict) -> str:
    """``own`` (multi-head attention) or ``1 (heads 4-7)``: the key/value head and the query heads sharing it."""
    if "kv_head" not in e:
        return ""
    shared, kv = e.get("kv_shared", 1), e["kv_head"]
    return f"{kv} (heads {kv * shared}-{(kv + 1) * shared - 1})" if shared > 1 else "own"


def format_table(scores: dict, k: int = 3) -> str:
    """The ``k`` best heads of each pattern as a text table (a skipped pattern says why); the kv column says
    which key/value head each query head reads and who shares it (``own`` for multi-head attention)."""
    rows, reasons = [], []
    for pattern in PATTERNS:
        entries = scores.get(pattern) or []
        if not entries:
            rows.append([pattern, "skipped", "", "", "", ""])
            reasons.append(f"{pattern} skipped: {scores.get('skipped', {}).get(pattern, 'no heads')}")
        rows += [[pattern, rank, e["layer"], e["head"], _kv_cell(e), f"{e['score']:.3f}"]
                 for rank, e in enumerate(entries[:k], 1)]
    text = table(["pattern", "rank", "layer", "head", "kv", "score"], rows, align="lrrrlr")
    missing = [absent(p, entries[0]) for p, entries in best_heads(scores, 1).items() if entries[0]["score"] < FOUND]
    return "\n".join([text, *reasons, *missing])  # the reasons below the table, so the score column stays narrow
