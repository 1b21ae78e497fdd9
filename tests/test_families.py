"""The open decoder families as YAML over registered components: exact parameter counts, the new components
against references, and the fast path equal to the explicit (capture) path for every one of them."""

import json
import math
import re

import pytest
import torch
from conftest import jittered_model

import builder
from builder.generate import generate
from components import AttentionMask, KVCache, get
from components.positions import Positions

# totals as transformers counts the published configurations (tests below rebuild them with transformers)
FAMILY_TOTALS = {
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "llama3_70b": 70_553_706_496,
    "mistral_7b": 7_241_732_096,
    "qwen2_7b": 7_615_616_512,
    "qwen3_8b": 8_190_735_360,
    "pythia_160m": 162_322_944,
    "gemma_2b": 2_506_172_416,
    "gemma2_2b": 2_614_341_888,
    "tinyllama_1b": 1_100_048_384,
}


@pytest.mark.parametrize("preset", FAMILY_TOTALS)
def test_family_preset_counts_exactly(preset):
    b = builder.parameter_budget(builder.compose([f"model={preset}"]).model, preset)
    assert b["check"]["agree"] is True, b["check"]
    assert b["total_params"] == b["check"]["meta_total"] == b["check"]["formula_total"] == FAMILY_TOTALS[preset]


def _hf_configs():
    """The published configurations (config.json on the Hub), written out: nothing is downloaded."""
    tf = pytest.importorskip("transformers")
    llama2 = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
    llama3 = {**llama2, "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 128256}
    return {
        "llama2_7b": tf.LlamaConfig(**llama2),
        "llama3_8b": tf.LlamaConfig(**llama3),
        "llama3_70b": tf.LlamaConfig(**{**llama3, "hidden_size": 8192, "intermediate_size": 28672,
                                        "num_hidden_layers": 80, "num_attention_heads": 64}),
        "mistral_7b": tf.MistralConfig(**{**llama3, "vocab_size": 32000, "sliding_window": 4096}),
        "qwen2_7b": tf.Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                   num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                   tie_word_embeddings=False),
        "qwen3_8b": tf.Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                   tie_word_embeddings=False),
        "pythia_160m": tf.GPTNeoXConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, vocab_size=50304, rotary_pct=0.25,
                                        use_parallel_residual=True, tie_word_embeddings=False),
        "gemma_2b": tf.GemmaConfig(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                                   num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=256000),
        "gemma2_2b": tf.Gemma2Config(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000),
        "tinyllama_1b": tf.LlamaConfig(**{**llama2, "hidden_size": 2048, "intermediate_size": 5632,
                                          "num_hidden_layers": 22, "num_key_value_heads": 4}),
    }


def test_transformers_counts_the_same_totals():
    """The table's numbers are what transformers' own models of those configurations hold (built on meta)."""
    from transformers import AutoModelForCausalLM

    for preset, config in _hf_configs().items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == FAMILY_TOTALS[preset], preset


def test_report_of_every_family(tmp_path, cli):
    out = tmp_path / "run"
    proc = cli("task=report", f"models=[{','.join(FAMILY_TOTALS)}]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "MISMATCH" not in proc.stdout
    budget = json.loads((out / "budget.json").read_text())
    assert {b["model"]: b["total_params"] for b in budget["models"]} == FAMILY_TOTALS
    assert all(b["check"]["agree"] for b in budget["models"])
    shares = {r["model"]: r for r in budget["preset_attention_shares"]}
    # the lecture's question, one step further: GPT-3 a third, Llama 2 7B about a third, Llama 3 8B about a sixth
    assert 0.33 < shares["gpt3_175b"]["attention_share"] < 0.34
    assert 0.30 < shares["llama2_7b"]["attention_share"] < 1 / 3
    assert 1 / 7 < shares["llama3_8b"]["attention_share"] < 1 / 5
    assert shares["llama3_8b"]["n_kv_heads"] == 8 and shares["llama2_7b"]["n_kv_heads"] == 32
    assert "heads q/kv" in proc.stdout and re.search(r"llama3_8b +llama3 +4096 +32 +32/8 +8\.03 B +16\.7%", proc.stdout)


# --- components against references


def test_partial_rotary_turns_only_the_first_channels():
    rope = get("embedding", "rotary")(d_model=16, context_length=8, d_head=8, fraction=0.5)
    full = get("embedding", "rotary")(d_model=8, context_length=8, d_head=4)  # the same turn on 4 channels
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    pos = torch.arange(6)
    rq, rk = rope.rotate(q, k, pos, pos)
    fq, fk = full.rotate(q[..., :4], k[..., :4], pos, pos)
    torch.testing.assert_close(rq[..., :4], fq)
    torch.testing.assert_close(rk[..., :4], fk)
    assert torch.equal(rq[..., 4:], q[..., 4:]) and torch.equal(rk[..., 4:], k[..., 4:])
    with pytest.raises(ValueError, match="must be even"):
        get("embedding", "rotary")(d_model=16, context_length=8, d_head=8, fraction=0.375)


def test_llama3_frequency_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128, max_position_embeddings=131072,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    want, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    rope = get("embedding", "rotary")(d_model=256, context_length=131072, d_head=128, base=500000.0, scale_factor=8.0,
                                      low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192)
    torch.testing.assert_close(rope.inv_freq(), want.float(), rtol=1e-6, atol=0)
    assert attention_factor == 1.0
    plain = get("embedding", "rotary")(d_model=256, context_length=8192, d_head=128, base=500000.0).inv_freq()
    assert torch.equal(rope.inv_freq()[:20], plain[:20])  # short wavelengths untouched
    torch.testing.assert_close(rope.inv_freq()[-1], plain[-1] / 8)  # the longest stretched 8x


def test_unit_offset_rmsnorm_and_geglu():
    norm = get("norm", "rmsnorm")(d_model=6, eps=1e-6, unit_offset=True)
    assert torch.equal(norm.weight, torch.zeros(6))  # gain 1 + 0 at start
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 6).to(torch.bfloat16)
    xf = x.float()
    want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight)).to(torch.bfloat16)
    assert torch.equal(norm(x), want) and norm(x).dtype == torch.bfloat16
    mlp = get("mlp", "geglu")(d_model=6, hidden=10, bias=False)
    x = torch.randn(2, 6)
    gelu = torch.nn.functional.gelu(x @ mlp.gate.weight.T, approximate="tanh")
    torch.testing.assert_close(mlp(x), (gelu * (x @ mlp.up.weight.T)) @ mlp.proj.weight.T)


def test_alternating_mask_can_band_the_even_layers():
    pos = torch.arange(6)
    gpt3 = get("mask", "alternating")(window=2)
    gemma = get("mask", "alternating")(window=2, band_layers="even")
    band = get("mask", "sliding_window")(window=2).allowed(pos, pos, 0)
    causal = get("mask", "causal")().allowed(pos, pos, 0)
    assert torch.equal(gpt3.allowed(pos, pos, 0), causal) and torch.equal(gpt3.allowed(pos, pos, 1), band)
    assert torch.equal(gemma.allowed(pos, pos, 0), band) and torch.equal(gemma.allowed(pos, pos, 1), causal)
    assert [gemma.plain_causal(i) for i in range(4)] == [False, True, False, True]
    with pytest.raises(ValueError, match="band_layers"):
        get("mask", "alternating")(band_layers="first")


def test_attention_options_against_a_reference():
    """qkv_bias without an output bias, per-head q/k RMSNorm, a query scale and soft-capped scores, by hand."""
    attn = get("attention", "grouped_query")(d_model=12, n_heads=4, d_head=6, n_kv_heads=2, bias=False,
                                             qkv_bias=True, qk_norm=True, query_scale=0.3, softcap=2.0)
    assert attn.qkv.bias is not None and attn.o.bias is None
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0, 0.5)
    x = torch.randn(1, 5, 12)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split([24, 12, 12], -1)
    rms = lambda t, w: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # noqa: E731
    q = rms(q.view(1, 5, 4, 6), attn.q_norm.weight).transpose(1, 2)
    k = rms(k.view(1, 5, 2, 6), attn.k_norm.weight).transpose(1, 2).repeat_interleave(2, 1)
    v = v.view(1, 5, 2, 6).transpose(1, 2).repeat_interleave(2, 1)
    scores = 2.0 * torch.tanh((q @ k.transpose(-1, -2)) * 0.3 / 2.0)
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    want = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, 24) @ attn.o.weight.T
    got = attn(x, AttentionMask(None, is_causal=True), Positions(12, 5, 6), torch.arange(5))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- whole models: every new option, the fused path equal to the explicit one, causal, cached decoding

SMALL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.vocab_size=50", "model.context_length=16",
         "model/embedding=rotary", "model.bias=false"]
VARIANTS = {
    "llama": ["model/attention=grouped_query", "model.attention.n_kv_heads=2", "model/norm=rmsnorm",
              "model/mlp=swiglu", "model.tie_embeddings=false", "model.embedding.scale_factor=4.0",
              "model.embedding.original_context=8"],
    "qwen2": ["model/attention=grouped_query", "model.attention.n_kv_heads=2", "model.attention.qkv_bias=true",
              "model/norm=rmsnorm", "model/mlp=swiglu"],
    "qwen3": ["model/attention=grouped_query", "model.attention.n_kv_heads=1", "model.attention.qk_norm=true",
              "model/norm=rmsnorm", "model/mlp=swiglu", "model.d_head=12"],
    "pythia": ["model.bias=true", "model.embedding.fraction=0.5", "model.norm.layout=parallel",
               "model.mlp.approximate=none", "model.tie_embeddings=false"],
    "gemma2": ["model/attention=grouped_query", "model.attention.n_kv_heads=2", "model.attention.query_scale=0.2",
               "model.attention.softcap=3.0", "model/mask=alternating", "model.mask.window=3",
               "model.mask.band_layers=even", "model/mlp=geglu", "model/norm=rmsnorm", "model.norm.layout=sandwich",
               "model.norm.unit_offset=true", "model.scale_embeddings=true", "model.final_softcap=4.0"],
    "mistral": ["model/attention=grouped_query", "model.attention.n_kv_heads=2", "model/mask=sliding_window",
                "model.mask.window=4", "model/norm=rmsnorm", "model/mlp=swiglu"],
}


def family_model(name, seed=0):
    return jittered_model(SMALL + VARIANTS[name], seed)


@pytest.mark.parametrize("name", VARIANTS)
def test_family_fused_equals_explicit_cached_and_causal(name):
    model = family_model(name)
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        fused = model(ids)
        with builder.capture_attention(model) as rec:
            explicit = model(ids)
        torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-4)
        assert rec.n_layers == 3 and rec.pattern(0).shape == (2, 4, 12, 12)
        cache = KVCache()
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t: t + 1], cache=cache) for t in range(5, 12)]
        torch.testing.assert_close(torch.cat(steps, 1), fused, atol=1e-5, rtol=1e-4)
        changed = ids.clone()
        changed[:, 7:] = (changed[:, 7:] + 1) % 50
        torch.testing.assert_close(model(changed)[:, :7], fused[:, :7], atol=1e-5, rtol=1e-5)
    b = builder.parameter_budget(builder.compose(SMALL + VARIANTS[name]).model)
    assert b["check"]["agree"] and b["total_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["pythia", "gemma2"])
def test_family_compiled_generation_gives_the_eager_tokens(name):
    """The compiled decoding step on the families furthest from Llama: partial rotary and the parallel layout; soft-capping
    (the explicit attention path), the sandwich layout and alternating banded masks."""
    model = family_model(name)
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(generate(model, ids, 20, temperature=0.0, compile=True), generate(model, ids, 20, temperature=0.0))


def test_gemma2_pieces_do_what_they_say():
    model = family_model("gemma2")
    ids = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        logits = model(ids)
        assert logits.abs().max() <= 4.0  # soft-capped
        with builder.capture_attention(model) as rec:
            model(ids)
    assert rec.scores(0).abs().max() <= 3.0
    band, dense = rec.mask(0), rec.mask(1)
    assert band is not None and not band[0, 0, 9, 0]  # layer 0 is banded (window 3)
    assert dense is None or dense[0, 0, 9, 0]
    assert len(model.blocks[0].norms()) == 4
    assert model.embedding_scale == math.sqrt(32)
