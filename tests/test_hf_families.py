"""Every Hugging Face family in builder/hf.py's tables, both ways: a tiny random model built by transformers, saved,
loaded by us with transformers' logits (1e-4, fp32); ours exported with task=export format=hf, loaded by transformers
with the same logits. Two shapes per family; nothing is downloaded."""

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

transformers = pytest.importorskip("transformers")

from conftest import run_cli, train_env  # noqa: E402

import builder  # noqa: E402
from builder.errors import ConfigError  # noqa: E402
from builder.generate import generate  # noqa: E402
from builder.hf import FAMILIES, canonical, hf_config_for, save_hf  # noqa: E402

VOCAB = 120
_LLAMA = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
# two shapes per family: the second changes what the family can change (heads, biases, ties, rotary, bands, caps)
SHAPES = {
    "gpt2": [dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
             dict(n_embd=48, n_layer=3, n_head=2, n_positions=32, n_inner=40, tie_word_embeddings=False,
                  activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-3)],
    "llama": [dict(_LLAMA, num_key_value_heads=2),
              dict(_LLAMA, num_key_value_heads=4, head_dim=12, tie_word_embeddings=True, attention_bias=True,
                   mlp_bias=True, max_position_embeddings=64, rms_norm_eps=1e-5,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})],
    "mistral": [dict(_LLAMA, num_key_value_heads=1, sliding_window=5),
                dict(_LLAMA, num_key_value_heads=2, sliding_window=None, head_dim=16, tie_word_embeddings=True)],
    "qwen2": [dict(_LLAMA, num_key_value_heads=2),
              dict(_LLAMA, hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=12, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 1e6})],
    "qwen3": [dict(_LLAMA, num_key_value_heads=2, head_dim=16),
              dict(_LLAMA, num_key_value_heads=4, head_dim=8, tie_word_embeddings=True, rms_norm_eps=1e-5)],
    "gpt_neox": [dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
                 dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                      use_parallel_residual=False, hidden_act="gelu_new", tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})],
    "gemma": [dict(_LLAMA, num_key_value_heads=1, head_dim=8),
              dict(_LLAMA, num_key_value_heads=4, head_dim=16, tie_word_embeddings=False, rms_norm_eps=1e-5)],
    "gemma2": [dict(_LLAMA, num_hidden_layers=3, num_key_value_heads=2, head_dim=8, sliding_window=4,
                    query_pre_attn_scalar=12, attn_logit_softcapping=5.0, final_logit_softcapping=10.0),
               dict(_LLAMA, num_key_value_heads=4, head_dim=16, sliding_window=6, attn_logit_softcapping=None,
                    final_logit_softcapping=None, layer_types=["full_attention", "sliding_attention"])],
}
CASES = [(family, i) for family in SHAPES for i in range(2)]
# export writes the first family whose table expresses the model: a Mistral without a window is a Llama
EXPORTED_AS = {("mistral", 1): "llama"}


def _hf_model(model_type: str, seed: int = 0, dtype=None, **kw):
    """A tiny random model of ``model_type``, every parameter drawn (norm gains about 1, Gemma's offsets about 0)."""
    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=None, eos_token_id=None,
                                            pad_token_id=None, **kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = ("norm" in name or ".ln_" in name) and name.endswith("weight") and not model_type.startswith("gemma")
            p.normal_(1.0 if gain else 0.0, 0.2)
    return model.eval()


def _ids(seed: int = 1, t: int = 17):
    return torch.randint(0, VOCAB, (2, t), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids, use_cache=False) if isinstance(model, transformers.PreTrainedModel) else model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


@pytest.mark.parametrize("family,shape", CASES, ids=[f"{f}-{i}" for f, i in CASES])
def test_import_and_export_match_transformers(family, shape, tmp_path):
    hf = _hf_model(family, seed=shape, **SHAPES[family][shape])
    hf.save_pretrained(tmp_path / "hf")
    ids = _ids(shape)
    want = _logits(hf, ids)

    model, _, cfg = builder.load_model(tmp_path / "hf")
    torch.testing.assert_close(_logits(model, ids), want, atol=1e-4, rtol=0)
    assert builder.build_model(cfg).state_dict().keys() == model.state_dict().keys()  # the config rebuilds it

    out = save_hf(model, None, cfg, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == EXPORTED_AS.get((family, shape), family)
    again = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    torch.testing.assert_close(_logits(again, ids), want, atol=1e-4, rtol=0)
    assert canonical(builder.load_model(out)[2]) == canonical(cfg)  # and back: the same model, setting for setting


def test_family_settings_read_as_the_components_say(tmp_path):
    """Spot checks of the mapping (the logits tests above prove it; these name what each key became)."""
    cfgs = {}
    for family, kw in (("gpt_neox", SHAPES["gpt_neox"][0]), ("gemma2", SHAPES["gemma2"][0]),
                       ("qwen2", SHAPES["qwen2"][0]), ("llama", SHAPES["llama"][1])):
        _hf_model(family, **kw).save_pretrained(tmp_path / family)
        cfgs[family] = builder.load_model(tmp_path / family)[2]
    neox, gemma2, qwen2, llama = cfgs["gpt_neox"], cfgs["gemma2"], cfgs["qwen2"], cfgs["llama"]
    assert neox["norm"]["layout"] == "parallel" and neox["embedding"]["fraction"] == 0.25
    assert neox["mlp"] == {"name": "gelu", "hidden": 64, "approximate": "none"} and not neox["tie_embeddings"]
    assert gemma2["mask"] == {"name": "alternating", "window": 4, "band_layers": "even"}
    assert gemma2["norm"]["layout"] == "sandwich" and gemma2["norm"]["unit_offset"] and gemma2["scale_embeddings"]
    assert gemma2["attention"]["query_scale"] == pytest.approx(12 ** -0.5) and gemma2["final_softcap"] == 10.0
    assert qwen2["attention"]["qkv_bias"] is True and qwen2["bias"] is False
    assert llama["embedding"]["scale_factor"] == 8.0 and llama["embedding"]["base"] == 500.0 and llama["bias"]


@pytest.mark.parametrize("family,legacy", [
    ("gpt_neox", {"rotary_pct": 0.5, "rotary_emb_base": 500.0}),
    ("llama", {"rope_theta": 500.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
])
def test_older_config_json_rotary_keys(tmp_path, family, legacy):
    """config.json files from before transformers 5: rope_theta / rope_scaling, GPT-NeoX's rotary_pct / rotary_emb_base."""
    hf = _hf_model(family, seed=5, **SHAPES[family][1])
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps({**config, **legacy}))
    ids = _ids(5)
    torch.testing.assert_close(_logits(builder.load_model(tmp_path)[0], ids), _logits(hf, ids), atol=1e-4, rtol=0)


def test_sharded_bin_and_bf16(tmp_path):
    hf = _hf_model("llama", seed=3, **SHAPES["llama"][0])
    ids = _ids(3)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.testing.assert_close(_logits(builder.load_model(tmp_path / "sharded")[0], ids), _logits(hf, ids), atol=1e-4,
                               rtol=0)
    # pytorch_model.bin (written by hand: transformers 5 writes safetensors only), loaded with weights_only
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.testing.assert_close(_logits(builder.load_model(tmp_path / "bin")[0], ids), _logits(hf, ids), atol=1e-4,
                               rtol=0)
    # bf16 on disk: cast to fp32 by default (transformers' fp32 logits of the same rounded weights), kept on request
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    fp32, _, _ = builder.load_model(tmp_path / "bf16")
    assert fp32.token_embedding.weight.dtype == torch.float32
    auto = transformers.AutoModelForCausalLM.from_pretrained
    want = _logits(auto(tmp_path / "bf16", dtype=torch.float32, attn_implementation="eager"), ids)
    torch.testing.assert_close(_logits(fp32, ids), want, atol=1e-4, rtol=0)
    kept, _, _ = builder.load_model(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(_logits(kept, ids), want, atol=0.15, rtol=0.05)
    with pytest.raises(ConfigError, match="dtype"):
        builder.load_model(tmp_path / "bf16", dtype="int8")


def test_missing_shard_and_wrong_shape_name_the_tensor(tmp_path):
    hf = _hf_model("qwen2", **SHAPES["qwen2"][0])
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_key_value_heads"] = 4  # the files have 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"blocks\.0\.attention\.qkv\.weight: checkpoint "
                                          r"model\.layers\.0\.self_attn\.k_proj\.weight \(16, 32\) vs model \(32, 32\)"):
        builder.load_model(tmp_path)
    shard = index["model.layers.1.mlp.down_proj.weight"]
    (tmp_path / shard).unlink()
    with pytest.raises(ConfigError, match=rf"missing: '{shard}', which holds .*model\.layers\.1\.mlp\.down_proj"):
        builder.load_model(tmp_path)


@pytest.mark.parametrize("model_type,config,words", [
    ("falcon", {}, ["model_type", "falcon", "gpt2, llama, mistral, qwen2, qwen3, gpt_neox, gemma, gemma2"]),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, ["scale_attn_by_inverse_layer_idx", "i + 1"]),
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_theta": 1e4}, ["rope_type", "yarn", "llama3"]),
    ("llama", {"attention_bias": True, "mlp_bias": False}, ["mlp_bias", "attention_bias", "model.bias"]),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8}, ["use_sliding_window", "model.mask"]),
    ("gpt_neox", {"attention_bias": False}, ["attention_bias", "model.bias"]),
    ("gpt_neox", {"hidden_act": "relu"}, ["hidden_act", "relu", "'gelu'"]),
    ("gemma2", {"num_hidden_layers": 3, "layer_types": ["sliding_attention"] * 2 + ["full_attention"]},
     ["layer_types", "alternating"]),
])
def test_what_no_component_computes_is_refused_by_name(tmp_path, model_type, config, words):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    with pytest.raises(ConfigError) as err:
        builder.load_model(tmp_path)
    for word in words:
        assert word in str(err.value)
    assert "safetensors" not in str(err.value)  # refused from config.json alone, before any weights are looked for


@pytest.mark.parametrize("change,named", [
    ({"norm": {"name": "rmsnorm"}}, "model.norm.name='rmsnorm'"),  # learned positions + RMSNorm: no family has it
    ({"mask": {"name": "prefix", "prefix": 4}}, "model.mask.name='prefix'"),
])
def test_export_refuses_a_model_no_family_expresses(change, named):
    cfg = {"d_model": 32, "n_layers": 2, "n_heads": 4, "vocab_size": VOCAB, "context_length": 32, "bias": True,
           "dropout": 0.0, "tie_embeddings": True,
           "embedding": {"name": "learned"}, "attention": {"name": "multi_head"}, "mask": {"name": "causal"},
           "mlp": {"name": "gelu"}, "norm": {"name": "layernorm"}}
    assert hf_config_for(cfg)[0] is FAMILIES["gpt2"]
    with pytest.raises(ConfigError) as err:
        hf_config_for({**cfg, **change})
    assert named in str(err.value) and "gpt2:" in str(err.value) and "llama:" in str(err.value)


def test_tokenizer_json_of_any_family_round_trips(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    _hf_model("llama", **SHAPES["llama"][0]).save_pretrained(tmp_path / "hf")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "the dog sat on the log"] * 10,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"], show_progress=False))
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    model, ours, cfg = builder.load_model(tmp_path / "hf")
    assert ours.kind == "hf_tokenizer" and ours.encode("the cat sat") == tok.encode("the cat sat").ids
    save_hf(model, ours, cfg, tmp_path / "out")
    assert Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).encode("dog on").ids == tok.encode("dog on").ids
    assert builder.load_model(tmp_path / "out")[1].to_dict() == ours.to_dict()


def test_trained_model_exported_generates_the_same_tokens_in_transformers(tmp_path):
    """The tiny model the main job trains (run.py, a few steps), exported with task=export format=hf, continued
    greedily by transformers' generate: the same tokens as our own KV-cached generation."""
    env = train_env(tmp_path)
    train = run_cli("data=text", f"data.path={env['corpus']}", "model.d_model=32", "model.n_layers=2",
                    "model.n_heads=2", "model.context_length=32", "trainer.enable_progress_bar=false",
                    "trainer.enable_model_summary=false", "logger=csv", "callbacks=none", "trainer.max_steps=10",
                    "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "train.lr=3e-3",
                    "train.warmup_steps=2", f"hydra.run.dir={tmp_path / 'run'}", env=env["env"])
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    exp = run_cli("task=export", f"checkpoint={ckpt}", "format=hf", f"hydra.run.dir={tmp_path / 'exp'}", env=env["env"])
    assert exp.returncode == 0, exp.stderr[-3000:]
    out = tmp_path / "exp" / "export"
    assert "Hugging Face" in exp.stdout and json.loads((out / "config.json").read_text())["model_type"] == "gpt2"

    model, tokenizer, _ = builder.load_model(ckpt)
    prompt = torch.tensor([tokenizer.encode("the cat ")])
    ours = generate(model, prompt, max_new_tokens=12, temperature=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert theirs.tolist() == ours.tolist()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)  # the char tokenizer, written as tokenizer.json
    assert hf_tok("the cat ")["input_ids"] == prompt[0].tolist()
    assert hf_tok.decode(theirs[0]) == tokenizer.decode(ours[0].tolist()) and hf_tok.decode(theirs[0]).startswith("the cat ")
    assert builder.load_model(out)[1].encode("the cat ") == prompt[0].tolist()  # and ours reads it back
    torch.testing.assert_close(_logits(hf, ours), _logits(model, ours), atol=1e-4, rtol=0)


def test_export_format_is_checked(tmp_path):
    from omegaconf import OmegaConf

    from builder.tasks import export

    with pytest.raises(ConfigError, match="hydraformer, hf"):
        export.run(OmegaConf.create({"checkpoint": str(tmp_path), "format": "onnx"}), tmp_path)


def _with_tokenizer(directory):
    """A small BPE tokenizer.json beside a saved model (its ids fit the model's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "the dog sat on the log"] * 10,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"], show_progress=False))
    assert tok.get_vocab_size() <= VOCAB
    tok.save(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("family", list(SHAPES))
def test_attend_and_heads_on_every_family_directory(family, tmp_path):
    """task=attend (pictures and the page) and task=heads on a Hugging Face directory of each family: grouped
    heads say which query heads share a key/value head, banded layers say their band."""
    shape = SHAPES[family][0]
    _hf_model(family, **shape).save_pretrained(tmp_path / "hf")
    _with_tokenizer(tmp_path / "hf")
    env = {"HYDRAFORMER_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    attend = run_cli("task=attend", f"checkpoint={tmp_path / 'hf'}", "text=the cat sat on the mat",
                     f"hydra.run.dir={tmp_path / 'attend'}", env=env)
    assert attend.returncode == 0, attend.stderr[-3000:]
    page = (tmp_path / "attend" / "attention.html").read_text()
    assert "<script" in page and list((tmp_path / "attend").glob("*.png"))
    heads, kv = shape.get("num_attention_heads", shape.get("n_head")), shape.get("num_key_value_heads")
    if kv is not None and kv != heads:
        assert f"{heads} query heads share {kv} key/value heads" in attend.stdout
    if family in ("mistral", "gemma2"):
        assert f"band {shape['sliding_window']}" in attend.stdout
    if family in ("llama", "gemma2", "gpt_neox"):
        scored = run_cli("task=heads", f"checkpoint={tmp_path / 'hf'}", f"hydra.run.dir={tmp_path / 'heads'}", env=env)
        assert scored.returncode == 0, scored.stderr[-3000:]
        report = json.loads((tmp_path / "heads" / "heads.json").read_text())
        n_layers = shape.get("num_hidden_layers", shape.get("n_layer"))
        assert len(report["kv_heads"]) == n_layers and report["kv_heads"][0] == [heads, kv or heads]


def test_every_family_is_its_preset_and_takes_its_components_from_it():
    """A family's component choices are written once, in ``conf/model/<preset>.yaml``: read there as Hydra composes
    the preset (parents and ``override`` entries followed), and the preset itself exports as that family."""
    from builder.config.compose import preset_configs

    presets = preset_configs([fam.preset for fam in FAMILIES.values()])
    for fam in FAMILIES.values():
        composed = presets[fam.preset]
        chosen = {key: value for key, value in fam.settings.items() if key.endswith(".name")}
        assert chosen == {f"{kind}.name": composed[kind].name for kind in ("embedding", "attention", "mlp", "norm")}
        assert hf_config_for(composed)[0] is fam, fam.model_type


def test_a_table_row_that_is_not_its_type_is_refused_at_import():
    """Keys, choices, requirements and tensors are named types; a plain tuple (positional fields) is a programming
    error, and so is a component choice written in a family rather than in its preset."""
    from builder.hf import Family, Key, Tensor

    llama = dict(model_type="x", architecture="XForCausalLM", preset="llama2_7b")
    with pytest.raises(TypeError, match="keys holds Keys"):
        Family(**llama, keys=(("hidden_size", "d_model", 4096),))
    with pytest.raises(TypeError, match="tensors holds Tensors"):
        Family(**llama, keys=(), tensors={"token_embedding.weight": (("model.embed_tokens.weight",), None)})
    with pytest.raises(TypeError, match="mlp.name in ours; the components are the preset's"):
        Family(**llama, keys=(), ours={"mlp.name": "swiglu"})
    with pytest.raises(TypeError, match="not a file"):
        Family(**{**llama, "preset": "llama9"}, keys=())
    with pytest.raises(TypeError):
        Key("hidden_size", "d_model", 4096)  # fields are named where they are declared
    with pytest.raises(TypeError, match="tuple of tensor names"):
        Tensor(names="model.embed_tokens.weight")


@pytest.mark.parametrize("one,other", [
    (["model/attention=multi_head"], ["model/attention=grouped_query", "model.attention.n_kv_heads=4"]),
    (["model/embedding=rotary"], ["model/embedding=rotary", "model.embedding.beta_fast=5", "model.embedding.scaling=yarn"]),
    (["model/mlp=swiglu"], ["model/mlp=swiglu", "model.mlp.hidden=344"]),  # SwiGLU's default width for d_model 128
    (["model=tiny_moe"], ["model=tiny_moe", "model.mlp.aux_loss=0.5", "model.mlp.limit=3.0", "model.mlp.dense_hidden=8"]),
])
def test_each_component_says_which_spellings_are_the_same_model(one, other):
    """canonical() asks each component (Settings.canonical): an equivalent spelling, an option the choice does not
    read, a null width and a training-only loss weight leave the model what it is; a setting it reads does not."""
    base = ["model.n_heads=4"]
    assert canonical(builder.compose([*base, *one]).model) == canonical(builder.compose([*base, *other]).model)
    assert canonical(builder.compose([*base, *one]).model) != canonical(builder.compose([*base, *one,
                                                                                          "model.bias=false"]).model)
