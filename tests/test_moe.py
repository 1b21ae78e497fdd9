"""Mixture of experts, latent attention, attention sinks and YaRN: each against transformers' own modules (logits
on random weights, parameter counts on the meta device), against a dense reference, and under a KV cache."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from builder.budget import parameter_budget
from builder.checkpoint import load_model
from builder.config.compose import preset_configs
from builder.errors import ConfigError
from builder.hf import canonical, hf_config_for, save_hf
from builder.interp.capture import capture_attention
from builder.model import build_model
from components import KVCache, StaticKVCache
from components.moe import MixtureOfExperts, router_losses
from components.positions import RotaryPositions

transformers = pytest.importorskip("transformers")

FAMILIES = ("mixtral_8x7b", "qwen3_30b_a3b", "deepseek_v3", "gpt_oss_20b")

# the published configurations (each model's config.json on the Hub), as transformers' config objects
PUBLISHED = {
    "mixtral_8x7b": lambda: transformers.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
        rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "qwen3_30b_a3b": lambda: transformers.Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        norm_topk_prob=True, max_position_embeddings=40960, rope_theta=1e6, tie_word_embeddings=False),
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
        num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
        qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3,
        norm_topk_prob=True, max_position_embeddings=163840, tie_word_embeddings=False),
    "gpt_oss_20b": lambda: transformers.GptOssConfig(
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
        max_position_embeddings=131072, tie_word_embeddings=False),
}

# the table: total parameters, and those one token uses with the embedding table counted
TABLE = {
    "mixtral_8x7b": (46_702_792_704, 12_879_925_248),
    "qwen3_30b_a3b": (30_532_122_624, 3_353_032_704),
    "deepseek_v3": (671_026_404_352, 37_552_282_624),
    "gpt_oss_20b": (20_914_757_184, 4_187_440_704),
}


def _hf_meta(config):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_preset_counts_equal_transformers_meta_models(family):
    """Each preset's total equals transformers' count of the published configuration on the meta device, and its
    active count equals that total less the routed experts a token does not use (read off the HF model's own expert
    tensors), both equal to the issue's table."""
    hf = _hf_meta(PUBLISHED[family]())
    config = hf.config
    hf_total = sum(p.numel() for p in hf.parameters())
    experts = sum(p.numel() for n, p in hf.named_parameters() if ".mlp.experts." in n)
    n_experts = getattr(config, "num_local_experts", None) or getattr(config, "n_routed_experts", None) \
        or config.num_experts
    hf_active = hf_total - experts // n_experts * (n_experts - config.num_experts_per_tok)
    budget = parameter_budget(preset_configs([family])[family], family)
    active = budget["active_params"]
    assert (budget["total_params"], active["total"]) == (hf_total, hf_active) == TABLE[family]
    assert budget["check"]["agree"] is True  # the closed-form formulas equal the meta-device count
    hf_attention = sum(p.numel() for n, p in hf.named_parameters() if ".self_attn." in n)
    assert budget["groups"]["attention"]["total"] == hf_attention
    assert active["without_embedding"] == hf_active - config.vocab_size * config.hidden_size
    if family == "gpt_oss_20b":  # OpenAI's "3.6B active" leaves the embedding table out
        assert active["without_embedding"] == 3_608_307_264


def test_latent_attention_caches_less_than_grouped_queries():
    presets = preset_configs(["deepseek_v3", "llama3_70b"])
    mla = parameter_budget(presets["deepseek_v3"])["kv_cache"]
    gqa = parameter_budget(presets["llama3_70b"])["kv_cache"]
    assert mla["elements_per_layer"] == 512 + 64 and gqa["elements_per_layer"] == 2 * 8 * 128
    assert mla["bytes_per_token"] == 61 * 576 * 2 and gqa["bytes_per_token"] == 80 * 2048 * 2


# ------------------------------------------------------------------------------- logits against transformers

def _yarn(factor, original, **extra):
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original, "beta_fast": 32.0,
            "beta_slow": 1.0, **extra}


# (ours: overrides of the preset, theirs: a config) at a small size; the second of each changes the routing
SMALL = {
    "mixtral_8x7b": [
        (dict(d_model=64, n_layers=2, n_heads=4, vocab_size=97, context_length=64, attention={"n_kv_heads": 2},
              mlp={"hidden": 48, "n_experts": 4}),
         dict(vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
              rope_theta=1e6, tie_word_embeddings=False)),
        (dict(d_model=48, n_layers=3, n_heads=6, vocab_size=61, context_length=64, attention={"n_kv_heads": 3},
              mlp={"hidden": 20, "n_experts": 6, "top_k": 3}),
         dict(vocab_size=61, hidden_size=48, intermediate_size=20, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=3, num_local_experts=6, num_experts_per_tok=3, max_position_embeddings=64,
              rope_theta=1e6, tie_word_embeddings=False)),
    ],
    "qwen3_30b_a3b": [
        (dict(d_model=64, n_layers=2, n_heads=4, d_head=16, vocab_size=97, context_length=64,
              attention={"n_kv_heads": 2}, mlp={"hidden": 32, "n_experts": 8, "top_k": 3}),
         dict(vocab_size=97, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True,
              rope_theta=1e6, max_position_embeddings=64, tie_word_embeddings=False)),
        (dict(d_model=32, n_layers=2, n_heads=2, d_head=24, vocab_size=50, context_length=64,
              attention={"n_kv_heads": 1}, mlp={"hidden": 24, "n_experts": 5, "top_k": 2, "normalize": False}),
         dict(vocab_size=50, hidden_size=32, moe_intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=24, num_experts=5, num_experts_per_tok=2, norm_topk_prob=False,
              rope_theta=1e6, max_position_embeddings=64, tie_word_embeddings=False)),
    ],
    "deepseek_v3": [
        (dict(d_model=64, n_layers=3, n_heads=4, d_head=8, vocab_size=97, context_length=64,
              attention={"q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 12, "qk_rope_head_dim": 8,
                         "v_head_dim": 10, "query_scale": 20 ** -0.5 * (0.1 * math.log(4.0) + 1) ** 2},
              mlp={"hidden": 16, "n_experts": 8, "top_k": 2, "n_groups": 4, "top_groups": 2, "first_dense": 1,
                   "dense_hidden": 40},
              embedding={"scale_factor": 4.0, "original_context": 16}),
         dict(vocab_size=97, hidden_size=64, intermediate_size=40, moe_intermediate_size=16, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
              num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=24,
              kv_lora_rank=16, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10, routed_scaling_factor=2.5,
              norm_topk_prob=True, max_position_embeddings=64, tie_word_embeddings=False,
              rope_parameters=_yarn(4.0, 16, rope_theta=10000.0, mscale=1.0, mscale_all_dim=1.0))),
        (dict(d_model=48, n_layers=2, n_heads=3, d_head=4, vocab_size=61, context_length=64,
              attention={"q_lora_rank": None, "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
                         "v_head_dim": 6, "query_scale": None},
              mlp={"hidden": 12, "n_experts": 6, "top_k": 3, "n_groups": 1, "top_groups": 1, "first_dense": 0,
                   "shared_experts": 2, "routed_scale": 1.0},
              embedding={"scaling": "llama3", "scale_factor": None}),
         dict(vocab_size=61, hidden_size=48, intermediate_size=40, moe_intermediate_size=12, num_hidden_layers=2,
              num_attention_heads=3, num_key_value_heads=3, n_shared_experts=2, n_routed_experts=6,
              num_experts_per_tok=3, n_group=1, topk_group=1, first_k_dense_replace=0, q_lora_rank=None,
              kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, routed_scaling_factor=1.0,
              norm_topk_prob=True, max_position_embeddings=64, tie_word_embeddings=False,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    ],
    "gpt_oss_20b": [
        (dict(d_model=64, n_layers=2, n_heads=4, d_head=16, vocab_size=97, context_length=64,
              attention={"n_kv_heads": 2}, mlp={"hidden": 32, "n_experts": 4, "top_k": 2}, mask={"window": 4},
              embedding={"original_context": 16, "scale_factor": 4.0}),
         dict(vocab_size=97, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
              max_position_embeddings=64, tie_word_embeddings=False,
              rope_parameters=_yarn(4.0, 16, rope_theta=150000.0, truncate=False))),
        (dict(d_model=32, n_layers=3, n_heads=2, d_head=8, vocab_size=50, context_length=64,
              attention={"n_kv_heads": 1}, mlp={"hidden": 16, "n_experts": 5, "top_k": 3}, mask={"window": 3},
              embedding={"original_context": 8, "scale_factor": 8.0}),
         dict(vocab_size=50, hidden_size=32, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=1, head_dim=8, num_local_experts=5, num_experts_per_tok=3, sliding_window=3,
              max_position_embeddings=64, tie_word_embeddings=False,
              rope_parameters=_yarn(8.0, 8, rope_theta=150000.0, truncate=False))),
    ],
}
HF_CONFIGS = {"mixtral_8x7b": "MixtralConfig", "qwen3_30b_a3b": "Qwen3MoeConfig", "deepseek_v3": "DeepseekV3Config",
              "gpt_oss_20b": "GptOssConfig"}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer of a float dtype drawn at random (norm gains near 1), so no rule hides in a zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point() or "inv_freq" in name:
                continue
            noise = torch.randn(t.shape, generator=g) * (0.05 if "norm" in name else 0.2)
            t.copy_(1 + noise if "norm" in name or "layernorm" in name else noise)


def _pair(family: str, which: int, tmp_path):
    """transformers' model with random weights, saved by transformers in shards, and ours: that folder read by
    load_model (builder/hf.py's adapter for the family). The config it reads is the preset's, changed as SMALL says."""
    ours_over, theirs = SMALL[family][which]
    hf = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, HF_CONFIGS[family])(**theirs), attn_implementation="eager").eval()
    _randomise(hf, seed=which)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 2  # sharded, read through the index
    model, _, cfg = load_model(tmp_path / "hf")
    assert canonical(cfg) == canonical(OmegaConf.merge(preset_configs([family])[family], ours_over))
    return model, hf, cfg


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(family, which, tmp_path):
    """Random weights, fp32, both ways: a transformers-saved (sharded) folder read by load_model gives transformers'
    logits to 1e-4 (routing, latent attention, sinks, YaRN, the clamped gate and the alternating band included), with
    and without the explicit path a capture takes, and the KV-cached decoding (growing and static caches) equals the
    full forward; exported with task=export format=hf's writer, AutoModelForCausalLM reads the same model back."""
    torch.manual_seed(which)
    model, hf, cfg = _pair(family, which, tmp_path)
    ids = torch.randint(0, model.token_embedding.num_embeddings, (2, 11))
    with torch.no_grad():
        theirs = hf(ids).logits
        ours = model(ids)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        with capture_attention(model) as rec:  # the explicit path: every head's tensors recorded
            torch.testing.assert_close(model(ids), ours, atol=1e-5, rtol=0)
        assert sorted(rec.layers) == list(range(len(model.blocks)))
        for cache in (KVCache(), StaticKVCache(16)):
            steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(4, 11)]
            torch.testing.assert_close(torch.cat(steps, dim=1), ours, atol=1e-4, rtol=0)
        out = save_hf(model, None, cfg, tmp_path / "export")
        assert json.loads((out / "config.json").read_text())["model_type"] == hf.config.model_type
        again = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
        torch.testing.assert_close(again(ids).logits, theirs, atol=1e-4, rtol=0)
        assert canonical(load_model(out)[2]) == canonical(cfg)


def _saved(family: str, which: int, path):
    """transformers' model of SMALL[family][which] with random weights, saved by transformers at ``path``."""
    hf = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, HF_CONFIGS[family])(**SMALL[family][which][1]), attn_implementation="eager").eval()
    _randomise(hf, seed=which)
    hf.save_pretrained(path)
    return hf


def test_export_task_writes_shards_transformers_reads(tmp_path, cli):
    """task=export format=hf shard_size=...: a DeepSeek-V3 folder (latent attention, a dense first layer, shared and
    group-routed experts, YaRN) in transformers' sharded layout, read back by AutoModelForCausalLM, same logits."""
    hf = _saved("deepseek_v3", 0, tmp_path / "hf")
    proc = cli("task=export", f"checkpoint={tmp_path / 'hf'}", "format=hf", "shard_size=30000",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run" / "export"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists() and "model.safetensors.index.json" in proc.stdout
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    again = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_deepseek_multi_token_prediction_layers_are_left_out(tmp_path):
    """DeepSeek-V3's files hold the multi-token-prediction module as layer n_layers (model.layers.61 in the
    published one): read without it, as transformers does."""
    hf = _saved("deepseek_v3", 1, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_nextn_predict_layers": 1}))
    n = cfg["num_hidden_layers"]
    save_file({f"model.layers.{n}.eh_proj.weight": torch.zeros(48, 96),
               f"model.layers.{n}.enorm.weight": torch.ones(48)}, str(tmp_path / "mtp.safetensors"))
    os.replace(tmp_path / "model.safetensors", tmp_path / "main.safetensors")
    names = {**dict.fromkeys(hf.state_dict(), "main.safetensors"),
             f"model.layers.{n}.eh_proj.weight": "mtp.safetensors", f"model.layers.{n}.enorm.weight": "mtp.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": names}))
    model, _, _ = load_model(tmp_path)
    ids = torch.randint(0, 61, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family,change,named", [
    ("deepseek_v3", {"quantization_config": {"quant_method": "fp8"}}, "quantization_config='fp8'"),
    ("gpt_oss_20b", {"quantization_config": {"quant_method": "mxfp4"}}, "quantization_config='mxfp4'"),
    ("deepseek_v3", {"rope_interleave": False}, "rope_interleave=False"),
    ("deepseek_v3", {"scoring_func": "softmax"}, "scoring_func='softmax'"),
    ("qwen3_30b_a3b", {"mlp_only_layers": [1]}, "mlp_only_layers=[1]"),
    ("qwen3_30b_a3b", {"decoder_sparse_step": 2}, "decoder_sparse_step=2"),
    ("mixtral_8x7b", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6,
                                          "original_max_position_embeddings": 32}}, "rope_type='yarn'"),
])
def test_what_a_family_has_and_ours_lacks_is_refused_by_name(tmp_path, family, change, named):
    _saved(family, 0, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path)
    assert named in str(err.value) and cfg["model_type"] in str(err.value)


def test_a_mixture_no_family_has_is_refused_by_name():
    """tiny_moe has learned positions and LayerNorm: no family has them with experts; each family's lack is named."""
    with pytest.raises(ConfigError) as err:
        hf_config_for(preset_configs(["tiny_moe"])["tiny_moe"])
    assert "mixtral: model.embedding.name='learned'" in str(err.value)
    cfg = OmegaConf.merge(preset_configs(["mixtral_8x7b"])["mixtral_8x7b"], {"mlp": {"scoring": "sigmoid"}})
    with pytest.raises(ConfigError) as err:
        hf_config_for(cfg)
    assert "mixtral: model.mlp.scoring='sigmoid' (a mixtral has 'softmax')" in str(err.value)


# ------------------------------------------------------------------------------------- the experts themselves

def _dense_reference(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the router's weights (zero for the experts not chosen)."""
    _, experts, weights = moe.route(x)
    dense = torch.zeros(len(x), moe.n_experts).scatter(1, experts, weights)
    out = sum(moe.expert(e, x) * dense[:, e:e + 1] for e in range(moe.n_experts))
    return out + (moe.shared(x) if moe.shared is not None else 0)


@pytest.mark.parametrize("options", [
    {},
    {"scoring": "sigmoid", "selection_bias": True, "n_groups": 4, "top_groups": 2, "shared_experts": 1,
     "routed_scale": 2.5},
    {"activation": "clamped", "expert_bias": True, "router_bias": True, "normalize": False, "top_k": 3},
])
def test_sparse_dispatch_equals_dense_experts(options):
    torch.manual_seed(0)
    moe = MixtureOfExperts(16, n_experts=8, top_k=options.pop("top_k", 2), hidden=12, **options)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
        if moe.selection_bias is not None:
            moe.selection_bias.normal_(0, 0.5)
    x = torch.randn(37, 16)
    torch.testing.assert_close(moe(x[None])[0], _dense_reference(moe, x), atol=1e-5, rtol=0)


def test_group_limited_routing_chooses_from_the_best_groups_only():
    torch.manual_seed(1)
    moe = MixtureOfExperts(8, n_experts=8, top_k=2, hidden=4, scoring="sigmoid", n_groups=4, top_groups=1)
    x = torch.randn(50, 8)
    _, experts, _ = moe.route(x)
    assert (experts[:, 0] // 2 == experts[:, 1] // 2).all()  # one group of two: both experts from it


def test_router_losses_are_kept_while_training_and_weighted():
    torch.manual_seed(0)
    moe = MixtureOfExperts(8, n_experts=4, top_k=1, hidden=4, aux_loss=0.5, z_loss=0.25)
    x = torch.randn(2, 6, 8)
    moe.eval()(x)
    assert router_losses(moe) == {}  # nothing is kept out of training
    moe.train()(x)
    logits = moe.router(x.reshape(-1, 8))
    counts = torch.bincount(logits.argmax(-1), minlength=4)
    balance = 4 * (counts / counts.sum() * logits.softmax(-1).mean(0)).sum()
    z = logits.logsumexp(-1).square().mean()
    losses = router_losses(moe)
    torch.testing.assert_close(losses["load_balance"], balance)
    torch.testing.assert_close(losses["weighted"], 0.5 * balance + 0.25 * z)
    assert router_losses(moe) == {}  # read once


def test_yarn_frequencies_equal_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for truncate in (True, False):
        config = transformers.GptOssConfig(head_dim=64, rope_parameters=_yarn(32.0, 4096, rope_theta=150000.0,
                                                                               truncate=truncate))
        theirs, factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
        ours = RotaryPositions(2880, 131072, 64, base=150000.0, scale_factor=32.0, original_context=4096,
                               scaling="yarn", truncate=truncate)
        torch.testing.assert_close(ours.inv_freq(), theirs)
        assert ours.attention_factor == pytest.approx(factor)


def test_routing_capture_holds_each_tokens_experts_and_the_load():
    from builder.interp.routing import capture_routing_on, draw_routing

    torch.manual_seed(0)
    model = build_model(OmegaConf.merge(preset_configs(["tiny_moe"])["tiny_moe"],
                                        {"d_model": 32, "n_layers": 2, "n_heads": 2, "mlp": {"hidden": 16}}))
    ids = torch.randint(0, 128, (1, 9))
    routes = capture_routing_on(model, ids)
    assert sorted(routes) == [0, 1]
    # layer 0's router reads the residual stream after attention, normalised: route it by hand
    emb = model.positions(model.token_embedding(ids), torch.arange(9))
    pos = torch.arange(9)
    h = emb + model.blocks[0].attention(model.blocks[0].norm_1(emb), model.layer_masks(pos, pos)[0], model.positions, pos)
    _, experts, weights = model.blocks[0].mlp.route(model.blocks[0].norm_2(h)[0])
    torch.testing.assert_close(routes[0].weights[0].gather(-1, experts), weights.detach())
    assert routes[0].load.sum() == 9 * 2 and (routes[0].weights[0] > 0).sum(-1).eq(2).all()
    figure = draw_routing([str(i) for i in range(9)], routes)
    assert len(figure.axes) == 3  # a grid per layer, and the load


def test_routing_hook_points_read_and_edit_the_routing():
    from builder.interp.capture import ROUTING_FIELDS, record

    """blocks.{l}.mlp.hook_router_logits [batch, pos, n_experts], hook_expert_weights and hook_expert_indices
    [batch, pos, top_k] are found by name like every hook point; forcing every token to expert 0 through the
    router's logits sends the whole load there, and nothing attached leaves the logits as they were."""
    torch.manual_seed(0)
    model = build_model(OmegaConf.merge(preset_configs(["tiny_moe"])["tiny_moe"],
                                        {"d_model": 32, "n_layers": 2, "n_heads": 2, "mlp": {"hidden": 16}})).eval()
    ids = torch.randint(0, 128, (2, 7))
    names = [f"blocks.{layer}.mlp.hook_{n}" for layer in (0, 1) for n in ("router_logits", "expert_weights",
                                                                           "expert_indices")]
    assert [p.name for p in model.hook_points(lambda name: ".mlp." in name)] == names
    moe = model.blocks[0].mlp
    with torch.no_grad():
        plain = model(ids)
        logits, cache = model.run_with_cache(ids, names_filter=names)
        seen = cache
        torch.testing.assert_close(logits, plain, rtol=0, atol=0)
        assert cache["blocks.0.mlp.hook_router_logits"].shape == (2, 7, moe.n_experts)
        assert cache["blocks.0.mlp.hook_expert_weights"].shape == (2, 7, moe.top_k)
        assert cache["blocks.0.mlp.hook_expert_indices"].dtype == torch.int64
        forced = lambda x, hook: torch.full_like(x, -1e4).index_fill(-1, torch.tensor([0, 1]), 0.0)  # noqa: E731
        edited, cache = model.run_with_cache(ids, names_filter=names,
                                             fwd_hooks=[("blocks.0.mlp.hook_router_logits", forced)])
    assert set(cache["blocks.0.mlp.hook_expert_indices"].flatten().tolist()) == {0, 1}
    assert not torch.allclose(edited, plain)
    assert not hasattr(moe, "recorder")
    # the capture carries the routing as fields of its record, as the hook points hold it
    rec = record(model, ids, fields=("pattern", *ROUTING_FIELDS))
    assert rec.routed_layers() == [0, 1] and rec.pattern(1).shape == (2, 2, 7, 7)
    routing = rec.routing(1)
    assert routing["router_logits"].shape == (2, 7, 4) and routing["experts"].shape == (2, 7, 2)
    torch.testing.assert_close(routing["experts"], seen["blocks.1.mlp.hook_expert_indices"])
    assert record(model, ids, fields=("pattern",)).routed_layers() == []


@pytest.mark.parametrize("args,key,accepted", [
    (["model=tiny_moe", "model.mlp.top_k=5"], "model.mlp.top_k", "at most n_experts=4"),
    (["model=tiny_moe", "model.mlp.n_groups=3"], "model.mlp.n_groups", "a divisor of n_experts=4"),
    (["model=deepseek_v3", "model.mlp.n_groups=64", "model.mlp.top_groups=1"], "model.mlp.top_k",
     "at most the experts of top_groups=1 groups (4)"),
    (["model=deepseek_v3", "model.d_head=32"], "model.attention.qk_rope_head_dim", "model.d_head=32"),
    (["model=gpt_oss_20b", "model.embedding.scaling=ntk"], "model.embedding.scaling", "one of llama3, yarn"),
    (["model=tiny_moe", "model.mlp.bias_update_rate=0.001"], "model.mlp.bias_update_rate",
     "0 unless selection_bias=true"),
])
def test_rules_of_the_new_components_are_refused_by_name(tmp_path, cli, args, key, accepted):
    proc = cli("task=report", *args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"Error: {key}=") and accepted in proc.stderr, proc.stderr


def test_selection_biases_move_towards_balance_once_per_step():
    """DeepSeek-V3's balancing without a loss: after a step, the experts that took more than the mean number of
    choices have their selection bias lowered by bias_update_rate, the others raised; choices of several forward
    passes (gradient accumulation) count together; a layer without the rate keeps its bias; none in eval."""
    from components.moe import MixtureOfExperts, update_selection_biases

    torch.manual_seed(0)
    model = torch.nn.ModuleList([MixtureOfExperts(16, n_experts=4, top_k=1, hidden=8, scoring="sigmoid",
                                                  selection_bias=True, bias_update_rate=0.01),
                                 MixtureOfExperts(16, n_experts=4, top_k=1, hidden=8, scoring="sigmoid",
                                                  selection_bias=True)])
    busy, other = model
    with torch.no_grad():
        busy.router.weight.zero_()
        busy.router.weight[2] = 1.0  # expert 2 scores highest for inputs of positive sum, expert 0 for negative
        busy.router.weight[0] = -1.0
    x = torch.ones(6, 16)
    assert update_selection_biases(model) is None  # no step's choices yet
    model.train()
    busy(x), busy(-x[:2]), other(x)  # 6 tokens to expert 2, 2 to expert 0
    overload = update_selection_biases(model)
    assert overload == pytest.approx((6 - 2) / 2)  # 8 choices over 4 experts: 2 each when even; expert 2 took 6
    torch.testing.assert_close(busy.selection_bias, torch.tensor([0.0, 0.01, -0.01, 0.01]))
    assert other.selection_bias.eq(0).all() and busy.step_counts is None
    model.eval()
    busy(x)
    assert busy.step_counts is None and update_selection_biases(model) is None


def test_load_balancing_loss_is_transformers_over_top_k():
    """The load-balancing loss is 1 at balance; transformers' (Mixtral's load_balancing_loss_func) sums over the
    top_k slots, so it is top_k times ours on the same logits."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from components.moe import MixtureOfExperts

    torch.manual_seed(0)
    moe = MixtureOfExperts(16, n_experts=6, top_k=2, hidden=8)
    logits = torch.randn(40, 6)
    experts = logits.softmax(-1).topk(2, dim=-1).indices
    ours = moe.router_losses(logits, torch.bincount(experts.flatten(), minlength=6))["load_balance"]
    theirs = load_balancing_loss_func((logits,), num_experts=6, top_k=2)
    assert float(theirs) == pytest.approx(2 * float(ours), rel=1e-5)
