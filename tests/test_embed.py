"""Directions in embedding space: nearest tokens, a direction from word pairs, a 2-D map, word classes measured."""

import json

import pytest
import torch
import torch.nn.functional as F

import builder
from builder.checkpoint import save_export
from builder.config.plain import to_plain
from builder.data.tokenizers import CharTokenizer, WordTokenizer
from builder.errors import ConfigError
from builder.interp.embed import embedding_map, nearest_tokens, pair_direction, same_group_fraction, token_id

NOUNS = ["cat", "dog", "fox", "otter"]
ADJECTIVES = ["fluffy", "blue", "small", "loud"]
PAIRS = [("man", "woman"), ("king", "queen"), ("uncle", "aunt")]
WORDS = NOUNS + ADJECTIVES + [w for p in PAIRS for w in p]


def crafted():
    """A word-level model whose embedding has known geometry: two clusters (nouns, adjectives) and pairs that
    differ by one shared vector plus a little noise."""
    tok = WordTokenizer.from_text(" ".join(WORDS))
    cfg = builder.compose(["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.context_length=8",
                           f"model.vocab_size={tok.vocab_size}"]).model
    torch.manual_seed(0)
    model = builder.build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    centre = {"n": torch.randn(16, generator=g) * 3, "a": torch.randn(16, generator=g) * 3}
    gender = torch.randn(16, generator=g)
    with torch.no_grad():
        w = model.token_embedding.weight
        for x in NOUNS:
            w[tok.encode(x)[0]] = centre["n"] + 0.3 * torch.randn(16, generator=g)
        for x in ADJECTIVES:
            w[tok.encode(x)[0]] = centre["a"] + 0.3 * torch.randn(16, generator=g)
        for a, b in PAIRS:
            base = torch.randn(16, generator=g)
            w[tok.encode(a)[0]] = base
            w[tok.encode(b)[0]] = base + gender + 0.05 * torch.randn(16, generator=g)
    return model, tok, cfg, gender


def test_nearest_direction_map_and_word_classes():
    model, tok, _, gender = crafted()
    near = nearest_tokens(model, tok, "cat", k=3)
    w = model.token_embedding.weight.detach()
    i = tok.encode("cat")[0]
    want = sorted(((F.cosine_similarity(w[j], w[i], dim=0).item(), j) for j in range(tok.vocab_size) if j != i),
                  reverse=True)[:3]
    assert [j for j, _ in near] == [j for _, j in want]
    assert {tok.decode([j]) for j, _ in near} <= set(NOUNS)  # a noun's neighbours are nouns
    assert near[0][1] >= near[1][1] >= near[2][1]
    d = pair_direction(model, tok, PAIRS, ["cat"])
    assert F.cosine_similarity(d["direction"], gender, dim=0) > 0.99
    assert all(v > 0.99 for v in d["alignment"].values())
    assert all(d["projections"][b] > d["projections"][a] for a, b in PAIRS)
    m = embedding_map(model, tok, {"nouns": NOUNS, "adjectives": ADJECTIVES})
    assert len(m["xy"]) == 8 and m["groups"][:4] == ["nouns"] * 4 and 0.5 < m["explained"][0] <= 1.0
    xs = [x for x, _ in m["xy"]]
    assert max(xs[:4]) < min(xs[4:]) or min(xs[:4]) > max(xs[4:])  # the first component separates the classes
    assert same_group_fraction(model, tok, {"nouns": NOUNS, "adjectives": ADJECTIVES}, k=3) == {"nouns": 1.0,
                                                                                               "adjectives": 1.0}
    # perfectly apart reads 100% whatever the group's size: 3-word groups ask each word for its 2 nearest, not k=5
    three = {"nouns": NOUNS[:3], "adjectives": ADJECTIVES[:3]}
    assert same_group_fraction(model, tok, three, k=5) == {"nouns": 1.0, "adjectives": 1.0}
    mixed = {"nouns": NOUNS[:2] + ADJECTIVES[:1], "adjectives": ADJECTIVES[1:3] + NOUNS[2:3]}  # one stray word each
    assert same_group_fraction(model, tok, mixed, k=5) == {"nouns": 1 / 3, "adjectives": 1 / 3}
    unembedded = nearest_tokens(model, tok, "cat", k=3, space="unembedding")  # tied: the same matrix
    assert unembedded == near


def test_words_must_be_one_token():
    tok = CharTokenizer.from_text("the cat sat")
    with pytest.raises(ConfigError, match=r"words='cat'.*one token of the model's tokenizer; it is 3 tokens"):
        token_id(tok, "cat")
    model, wtok, _, _ = crafted()
    with pytest.raises(ConfigError, match="pairs"):
        pair_direction(model, wtok, [("man",)])


def test_embed_task_writes_the_pictures(tmp_path, cli):
    model, tok, cfg, _ = crafted()
    export = save_export(model, tok, to_plain(cfg), tmp_path / "export")
    proc = cli("task=embed", f"checkpoint={export}", "words=[cat,fluffy]", "pairs=[[man,woman],[king,queen]]",
               "groups={nouns:[cat,dog,fox,otter],adjectives:[fluffy,blue,small,loud]}", "neighbours=3",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "embed.json").read_text())
    assert [t for t, _ in report["nearest"]["cat"]][:3] and report["same_group_fraction"] == {"nouns": 1.0,
                                                                                           "adjectives": 1.0}
    assert "nearest tokens in the same group: nouns 100%, adjectives 100%" in proc.stdout
    for name in ("nearest.png", "direction.png", "map.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nothing = cli("task=embed", f"checkpoint={export}", f"hydra.run.dir={tmp_path / 'none'}")
    assert nothing.returncode == 2 and "words" in nothing.stderr and "pairs" in nothing.stderr
    bad = cli("task=embed", f"checkpoint={export}", "groups={nouns:cat}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "groups=" in bad.stderr and "name -> words" in bad.stderr
