"""Parameter budget: meta-device counts = formulas = materialised counts; GPT-2/GPT-3 figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import builder
from builder.budget import measured_groups
from builder.report import preset_names, preset_shares

PRESETS = preset_names()
MATERIALISABLE = ["tiny", "gpt2_small", "gpt3_125m"]


def test_presets_are_all_there():
    want = {"tiny", "gpt2_small", "gpt2_medium", "gpt2_large", "gpt2_xl", "gpt3_125m", "gpt3_350m", "gpt3_760m",
            "gpt3_1b3", "gpt3_2b7", "gpt3_6b7", "gpt3_13b", "gpt3_175b"}
    assert want <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_meta_count_equals_formula(preset):
    cfg = builder.compose([f"model={preset}"])
    b = builder.parameter_budget(cfg.model, preset)
    assert b["check"]["agree"] is True, b["check"]
    assert b["check"]["meta_total"] == b["check"]["formula_total"] == b["total_params"]
    assert sum(g["total"] for g in b["groups"].values()) == b["total_params"]
    if preset.startswith("gpt3"):
        assert cfg.model.vocab_size == 50257 and cfg.model.context_length == 2048


def test_preset_shares_table_agrees_with_each_budget():
    rows = {r["model"]: r for r in preset_shares()}
    assert set(rows) == set(PRESETS)
    for name in ("tiny", "gpt2_small", "gpt3_1b3", "gpt3_175b"):
        b = builder.parameter_budget(builder.compose([f"model={name}"]).model, name)
        assert rows[name]["total_params"] == b["total_params"]
        assert rows[name]["attention_share"] == pytest.approx(b["attention_share"])


def test_importing_and_counting_stay_light():
    """`import builder` and a meta-device count pull in none of the heavy libraries (start-up time)."""
    heavy = ["wandb", "matplotlib", "transformers", "pytorch_lightning", "torch._dynamo"]
    code = ("import sys, builder; builder.parameter_budget(builder.compose(['model=gpt2_small']).model); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("preset", MATERIALISABLE)
def test_materialised_count_equals_meta(preset):
    cfg = builder.compose([f"model={preset}"])
    model = builder.build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == builder.parameter_budget(cfg.model)["total_params"]


def test_gpt2_small_matches_transformers():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    hf_count = sum(p.numel() for p in hf.parameters())
    ours = builder.parameter_budget(builder.compose(["model=gpt2_small"]).model)["total_params"]
    assert ours == hf_count == 124_439_808


def test_gpt3_175b_attention_as_the_lecture_counts():
    b = builder.parameter_budget(builder.compose(["model=gpt3_175b"]).model, "gpt3_175b")
    ph = b["per_head"]
    assert ph["per_head"]["W_q"]["weight"] == 12288 * 128
    assert ph["per_head_weights"] == 4 * 12288 * 128 == 6_291_456
    assert ph["all_layers_weights"] == 96 * 96 * 6_291_456 == 57_982_058_496
    assert b["groups"]["attention"]["weight"] == 57_982_058_496
    assert 0.33 < b["attention_share"] < 0.335
    assert b["groups"]["unembedding"] == {"total": 0, "weight": 0, "bias": 0, "tied": True}
    assert 174e9 < b["total_params"] < 175.5e9
    for key in ("total_params", "groups", "attention_share", "per_head", "flops_per_token", "memory_bytes"):
        assert key in b
    f = b["flops_per_token"]
    assert f["training"] == 3 * f["forward"]
    assert f["forward"] == 2 * f["matmul_weights"] + 4 * 96 * 2048 * 96 * 128
    assert b["memory_bytes"]["fp32"]["total"] == 16 * b["total_params"]


def test_grouped_query_per_head_and_untied():
    cfg = builder.compose(["model=gpt2_small", "model/attention=grouped_query", "model.attention.n_kv_heads=3",
                           "model.tie_embeddings=false", "model.bias=false"])
    b = builder.parameter_budget(cfg.model)
    assert b["check"]["agree"]
    ph = b["per_head"]
    assert ph["n_kv_heads"] == 3 and ph["per_head"]["W_k"]["shared_by_heads"] == 4
    assert ph["per_layer"]["W_k"]["weight"] == 768 * 3 * 64
    assert b["groups"]["unembedding"]["weight"] == 50257 * 768
    assert all(g["bias"] == 0 for g in b["groups"].values())


COMPONENT_CHOICES = {
    "embedding": ["learned", "sinusoidal", "rotary", "none"],
    "attention": ["multi_head", "grouped_query"],
    "mask": ["causal", "none", "sliding_window", "alternating", "prefix"],
    "mlp": ["gelu", "relu", "swiglu", "geglu"],
    "norm": ["layernorm", "rmsnorm"],
}


@settings(max_examples=25, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in COMPONENT_CHOICES.items()}),
       st.integers(1, 3), st.sampled_from([1, 2, 4]), st.sampled_from([4, 8]), st.booleans(), st.booleans(),
       st.sampled_from(["pre", "post", "parallel", "sandwich"]), st.one_of(st.none(), st.sampled_from([6, 20])),
       st.sampled_from([None, True, False]), st.booleans())
def test_random_configs_count_like_the_formula(choice, layers, heads, d_head, bias, tie, layout, hidden, qkv_bias,
                                               qk_norm):
    overrides = [f"model/{k}={v}" for k, v in choice.items()] + [
        f"model.n_layers={layers}", f"model.n_heads={heads}", f"model.d_head={d_head}", "model.d_model=16",
        f"model.bias={str(bias).lower()}", f"model.tie_embeddings={str(tie).lower()}", f"model.norm.layout={layout}",
        "model.vocab_size=37", "model.context_length=12", f"model.mlp.hidden={'null' if hidden is None else hidden}",
        f"model.attention.qkv_bias={'null' if qkv_bias is None else str(qkv_bias).lower()}",
        f"model.attention.qk_norm={str(qk_norm).lower()}"]
    cfg = builder.compose(overrides)
    b = builder.parameter_budget(cfg.model)
    assert b["check"]["agree"], b["check"]
    model = builder.build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == b["total_params"]
    assert measured_groups(model) == b["groups"]
    ids = torch.randint(0, 37, (2, 12))
    logits = model(ids)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    if choice["mask"] in ("causal", "sliding_window", "alternating"):  # causal kinds stay causal
        changed = ids.clone()
        changed[:, 6:] = (changed[:, 6:] + 1) % 37
        with torch.no_grad():
            torch.testing.assert_close(model(changed)[:, :6], logits[:, :6].detach(), atol=1e-5, rtol=1e-5)


def test_mismatch_is_reported_loudly():
    from builder.budget import _check

    check = _check({"attention": {"total": 5, "weight": 5, "bias": 0}},
                   {"attention": {"total": 4, "weight": 4, "bias": 0}})
    assert check["agree"] is False and check["mismatches"][0]["group"] == "attention"
    from builder.report import check_line

    line = check_line({"check": {**check, "meta_total": 5, "formula_total": 4}})
    assert line.startswith("!!! PARAMETER COUNT MISMATCH")


def test_report_task_writes_files(tmp_path, cli):
    out = tmp_path / "run"
    proc = cli("task=report", "model=gpt3_175b", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "57,982,058,496" in proc.stdout and "Attention share of all parameters: 33.2%" in proc.stdout
    budget = json.loads((out / "budget.json").read_text())
    assert budget["total_params"] == 174_604_259_328 and budget["model"] == "gpt3_175b"
    assert "| attention |" in (out / "budget.md").read_text()
    assert (out / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["model"] for r in budget["preset_attention_shares"]} == set(PRESETS)


def test_report_side_by_side(tmp_path, cli):
    out = tmp_path / "run"
    proc = cli("task=report", "models=[gpt3_175b,gpt3_125m]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("gpt3_")]
    assert lines[0].startswith("gpt3_125m") and lines[1].startswith("gpt3_175b")
    budget = json.loads((out / "budget.json").read_text())
    assert [b["model"] for b in budget["models"]] == ["gpt3_125m", "gpt3_175b"]
    proc = cli("task=report", "models=[gpt3_*]", f"hydra.run.dir={tmp_path / 'all'}")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "all" / "budget.json").read_text())["models"]) == 8
