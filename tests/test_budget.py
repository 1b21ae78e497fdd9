"""Parameter budget: meta-device counts = formulas = materialised counts; GPT-2/GPT-3 figures."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

import builder
from builder.budget import META_BLOCKS, measured_groups
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


def test_the_shares_table_names_each_presets_family():
    from builder.report import preset_family

    assert {name: preset_family(name) for name in ("gpt_oss_20b", "qwen3_30b_a3b", "gpt3_1b3", "mixtral_8x7b",
                                                   "gpt2_xl", "deepseek_v3", "tiny_moe", "tinyllama_1b")} == {
        "gpt_oss_20b": "gpt_oss", "qwen3_30b_a3b": "qwen3", "gpt3_1b3": "gpt3", "mixtral_8x7b": "mixtral",
        "gpt2_xl": "gpt2", "deepseek_v3": "deepseek_v3", "tiny_moe": "tiny_moe", "tinyllama_1b": "tinyllama"}


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


@pytest.mark.parametrize("models, want", [
    ("[gpt3_175b,gpt3_125m]", ["gpt3_175b", "gpt3_125m"]),
    ("[gpt3_175b,llama3_8b]", ["gpt3_175b", "llama3_8b"]),
    ("[tiny,llama3_8b,gpt2_small]", ["tiny", "llama3_8b", "gpt2_small"]),
    # a glob's matches in name order, the patterns in the order given, each model once
    ("[llama3_*,gpt2_*,gpt2_small]", ["llama3_70b", "llama3_8b", "gpt2_large", "gpt2_medium", "gpt2_small",
                                      "gpt2_xl"]),
])
def test_report_side_by_side_keeps_the_order_asked(tmp_path, models, want):
    out = tmp_path / "run"
    proc = run_cli("task=report", f"models={models}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("\n\nAttention share by preset")[0]
    assert [line.split()[0] for line in table.splitlines()[2:]] == want
    budget = json.loads((out / "budget.json").read_text())
    assert [b["model"] for b in budget["models"]] == want
    md = (out / "budget.md").read_text()
    assert [md.index(f"## Parameter budget: {name}\n") for name in want] == sorted(
        md.index(f"## Parameter budget: {name}\n") for name in want)


def test_report_of_a_glob(tmp_path, cli):
    proc = cli("task=report", "models=[gpt3_*]", f"hydra.run.dir={tmp_path / 'all'}")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "all" / "budget.json").read_text())["models"]) == 8


# --- huge values: the report answers (or refuses) in seconds, whatever the config says


def _tiny_total(d=128, layers=4, vocab=128, context=128, heads=4, d_head=32) -> int:
    """The tiny preset's count written out by hand (learned positions, tied, biases, GELU 4d, LayerNorm, pre-norm):
    token and position tables, per block attention (4 d·h·d_head weights, 3 h·d_head + d biases), the MLP (8d² + 5d)
    and two LayerNorms (4d), and the final LayerNorm (2d)."""
    q = heads * d_head
    block = 4 * d * q + 3 * q + d + 8 * d * d + 5 * d + 4 * d
    return vocab * d + context * d + layers * block + 2 * d


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides, want", [
    (["model.n_layers=1000000000"], _tiny_total(layers=10**9)),
    # Llama 3 8B: untied 128256 x 4096 tables; a block's q, o (4096²), k, v (4096 x 1024), SwiGLU (3 x 4096 x 14336)
    # and two RMSNorms; a final RMSNorm
    (["model=llama3_8b", "model.n_layers=1000000000"],
     2 * 128256 * 4096 + 10**9 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096),
    (["model.d_model=4611686018427387904"], _tiny_total(d=1 << 62, d_head=1 << 60)),
    (["model.vocab_size=4611686018427387904"], _tiny_total(vocab=1 << 62)),
    (["model.context_length=4611686018427387904"], _tiny_total(context=1 << 62)),
    (["model.n_heads=1099511627776", "model.d_head=1"], _tiny_total(heads=1 << 40, d_head=1)),
])
def test_report_of_huge_values_answers_from_the_formula(tmp_path, overrides, want):
    """A billion blocks, or a tensor beyond what torch can size: counted in seconds (the old report built a billion
    modules on the meta device for minutes, or ended in torch's storage-size traceback), by hand-written totals."""
    out = tmp_path / "run"
    proc = run_cli("task=report", *overrides, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    budget = json.loads((out / "budget.json").read_text())
    assert budget["total_params"] == want
    assert f"{want:,}" in proc.stdout and "Traceback" not in proc.stderr
    check = budget["check"]  # the meta-device count (scaled past META_BLOCKS) agrees, or the formula alone counts
    assert check["agree"] is True or (check["agree"] is None and "formula only" in check["note"])
    assert (out / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flops = re.findall(r"([\d.]+)(?:e\+\d+)? [KMGTPEZ]?FLOP", proc.stdout)
    assert flops and all(float(f) < 1000 for f in flops), "each figure in the unit that keeps it under 1,000"


def test_figures_take_the_prefix_that_keeps_them_short():
    from builder.report import human, human_bytes

    assert [human(x, "FLOP") for x in (950, 1.37626e15, 2e18, 3.5e23, 1e12, 2.04e39)] == [
        "950 FLOP", "1.38 PFLOP", "2.00 EFLOP", "350.00 ZFLOP", "1.00 TFLOP", "2.04e+39 FLOP"]
    assert [human(x) for x in (1.2e9, 1.98e14)] == ["1.20 B", "198.00 T"]  # counts: billions, trillions
    assert human_bytes(3 * 2**50) == "3.00 PiB" and human_bytes(512) == "512 B"


@pytest.mark.parametrize("overrides", [
    ["model=tiny"],
    ["model=llama3_8b", "model.d_model=64", "model.n_heads=4", "model.attention.n_kv_heads=2", "model.vocab_size=50"],
    ["model=gemma2_2b", "model.d_model=32", "model.n_heads=4", "model.d_head=8", "model.vocab_size=40",
     "model.mlp.hidden=48"],
    ["model/norm=rmsnorm", "model.norm.layout=sandwich", "model.tie_embeddings=false", "model.bias=false"],
])
def test_a_deep_model_is_counted_from_two_blocks_like_a_full_meta_build(overrides):
    """Past META_BLOCKS blocks the meta count scales a one- and a two-block build: the same groups and total as
    building every block on the meta device, and as the formula."""
    cfg = builder.compose([*overrides, f"model.n_layers={META_BLOCKS + 3}"])
    b = builder.parameter_budget(cfg.model)
    with torch.device("meta"):
        model = builder.build_model(cfg.model)
    assert b["groups"] == measured_groups(model)
    assert b["total_params"] == sum(p.numel() for p in model.parameters()) == b["check"]["formula_total"]
    assert b["check"]["agree"] is True and "scaled" in b["check"]["note"]
    assert b["per_head"]["all_layers_weights"] == b["groups"]["attention"]["weight"] - sum(
        v["weight"] for k, v in b["per_head"]["all_layers"].items() if k not in ("W_q", "W_k", "W_v", "W_o"))


@pytest.fixture
def formula_less_norm():
    """A norm registered without a ``formula`` (a third party's): only the meta device can count it."""
    from components import register
    from components.registry import _REGISTRY

    @register("norm", "gain_only_test", shared=("d_model",))
    class GainOnly(torch.nn.Module):
        def __init__(self, d_model: int):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(d_model))

        def forward(self, x):
            return x * self.gain

    yield "gain_only_test"
    _REGISTRY["norm"].pop("gain_only_test", None)


@pytest.mark.timeout(120)
def test_a_huge_model_without_a_formula_is_scaled_or_refused(formula_less_norm):
    cfg = builder.compose([f"model/norm={formula_less_norm}", "model.n_layers=1000000000"])
    b = builder.parameter_budget(cfg.model)
    assert b["check"]["agree"] is None and "scaled" in b["check"]["note"]
    assert b["total_params"] == _tiny_total(layers=10**9) - 10**9 * 2 * 128 - 128  # a gain, no bias, per norm
    cfg = builder.compose([f"model/norm={formula_less_norm}", "model.d_model=4611686018427387904"])
    with pytest.raises(builder.ConfigError, match=r"model='d_model=4611686018427387904, vocab_size=128' is not "
                                                  r"accepted: a model whose tensors torch can size"):
        builder.parameter_budget(cfg.model)
