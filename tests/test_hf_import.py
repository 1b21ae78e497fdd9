"""Importing a Hugging Face GPT-2 directory: same logits as transformers, safe loading, clear errors."""

import json
import os
import pickle

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

transformers = pytest.importorskip("transformers")

import builder  # noqa: E402
from builder.errors import ConfigError  # noqa: E402
from builder.hf import is_hf_gpt2_dir, load_hf_gpt2  # noqa: E402

VOCAB = 300


def _hf_gpt2(seed: int = 0, **overrides):
    """A tiny random GPT-2 with every parameter (biases, LayerNorm scales) drawn from a normal."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                                  bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **overrides)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if ".ln_" in name and name.endswith("weight") else 0.0, 0.2)
    return model.eval()


def _ids(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (2, 17), generator=g)


def _assert_same_logits(hf, model, atol=1e-4):
    ids = _ids()
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits
        got = model(ids)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    hf = _hf_gpt2()
    d = tmp_path_factory.mktemp("gpt2_tied")
    hf.save_pretrained(d)
    return hf, d


def test_safetensors_dir_matches_transformers(tied):
    hf, d = tied
    assert (d / "model.safetensors").is_file()
    assert is_hf_gpt2_dir(d)
    model, tok, cfg = builder.load_model(d)
    assert tok is None
    assert not model.training
    assert cfg["d_model"] == 32 and cfg["n_layers"] == 2 and cfg["context_length"] == 64 and cfg["tie_embeddings"]
    assert model.unembedding.weight is model.token_embedding.weight
    _assert_same_logits(hf, model)
    # the returned config rebuilds the same architecture
    assert builder.build_model(cfg).state_dict().keys() == model.state_dict().keys()


def test_pytorch_bin_dir_matches_transformers(tied, tmp_path):
    hf, src = tied
    # transformers 5 always writes safetensors, so write the legacy file by hand: no "transformer." prefix
    # (as some hub checkpoints), the old causal-mask buffers included, tensors stored safely
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    model, _, _ = builder.load_model(tmp_path)
    _assert_same_logits(hf, model)


def test_untied_and_sharded(tmp_path):
    hf = _hf_gpt2(seed=3, tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, _, cfg = load_hf_gpt2(tmp_path)
    assert cfg["tie_embeddings"] is False
    assert model.unembedding.weight is not model.token_embedding.weight
    _assert_same_logits(hf, model)


def test_custom_eps_and_inner(tmp_path):
    hf = _hf_gpt2(seed=4, layer_norm_epsilon=1e-3, n_inner=48, activation_function="gelu_pytorch_tanh")
    hf.save_pretrained(tmp_path)
    model, _, cfg = builder.load_model(tmp_path)
    assert cfg["mlp"]["hidden"] == 48 and cfg["norm"]["eps"] == 1e-3
    _assert_same_logits(hf, model)


def test_capture_attention_keeps_logits(tied):
    _, d = tied
    model, _, _ = builder.load_model(d)
    ids = _ids(2)
    with torch.no_grad():
        plain = model(ids)
        with builder.capture_attention(model) as rec:
            captured = model(ids)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=0)
    pattern = rec.pattern(1)
    assert pattern.shape == (2, 4, 17, 17)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 17))


def test_tokenizer_vocab_merges_round_trip(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    hf = _hf_gpt2(seed=5)
    hf.save_pretrained(tmp_path)
    bpe = ByteLevelBPETokenizer()
    texts = ["the quick brown fox jumps over the lazy dog", "the dog sleeps; the fox runs.", "hello world, hello"]
    bpe.train_from_iterator(texts * 20, vocab_size=VOCAB, min_frequency=2, show_progress=False)
    bpe.save_model(str(tmp_path))
    model, tok, _ = builder.load_model(tmp_path)
    assert tok is not None and tok.vocab_size <= VOCAB
    text = "the lazy fox says hello, wörld! ✓"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # merges were applied
    with torch.no_grad():
        assert model(torch.tensor([ids])).shape == (1, len(ids), VOCAB)


def test_tokenizer_json_fallback(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    _hf_gpt2(seed=6).save_pretrained(tmp_path)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["abc abd abe"] * 10, vocab_size=270, show_progress=False)
    (tmp_path / "tokenizer.json").write_text(bpe.to_str())
    _, tok, _ = builder.load_model(tmp_path)
    assert tok is not None and tok.decode(tok.encode("abd abe")) == "abd abe"


def test_other_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon", "architectures": ["FalconForCausalLM"]}))
    assert not is_hf_gpt2_dir(tmp_path)
    with pytest.raises(ConfigError, match="model_type") as err:
        builder.load_model(tmp_path)
    assert "falcon" in str(err.value) and "gpt2, llama, mistral" in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    assert not is_hf_gpt2_dir(tmp_path)
    with pytest.raises(ConfigError, match="model_type") as err:  # the GPT-2 loader still takes GPT-2 only
        load_hf_gpt2(tmp_path)
    assert "llama" in str(err.value)


def test_unsupported_activation_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "activation_function": "relu"}))
    with pytest.raises(ConfigError, match="activation_function") as err:
        builder.load_model(tmp_path)
    assert "relu" in str(err.value) and "gelu_new" in str(err.value)


def test_missing_weights_names_the_files(tmp_path, tied):
    _, src = tied
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(ConfigError) as err:
        builder.load_model(tmp_path)
    assert err.value.key == "checkpoint"
    for name in ("model.safetensors", "pytorch_model.bin"):
        assert name in str(err.value)


def test_mismatched_weights_are_listed(tmp_path, tied):
    hf, src = tied
    config = json.loads((src / "config.json").read_text())
    config["n_layer"] = 3  # the weights only have two blocks
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match=r"blocks\.2\.attention\.qkv\.weight: missing"):
        builder.load_model(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_save", "pickle_dump"])
def test_malicious_pickle_is_refused(tmp_path, tied, writer):
    _, src = tied
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    payload = {"transformer.wte.weight": torch.zeros(VOCAB, 32), "evil": _Evil(marker)}
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        if writer == "torch_save":
            torch.save(payload, f)
        else:
            pickle.dump(payload, f)
    with pytest.raises(ConfigError, match="weights_only") as err:
        builder.load_model(tmp_path)
    assert "pytorch_model.bin" in str(err.value)
    assert not marker.exists()
