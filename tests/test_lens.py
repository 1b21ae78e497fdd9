"""The final vector: the logit lens agrees with the model, and the direct attribution adds up to the logit."""

import pytest
import torch
from conftest import jittered_model

import builder
from builder.errors import ConfigError
from builder.interp.lens import direct_attribution, logit_lens

SMALL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.vocab_size=40", "model.context_length=16"]
VARIANTS = {
    "gpt2": [],
    "llama": ["model=llama2_7b", "model.attention.n_kv_heads=2", "model.mlp.hidden=48"],
    "pythia": ["model=pythia_160m", "model.mlp.hidden=48"],
    "gemma": ["model/mlp=geglu", "model/norm=rmsnorm", "model.norm.unit_offset=true", "model.scale_embeddings=true",
              "model.final_softcap=5.0", "model.bias=false"],
}


def model_of(name):
    return jittered_model(VARIANTS[name] + SMALL)


@pytest.mark.parametrize("name", VARIANTS)
def test_attribution_adds_up_to_the_logit_and_the_lens_ends_at_the_prediction(name):
    model = model_of(name)
    ids = torch.randint(0, 40, (1, 11))
    with torch.no_grad():
        logits = model(ids)[0]
    for position in (0, 5, -1):
        out = direct_attribution(model, ids, position=position)
        assert out["total"] == pytest.approx(out["logit"], abs=1e-4, rel=1e-4)
        n_heads = 3 * 4
        assert sum(k.startswith("L") and "H" in k for k in out["parts"]) == n_heads
        assert {"embeddings", "L0 MLP", "L2 MLP"} <= set(out["parts"])
        if name != "gemma":  # the soft-cap is undone: the parts add up to the logit before it
            assert out["logit"] == pytest.approx(float(logits[position, out["token"]]), abs=1e-4)
        assert out["token"] == int(logits[position].argmax())
    lens = logit_lens(model, ids, top_k=3)
    assert len(lens["top_ids"]) == 4 and lens["labels"][-1] == "after layer 2"
    assert [row[0] for row in lens["top_ids"][-1]] == lens["prediction"] == logits.argmax(-1).tolist()
    assert all(row == sorted(row, reverse=True) and sum(row) <= 1 + 1e-6 for row in lens["top_probs"][0])


def test_attribution_of_a_chosen_token_and_refused_layouts():
    model = model_of("gpt2")
    ids = torch.randint(0, 40, (1, 6))
    out = direct_attribution(model, ids, token=7)
    assert out["token"] == 7 and out["total"] == pytest.approx(out["logit"], abs=1e-4)
    assert "final norm bias" in out["parts"]  # LayerNorm's shift is a part of its own
    torch.manual_seed(0)
    post = builder.build_model(builder.compose(SMALL + ["model.norm.layout=post"]).model)
    with pytest.raises(ConfigError, match="model.norm.layout='post'.*pre, parallel"):
        direct_attribution(post, ids)


def test_lens_task_on_an_export(tmp_path, cli):
    """task=lens through run.py: lens.png, attribution.png and lens.json, whose numbers agree with the model."""
    import json

    from builder.checkpoint import save_export
    from builder.config.plain import to_plain
    from builder.data.tokenizers import CharTokenizer

    text = "the cat sat on the mat"
    tok = CharTokenizer.from_text(text)
    cfg = builder.compose(SMALL + [f"model.vocab_size={tok.vocab_size}"]).model
    torch.manual_seed(0)
    export = save_export(builder.build_model(cfg), tok, to_plain(cfg), tmp_path / "export")
    proc = cli("task=lens", f"checkpoint={export}", "text=the cat sat", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "lens.json").read_text())
    assert out["tokens"] == list("the cat sat")
    assert out["lens"]["guesses"][-1] == [tok.decode([i]) for i in out["lens"]["prediction"]]
    assert out["attribution"]["total"] == pytest.approx(out["attribution"]["logit"], abs=1e-4)
    assert "equals the model's prediction at 11 of 11 positions" in proc.stdout
    for name in ("lens.png", "attribution.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
