"""The assembled model: shapes, tying, init, fused == explicit, causality, padding, KV cache."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import builder
from builder.generate import generate
from components import KVCache, StaticKVCache

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=50", "model.context_length=16"]
CAUSAL_MASKS = [["model/mask=causal"], ["model/mask=sliding_window", "model.mask.window=3"],
                ["model/mask=alternating", "model.mask.window=2"]]
ALL_MASKS = CAUSAL_MASKS + [["model/mask=none"], ["model/mask=prefix", "model.mask.prefix=4"]]
ATTENTIONS = [["model/attention=multi_head"], ["model/attention=grouped_query", "model.attention.n_kv_heads=2"],
              ["model/attention=grouped_query", "model.attention.n_kv_heads=1"]]
EMBEDDINGS = [["model/embedding=learned"], ["model/embedding=sinusoidal"], ["model/embedding=rotary"],
              ["model/embedding=none"]]


def small_model(*overrides, seed=0):
    torch.manual_seed(seed)
    model = builder.build_model(builder.compose(SMALL + list(overrides)).model)
    return model.eval()


def test_forward_shape_and_tying():
    model = small_model()
    ids = torch.randint(0, 50, (3, 11))
    assert model(ids).shape == (3, 11, 50)
    assert model.unembedding.weight is model.token_embedding.weight
    untied = small_model("model.tie_embeddings=false")
    assert untied.unembedding.weight is not untied.token_embedding.weight
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 50 * 32


def test_gpt2_init():
    model = builder.build_model(builder.compose(["model.d_model=256", "model.n_layers=8", "model.n_heads=4"]).model)
    std = lambda t: t.float().std().item()  # noqa: E731
    assert std(model.blocks[0].mlp.fc.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.token_embedding.weight) == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert std(model.blocks[3].attention.o.weight) == pytest.approx(scaled, rel=0.05)
    assert std(model.blocks[3].mlp.proj.weight) == pytest.approx(scaled, rel=0.05)
    assert model.blocks[0].attention.qkv.bias.abs().sum() == 0


@pytest.mark.parametrize("attention,mask,embedding",
                         list(itertools.product(ATTENTIONS, ALL_MASKS, EMBEDDINGS[:3])) + [
                             (ATTENTIONS[0], ALL_MASKS[0], EMBEDDINGS[3])])
def test_explicit_path_gives_fused_logits(attention, mask, embedding):
    model = small_model(*attention, *mask, *embedding)
    ids = torch.randint(0, 50, (2, 13))
    fused = model(ids)
    with builder.capture_attention(model) as rec:
        explicit = model(ids)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-4)
    assert rec.n_layers == 2
    for layer in range(2):
        p = rec.pattern(layer)
        assert p.shape == (2, 4, 13, 13)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 13))
        allowed = rec.mask(layer)
        if allowed is not None:
            assert (p.masked_select(~allowed.expand_as(p)) == 0).all()
        # each head's update, summed with W_o's bias, is the attention output
        assert rec.result(layer).shape == (2, 4, 13, 32)


@pytest.mark.parametrize("layout", ["pre", "post", "parallel", "sandwich"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("mlp", ["gelu", "relu", "swiglu", "geglu"])
def test_norms_and_mlps_explicit_equals_fused(layout, norm, mlp):
    model = small_model(f"model/norm={norm}", f"model.norm.layout={layout}", f"model/mlp={mlp}", "model.bias=false")
    ids = torch.randint(0, 50, (2, 9))
    fused = model(ids)
    with builder.capture_attention(model):
        torch.testing.assert_close(model(ids), fused, atol=1e-5, rtol=1e-4)
    assert (layout != "post") == (not isinstance(model.final_norm, torch.nn.Identity))


@pytest.mark.parametrize("mask", CAUSAL_MASKS, ids=lambda m: m[0].split("=")[1])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_causality_property(mask, data):
    """Changing tokens after position t never changes logits at positions <= t."""
    embedding = data.draw(st.sampled_from(EMBEDDINGS))
    model = small_model(*mask, *embedding)
    t_len = data.draw(st.integers(2, 16))
    ids = torch.tensor([data.draw(st.lists(st.integers(0, 49), min_size=t_len, max_size=t_len))])
    t = data.draw(st.integers(0, t_len - 2))
    changed = ids.clone()
    changed[0, t + 1:] = torch.tensor(data.draw(st.lists(st.integers(0, 49), min_size=t_len - t - 1,
                                                         max_size=t_len - t - 1)))
    torch.testing.assert_close(model(ids)[:, : t + 1], model(changed)[:, : t + 1], atol=1e-5, rtol=1e-5)


def test_bidirectional_mask_sees_the_future():
    model = small_model("model/mask=none")
    ids = torch.randint(0, 50, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 50
    assert not torch.allclose(model(ids)[:, 0], model(changed)[:, 0])


@pytest.mark.parametrize("mask", ALL_MASKS, ids=lambda m: m[0].split("=")[1])
def test_padding_mask(mask):
    """Right-padded sequences give the unpadded logits at their real positions, whatever the pads hold."""
    model = small_model(*mask)
    a, b = torch.randint(0, 50, (1, 10)), torch.randint(0, 50, (1, 6))
    batch = torch.cat([a, torch.cat([b, torch.randint(0, 50, (1, 4))], 1)])
    attention_mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    out = model(batch, attention_mask=attention_mask)
    torch.testing.assert_close(out[0], model(a)[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1, :6], model(b)[0], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(out).all()
    with builder.capture_attention(model) as rec:
        model(batch, attention_mask=attention_mask)
    p = rec.pattern(0)
    assert (p[1, :, :6, 6:] == 0).all()  # real tokens never look at padding


@pytest.mark.parametrize("variant", CAUSAL_MASKS + [["model/embedding=rotary"], ["model/attention=grouped_query"]],
                         ids=lambda m: m[0])
def test_kv_cache_decoding_matches_full_forward(variant):
    model = small_model(*variant)
    ids = torch.randint(0, 50, (2, 12))
    full = model(ids)
    cache = KVCache()
    steps = [model(ids[:, :5], cache=cache)]
    for t in range(5, 12):
        steps.append(model(ids[:, t: t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # what generation asks for: the last position's logits only, from a prompt and from each step
    cache = KVCache()
    first = model(ids[:, :5], cache=cache, last_only=True)
    assert first.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(first, full[:, 4:5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model(ids[:, 5:6], cache=cache, last_only=True), full[:, 5:6], atol=1e-5, rtol=1e-4)


def test_kv_cache_writes_in_place_and_grows_past_its_capacity():
    model = small_model("model/embedding=rotary", "model/attention=grouped_query")
    ids = torch.randint(0, 50, (2, 14))
    full = model(ids)
    cache = KVCache(capacity=8)
    steps = [model(ids[:, :5], cache=cache)]
    buffer = cache.keys[0]
    assert buffer.shape[2] == 8 and cache.length == 5
    for t in range(5, 8):
        steps.append(model(ids[:, t: t + 1], cache=cache))
        assert cache.keys[0] is buffer  # written in place: no copy of the history per token
    for t in range(8, 14):
        steps.append(model(ids[:, t: t + 1], cache=cache))
    assert cache.keys[0].shape[2] == 16 and cache.length == 14  # doubled once
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ALL_MASKS + [["model/embedding=rotary"], ["model/attention=grouped_query"],
                                     ["model/embedding=sinusoidal"]], ids=lambda m: m[0])
def test_static_kv_cache_decodes_as_the_growing_one(variant):
    model = small_model(*variant)
    ids = torch.randint(0, 50, (2, 12))
    decoded = {}
    for name, cache in (("growing", KVCache()), ("static", StaticKVCache(16))):
        # a 3-token prompt: shorter than the prefix mask's 4, so its unwritten slots must stay hidden
        decoded[name] = torch.cat([model(ids[:, :3], cache=cache)] +
                                  [model(ids[:, t: t + 1], cache=cache) for t in range(3, 12)], 1)
    torch.testing.assert_close(decoded["static"], decoded["growing"], atol=1e-5, rtol=1e-4)
    assert cache.length == 12 and cache.keys[0].shape[2] == 16  # one buffer of the capacity, written in place
    with pytest.raises(ValueError, match="StaticKVCache of capacity 16 holds 12 tokens: no room for 5 more"):
        model(ids[:, :5], cache=cache)


def test_static_kv_cache_refuses_what_it_cannot_hold():
    model = small_model("model/embedding=learned")  # a table of context_length=16 positions
    ids = torch.randint(0, 50, (1, 4))
    with pytest.raises(ValueError, match=r"capacity 17 is longer than .*model.context_length=16"):
        model(ids, cache=StaticKVCache(17))
    with pytest.raises(ValueError, match="attention_mask is not supported with a StaticKVCache"):
        model(ids, attention_mask=torch.ones_like(ids), cache=StaticKVCache(8))
    with pytest.raises(ValueError, match="capacity must be a positive integer, got 0"):
        StaticKVCache(0)


def test_compiled_generation_gives_the_eager_tokens_and_compiles_once():
    from torch._dynamo.utils import counters  # (reason: torch's compile counters; only this test reads them)

    torch.manual_seed(0)
    model = builder.build_model(builder.compose([
        "model=llama2_7b", "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.attention.n_kv_heads=2",
        "model.mlp.hidden=64", "model.vocab_size=50", "model.context_length=24"]).model).eval()
    ids = torch.randint(0, 50, (2, 6))
    eager = generate(model, ids, 30, temperature=0.0)
    compiled = generate(model, ids, 30, temperature=0.0, compile=True)
    assert torch.equal(compiled, eager)
    graphs = counters["stats"]["unique_graphs"]
    again = generate(model, ids, 30, temperature=0.0, compile=True)
    assert torch.equal(again, eager) and counters["stats"]["unique_graphs"] == graphs  # no recompilation
    sampled = [generate(model, ids, 30, temperature=0.9, top_k=10, generator=torch.Generator().manual_seed(3),
                        compile=c) for c in (False, True)]
    assert torch.equal(*sampled)
    assert counters["stats"]["unique_graphs"] == graphs
    # learned positions: 30 new tokens overflow the 16-position table, and the cache restarts on the last 8 tokens
    learned = small_model("model/embedding=learned")
    assert learned.context_length == 16
    assert torch.equal(generate(learned, ids, 30, temperature=0.0, compile=True),
                       generate(learned, ids, 30, temperature=0.0))


def test_rotary_angles_are_computed_once_per_forward(monkeypatch):
    model = small_model("model/embedding=rotary", "model.n_layers=3")
    calls = []
    real = model.positions._cos_sin
    monkeypatch.setattr(model.positions, "_cos_sin", lambda pos, dtype: calls.append(len(pos)) or real(pos, dtype))
    model(torch.randint(0, 50, (1, 9)))
    model(torch.randint(0, 50, (1, 4)))
    assert calls == [9, 4]


def test_too_long_input_names_context_length():
    model = small_model()
    with pytest.raises(ValueError, match="context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_capture_keeps_only_the_fields_asked_for():
    model = small_model()
    ids = torch.randint(0, 50, (1, 9))
    from builder.interp.capture import record

    rec = record(model, ids, fields=("pattern",), layers=[1])
    assert rec.pattern(1).shape == (1, 4, 9, 9)
    with pytest.raises(KeyError, match=r"'result' was not recorded; recorded fields: \['pattern'\]"):
        rec.result(1)
    with pytest.raises(KeyError, match=r"layer 0 was not recorded; recorded layers: \[1\]"):
        rec.pattern(0)
