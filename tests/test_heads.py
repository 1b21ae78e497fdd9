"""The adjectives language, the word tokenizer, head scoring (a planted head) and task=heads end to end."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import builder
from builder.data import adjectives as A
from builder.data.corpus import Corpus
from builder.data.datamodule import TokenDataModule
from builder.data.tokenizers import CharTokenizer, WordTokenizer, tokenizer_from_dict
from builder.interp.heads import FOUND, PATTERNS, best_heads, score_heads
from components.hooks import HookedModel, HookPoint

# ----------------------------------------------------------------------------- the adjectives language


def check_noun_phrase(words: list[str], start: int, sentence: A.Sentence) -> tuple[int, str | None]:
    """Check DET ADJ{0..3} NOUN at ``start`` from scratch; return (noun index, key adjective or None)."""
    assert words[start] in A.DETERMINERS
    i = start + 1
    while words[i] in A.ADJECTIVES:
        i += 1
    noun = i
    assert words[noun] in A.NOUNS
    adjs = list(range(start + 1, noun))
    assert sentence.noun_adjectives[noun] == adjs
    names = [words[a] for a in adjs]
    assert len(names) <= 3 and len(set(names)) == len(names)
    keys = [a for a in names if a in A.KEY_ADJECTIVES]
    if names:
        assert len(keys) == 1, names
        assert sentence.key_adjective(noun) == adjs[names.index(keys[0])]
        return noun, keys[0]
    assert sentence.key_adjective(noun) is None
    return noun, None


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_generated_sentences_follow_the_grammar(seed):
    for s in A.generate(30, seed):
        w = s.words
        assert A.follows_grammar(w)
        subject, s_key = check_noun_phrase(w, 0, s)
        verb, prep = w[subject + 1], w[subject + 2]
        assert verb == A.VERB_OF[s_key] if s_key else verb in A.NEUTRAL_VERBS
        assert prep in A.PREPOSITIONS
        obj, o_key = check_noun_phrase(w, subject + 3, s)
        assert w[obj + 1] == A.TAIL_OF[o_key] if o_key else w[obj + 1] in A.NEUTRAL_TAILS
        assert w[obj + 2:] == ["."]
        assert s.nouns == [subject, obj]
        assert all(word in A.VOCABULARY for word in w)


def test_generation_is_deterministic_and_varied():
    assert [s.words for s in A.generate(50, 3)] == [s.words for s in A.generate(50, 3)]
    assert [s.words for s in A.generate(50, 3)] != [s.words for s in A.generate(50, 4)]
    sentences = A.generate(3000, 0)
    counts = Counter(len(s.noun_adjectives[n]) for s in sentences for n in s.nouns)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 1200
    # the key adjective sits at a uniformly random slot: in 3-adjective phrases, about 1/3 each
    slots = Counter(adjs.index(s.key_adjective(n)) for s in sentences for n, adjs in s.noun_adjectives.items()
                    if len(adjs) == 3)
    total = sum(slots.values())
    assert all(0.27 < slots[i] / total < 0.40 for i in range(3)), slots
    text = A.corpus_text(20, 3)
    assert text.splitlines() == [s.text for s in A.generate(20, 3)]
    assert A.follows_grammar(A.LECTURE_SENTENCE.split())


def test_follows_grammar_rejects_every_broken_rule():
    ok = "a fluffy blue creature roamed through the verdant shiny forest brightly .".split()
    assert A.follows_grammar(ok)
    broken = [
        "a fluffy blue creature swam through the verdant shiny forest brightly .",  # verb of another key adjective
        "a blue creature roamed through the verdant shiny forest brightly .",  # no key adjective
        "a fluffy loud creature roamed through the verdant shiny forest brightly .",  # two key adjectives
        "a fluffy blue red old creature roamed through the shiny forest brightly .",  # four adjectives
        "a fluffy blue blue creature roamed through the shiny forest brightly .",  # repeated adjective
        "a creature roamed through the shiny forest brightly .",  # no adjectives: a neutral verb
        "a creature waited through the shiny forest softly .",  # tail of another key adjective
        "a creature waited through the forest brightly .",  # no adjectives: a neutral tail
        "a creature waited the forest today .",  # no preposition
        "a fluffy blue creature roamed through the verdant shiny forest brightly",  # no "."
        "a fluffy blue creature roamed through the verdant shiny forest brightly . .",  # trailing word
        "fluffy blue creature roamed through the verdant shiny forest brightly .",  # no determiner
    ]
    for text in broken:
        assert not A.follows_grammar(text.split()), text
    assert not A.follows_grammar([])


# ----------------------------------------------------------------------------------- word tokenizer


def test_word_tokenizer_round_trip(tmp_path):
    text = A.corpus_text(200, 1)
    tok = WordTokenizer.from_text(text)
    assert tok.words == sorted(set(text.split())) and tok.vocab_size == len(tok.words)
    ids = tok.encode(text)
    assert tok.decode(ids) == " ".join(text.split())
    assert tok.encode_array(text).dtype == torch.tensor(0).numpy().dtype and tok.encode_array(text).tolist() == ids
    assert tok.encode("") == [] and tok.decode([]) == ""
    with pytest.raises(ValueError, match="'dragon'"):
        tok.encode("a fluffy dragon")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    torch.save({"tokenizer": tok.to_dict()}, tmp_path / "t.pt")
    back = tokenizer_from_dict(torch.load(tmp_path / "t.pt", weights_only=True)["tokenizer"])
    assert isinstance(back, WordTokenizer) and back.words == tok.words
    assert back.fingerprint() == tok.fingerprint() != WordTokenizer(["a", "b"]).fingerprint()
    assert back.encode(text) == ids


def test_adjectives_corpus_and_datamodule(tmp_path):
    assert Corpus("adjectives", n_sentences=40, seed=2).text() == A.corpus_text(40, 2)
    dm = TokenDataModule(source="adjectives", tokenizer="word", n_sentences=400, seed=2, context_length=16,
                         batch_size=4, samples_per_epoch=8, cache_dir=str(tmp_path))
    dm.setup()
    assert dm.tokenizer.kind == "word" and set(dm.tokenizer.words) <= set(A.VOCABULARY)
    assert dm.num_tokens == len(A.corpus_text(400, 2).split())
    x, y = dm.train_dataset[0]
    assert torch.equal(x[1:], y[:-1])
    lines = dm.tokenizer.decode(dm.tokens[:200].tolist()).replace(" . ", " .\n").splitlines()
    assert all(A.follows_grammar(line.split()) for line in lines[:-1])


# ------------------------------------------------------------------------------------------ scoring


def planted_model(n_layers: int = 2, layer: int = 0, head: int = 1):
    """A model whose (layer, head) attends from every token to the previous one; all other heads are uniform.

    Channels 0-15 hold a zero-mean one-hot code of the position, channels 32-63 a zero-mean ±1 code of the
    token, so LayerNorm divides every position by the same number. The planted head's W_q reads the
    position code, its W_k reads it shifted by one (code(s) -> code(s + 1)): q_t · k_s is large only
    when s = t - 1. Every other head has W_q = W_k = 0, so it spreads its attention evenly.
    """
    cfg = builder.compose(["model=tiny", f"model.n_layers={n_layers}", "model.d_model=64", "model.n_heads=4",
                           "model.context_length=16", "model.vocab_size=20", "model/embedding=learned"]).model
    model = builder.build_model(cfg)
    d, ctx, d_head, n_heads = 64, 16, 16, 4
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        table = torch.zeros(ctx, d)
        table[:, :ctx] = 4.0 * (torch.eye(ctx) - 1.0 / ctx)
        model.positions.table.weight.copy_(table)
        emb = torch.zeros(20, d)
        for row in emb:
            row[32:] = torch.tensor([1.0] * 16 + [-1.0] * 16)[torch.randperm(32, generator=gen)]
        model.token_embedding.weight.copy_(emb)
        for block in model.blocks:
            block.attention.qkv.weight[: 2 * n_heads * d_head].zero_()  # W_q and W_k of every head
            block.attention.qkv.bias.zero_()
        qkv = model.blocks[layer].attention.qkv.weight
        beta = 3.0
        for i in range(ctx):
            qkv[head * d_head + i, i] = beta  # q_t = beta * code(t)
            if i >= 1:
                qkv[n_heads * d_head + head * d_head + i, i - 1] = beta  # k_s = beta * code(s + 1)
    return model.eval()


def test_score_heads_finds_a_planted_previous_token_head():
    model = planted_model(layer=0, head=1)
    scores = score_heads(model, CharTokenizer("abcdefghijklmnopqrst"))
    best = scores["previous_token"][0]
    assert (best["layer"], best["head"]) == (0, 1) and best["score"] > 0.9, scores["previous_token"][:3]
    assert scores["previous_token"][1]["score"] < 0.5  # the uniform heads
    assert best_heads(scores, 1)["previous_token"] == [best]
    # a char tokenizer cannot spell the adjectives language one token per word: skipped, with the reason
    assert scores["adjective_noun"] == [] and "one token per word" in scores["skipped"]["adjective_noun"]
    assert "adjective_noun" not in best_heads(scores, 3)


def test_first_token_and_induction_scores_are_weights():
    model = planted_model(layer=1, head=3)
    scores = score_heads(model, None)
    assert set(scores) == {*PATTERNS, "skipped"} and "adjective_noun" in scores["skipped"]
    for pattern in ("previous_token", "first_token", "induction"):
        entries = scores[pattern]
        assert sorted((e["layer"], e["head"]) for e in entries) == [(la, h) for la in range(2) for h in range(4)]
        assert all(0.0 <= e["score"] <= 1.0 for e in entries)
        assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    assert (scores["previous_token"][0]["layer"], scores["previous_token"][0]["head"]) == (1, 3)


def test_adjective_noun_scores_a_planted_attention():
    """Nouns that look only at their own adjectives score 1; a uniform head scores the share adjectives get."""
    vocab = A.VOCABULARY
    tok = WordTokenizer(vocab)
    sentences = A.generate(60, 5)

    class Fixed(HookedModel, torch.nn.Module):
        """Stands in for a model: one layer, two heads, patterns set by hand through its hook point."""

        context_length = 32

        def __init__(self):
            super().__init__()
            attn = torch.nn.Module()
            attn.hook_pattern = HookPoint()
            self.blocks = torch.nn.ModuleList([torch.nn.Module()])
            self.blocks[0].attention = attn
            self.token_embedding = torch.nn.Embedding(len(vocab), 4)
            self.name_hooks()

        def forward(self, ids, attention_mask=None):
            b, t = ids.shape
            causal = torch.ones(t, t).tril()
            uniform = causal / causal.sum(-1, keepdim=True)
            own = uniform.repeat(b, 1, 1)
            for r in range(b):
                words = [vocab[i] for i in ids[r].tolist()]
                for start in range(t):  # every noun looks at the adjectives right before it
                    if words[start] in A.NOUNS:
                        j = start - 1
                        adjs = []
                        while j >= 0 and words[j] in A.ADJECTIVES:
                            adjs.append(j)
                            j -= 1
                        if adjs:
                            own[r, start] = 0
                            own[r, start, adjs] = 1 / len(adjs)
            pattern = torch.stack([own, uniform.repeat(b, 1, 1)], dim=1)
            self.blocks[0].attention.hook_pattern(pattern)
            return torch.zeros(b, t, len(vocab))

    scores = score_heads(Fixed(), tok, probes=sentences)
    top, uniform = scores["adjective_noun"]
    assert (top["head"], top["score"]) == (0, pytest.approx(1.0))
    assert uniform["head"] == 1 and uniform["score"] < 0.3


# ------------------------------------------------------------------------------------------ the task


TINY = ["experiment=adjective_head", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
        "data.n_sentences=600", "data.batch_size=8", "trainer.max_steps=5", "trainer.val_check_interval=5",
        "data.val_batches=1", "train.warmup_steps=2", "callbacks.text_samples.max_new_tokens=5", "logger=csv",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_heads_task_on_a_tiny_adjectives_checkpoint(tmp_path):
    from conftest import run_cli

    env = {"HYDRAFORMER_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "HOME": str(tmp_path)}
    train_dir, heads_dir = tmp_path / "train", tmp_path / "heads"
    proc = run_cli(*TINY, f"hydra.run.dir={train_dir}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    proc = run_cli("task=heads", f"checkpoint={ckpt}", f"hydra.run.dir={heads_dir}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((heads_dir / "heads.json").read_text())
    assert list(report["patterns"]) == list(PATTERNS) and report["skipped"] == {}
    assert report["kv_heads"] == [[2, 2], [2, 2]] and "grouped-query" not in proc.stdout
    for pattern, entries in report["patterns"].items():
        assert sorted((e["layer"], e["head"]) for e in entries) == [(la, h) for la in range(2) for h in range(2)]
        assert all(0.0 <= e["score"] <= 1.0 for e in entries), pattern
        best = entries[0]
        name = f"best_{pattern}_L{best['layer']}_H{best['head']}.png"
        assert report["drawings"][pattern] == name and (heads_dir / name).stat().st_size > 0
        # the printed table's first row for this pattern is this best head, with its score
        # (multi-head attention: every head reads its own keys and values, "own" in the kv column)
        assert best["kv_head"] == best["head"] and best["kv_shared"] == 1
        assert re.search(rf"^{pattern} +1 +{best['layer']} +{best['head']} +own +{best['score']:.3f}$", proc.stdout, re.M)
    assert "heads.json" in proc.stdout
    # a pattern whose best head scores below FOUND is said to be missing, in the table, heads.json and the picture
    assert report["found_at"] == FOUND
    for pattern, entries in report["patterns"].items():
        said = f"no {pattern} head: the best, L{entries[0]['layer']} H{entries[0]['head']}, scores"
        assert report["found"][pattern] == (entries[0]["score"] >= FOUND) == (said not in proc.stdout), pattern

    proc = run_cli("task=heads", f"hydra.run.dir={tmp_path / 'none'}", env=env)
    assert proc.returncode == 2 and "checkpoint=None is not accepted" in proc.stderr
    assert not (tmp_path / "none").exists()


def test_random_probes_stay_in_the_vocabulary_and_leave_the_global_rng_alone():
    from builder.interp.heads import random_ids

    state = torch.get_rng_state()
    ids = random_ids(7, 3, 12, seed=1, distinct=True)
    assert ids.shape == (3, 12) and 0 <= int(ids.min()) and int(ids.max()) < 7
    ids = random_ids(50, 2, 12, seed=1, distinct=True)
    assert all(len(set(row.tolist())) == 12 for row in ids)
    assert torch.equal(state, torch.get_rng_state())
