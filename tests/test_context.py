"""Meaning refined by context: one word's vector through the layers in several contexts, and who moved it."""

import json

import pytest
import torch

import builder
from builder.checkpoint import save_export
from builder.config.plain import to_plain
from builder.data.tokenizers import WordTokenizer
from builder.errors import ConfigError
from builder.interp.capture import record
from builder.interp.context import context_views

CONTEXTS = ["the mole dug a tunnel under the lawn", "one mole of carbon weighs twelve grams",
            "a mole on the skin is checked"]


def word_model():
    tok = WordTokenizer.from_text(" ".join(CONTEXTS))
    cfg = builder.compose(["model=llama2_7b", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
                           "model.attention.n_kv_heads=2", "model.mlp.hidden=48", "model.context_length=16",
                           f"model.vocab_size={tok.vocab_size}"]).model
    torch.manual_seed(0)
    return builder.build_model(cfg).eval(), tok, cfg


def test_the_word_is_followed_layer_by_layer():
    model, tok, _ = word_model()
    views = context_views(model, tok, "mole", CONTEXTS, top_heads=3)
    sims = torch.tensor(views["similarity"])
    assert sims.shape == (3, 3, 3) and views["labels"] == ["embedding", "after layer 0", "after layer 1"]
    torch.testing.assert_close(sims, sims.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(sims, dim1=1, dim2=2), torch.ones(3, 3))
    # rotary positions add nothing to the embedding: the same token is the same vector in every context
    assert views["mean_similarity"][0] == pytest.approx(1.0, abs=1e-5)
    assert views["mean_similarity"][-1] < 0.999  # the contexts have moved it apart
    assert views["nearest"][0][0][0][0] == "mole"  # at the embedding, the nearest token is the word itself
    # the update sizes are the norms of each head's result at the word's position, averaged over the contexts
    mole = tok.encode("mole")[0]
    norms = []
    for text in CONTEXTS:
        ids = tok.encode(text)
        norms.append(float(record(model, torch.tensor([ids]), fields=("result",)).result(1)[0, 2, ids.index(mole)].norm()))
    assert views["update_sizes"][1][2] == pytest.approx(sum(norms) / 3, rel=1e-4)
    sizes = [h["update_size"] for h in views["top_heads"]]
    assert sizes == sorted(sizes, reverse=True) and len(views["top_heads"][0]["looked_at"]) == 3


def test_missing_word_and_too_few_contexts_are_refused():
    model, tok, _ = word_model()
    with pytest.raises(ConfigError, match="contexts='the lawn' is not accepted: a text that contains the word 'mole'"):
        context_views(model, tok, "mole", [CONTEXTS[0], "the lawn"])
    with pytest.raises(ConfigError, match="two or more texts"):
        context_views(model, tok, "mole", CONTEXTS[:1])


def test_context_task(tmp_path, cli):
    model, tok, cfg = word_model()
    export = save_export(model, tok, to_plain(cfg), tmp_path / "export")
    contexts = "[" + ",".join(f"'{c}'" for c in CONTEXTS) + "]"
    proc = cli("task=context", f"checkpoint={export}", "word=mole", f"contexts={contexts}",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    views = json.loads((tmp_path / "run" / "context.json").read_text())
    assert views["word"] == "mole" and len(views["similarity"]) == 3
    assert "largest first" in proc.stdout and "  1. L" in proc.stdout and "embedding +1.00" in proc.stdout
    assert (tmp_path / "run" / "context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
