"""Named hook points: TransformerLens's names and layouts, edits that change what flows on, nothing extra when idle."""

import pytest
import torch
import torch.nn.functional as F
from conftest import jittered_model
from torch.overrides import TorchFunctionMode

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=40", "model.context_length=16"]
GQA = ["model=llama2_7b", "model.attention.n_kv_heads=2", "model.mlp.hidden=48"]
B, T, H, D = 2, 9, 4, 8


def ids_of(seed=0, t=T):
    return torch.randint(0, 40, (B, t), generator=torch.Generator().manual_seed(seed))


class Calls(TorchFunctionMode):
    """Counts the torch functions a forward pass calls."""

    def __init__(self):
        super().__init__()
        self.counts: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.counts[func] = self.counts.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


def test_names_and_layouts_are_transformer_lens_ones():
    model = jittered_model(SMALL)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids_of())
    assert list(cache) == list(model.hook_dict)  # every point ran, in the order a forward pass reaches them
    expected = {"hook_embed": (B, T, 32), "hook_pos_embed": (B, T, 32), "ln_final.hook_normalized": (B, T, 32)}
    for layer in range(2):
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            expected[f"blocks.{layer}.hook_{name}"] = (B, T, 32)
        for name in ("q", "k", "v", "rot_q", "rot_k", "z"):
            expected[f"blocks.{layer}.attn.hook_{name}"] = (B, T, H, D)
        for name in ("attn_scores_unmasked", "attn_scores", "pattern"):
            expected[f"blocks.{layer}.attn.hook_{name}"] = (B, H, T, T)
        expected[f"blocks.{layer}.attn.hook_result"] = (B, T, H, 32)
    assert {name: tuple(t.shape) for name, t in cache.items()} == expected
    # what they hold: the stream adds up, the pattern's rows sum to 1 with the future at -inf / 0, the final norm
    assert torch.allclose(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])
    for layer in range(2):
        mid = cache[f"blocks.{layer}.hook_resid_pre"] + cache[f"blocks.{layer}.hook_attn_out"]
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_mid"], mid, atol=1e-6)
        post = cache[f"blocks.{layer}.hook_resid_mid"] + cache[f"blocks.{layer}.hook_mlp_out"]
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_post"], post, atol=1e-6)
        out = cache[f"blocks.{layer}.attn.hook_result"].sum(2) + model.blocks[layer].attention.o.bias
        assert torch.allclose(out, cache[f"blocks.{layer}.hook_attn_out"], atol=1e-5)
    pattern, scores = cache["pattern", 1], cache["scores", 1]
    assert torch.allclose(pattern.sum(-1), torch.ones(B, H, T))
    future = ~torch.ones(T, T, dtype=torch.bool).tril()
    assert bool((scores[..., future] == float("-inf")).all()) and bool((pattern[..., future] == 0).all())
    assert torch.allclose(model.unembedding(cache["ln_final.hook_normalized"]), logits, atol=1e-5)
    assert cache["z", 0] is cache["blocks.0.attn.hook_z"] and cache["resid_post", 1] is cache["blocks.1.hook_resid_post"]
    with pytest.raises(KeyError, match="'blocks.0.attn.hook_zz'.*did you mean 'blocks.0.attn.hook_z'"):
        model.run_with_hooks(ids_of(), fwd_hooks=[("blocks.0.attn.hook_zz", lambda x, hook: x)])


def test_nothing_attached_keeps_the_fused_kernel_and_the_logits():
    model = jittered_model(SMALL)
    ids = ids_of()
    with torch.no_grad(), Calls() as calls:
        plain = model(ids)
    assert calls.counts.get(F.scaled_dot_product_attention) == 2 and torch.softmax not in calls.counts
    assert torch.Tensor.softmax not in calls.counts
    # functions that only read, on every point but the scores and pattern: the fused path, the same logits bit for bit
    reading = lambda name: "scores" not in name and "pattern" not in name  # noqa: E731
    with torch.no_grad(), Calls() as calls:
        logits, cache = model.run_with_cache(ids, names_filter=reading)
    assert torch.equal(logits, plain) and calls.counts.get(F.scaled_dot_product_attention) == 2
    # a function on one layer's pattern: that layer (only) goes the explicit way, the logits agree
    with torch.no_grad(), Calls() as calls:
        logits, cache = model.run_with_cache(ids, names_filter="blocks.1.attn.hook_pattern")
    assert calls.counts.get(F.scaled_dot_product_attention) == 1 and list(cache) == ["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    assert all(not point.fns for point in model.hook_dict.values())


def test_a_zeroed_head_equals_the_head_cut_out_of_w_o():
    """Zero-ablating head 2 of layer 1 by its hook_z, by its hook_result, and by zeroing its columns of W_o: the
    same logits; other heads' ablation gives other logits."""
    model = jittered_model(SMALL)
    ids = ids_of()

    def zero_z(z, hook):
        z[:, :, 2] = 0
        return z

    def zero_result(result, hook):
        result[:, :, 2] = 0
        return result

    with torch.no_grad():
        by_z = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", zero_z)])
        by_result = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_result", zero_result)])
        plain = model(ids)
        model.blocks[1].attention.o.weight[:, 2 * D:3 * D] = 0
        cut = model(ids)
    torch.testing.assert_close(by_z, cut, atol=1e-6, rtol=0)
    torch.testing.assert_close(by_result, cut, atol=1e-5, rtol=0)
    assert (by_z - plain).abs().max() > 1e-2


def test_patching_the_whole_stream_carries_the_clean_run_over():
    """Patching a layer's resid_pre at every position from the clean run gives the clean logits; at one position
    only, the positions before it keep the corrupted run's logits (causality) and the rest change."""
    model = jittered_model(SMALL)
    clean, corrupt = ids_of(1), ids_of(2)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda name: "resid_pre" in name)
        corrupt_logits = model(corrupt)

        def patch(x, hook):
            return cache[hook.name]

        def patch_at(position):
            def fn(x, hook):
                x[:, position] = cache[hook.name][:, position]
            return fn

        patched = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", patch)])
        at_5 = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", patch_at(5))])
    torch.testing.assert_close(patched, clean_logits, atol=1e-5, rtol=0)
    assert torch.equal(at_5[:, :5], corrupt_logits[:, :5])
    assert (at_5[:, 5:] - corrupt_logits[:, 5:]).abs().amax(-1).min() > 1e-4


def test_grouped_query_keys_and_values_hold_one_entry_per_key_value_head():
    """hook_k / hook_v: [batch, pos, n_kv_heads, d_head] (TransformerLens's grouped layout); editing key/value head
    1 changes the pattern of query heads 2 and 3, its group, and of no other."""
    model = jittered_model(GQA + SMALL)
    ids = ids_of()
    names = ["blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_q", "blocks.0.attn.hook_pattern"]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=names)

        def scale_kv_1(k, hook):
            k[:, :, 1] *= 3.0
            return k

        _, edited = model.run_with_cache(ids, names_filter=names[3:], fwd_hooks=[(names[0], scale_kv_1)])
    assert cache[names[0]].shape == cache[names[1]].shape == (B, T, 2, D)
    assert cache[names[2]].shape == (B, T, H, D)
    changed = (edited[names[3]] - cache[names[3]]).abs().amax(dim=(0, 2, 3))
    assert changed[:2].max() == 0 and changed[2:].min() > 1e-3


def test_hooks_are_removed_when_a_hook_raises_and_by_predicate():
    model = jittered_model(SMALL)
    ids = ids_of()

    def boom(x, hook):
        raise RuntimeError(f"stop at {hook.name} (layer {hook.layer()})")

    with pytest.raises(RuntimeError, match=r"stop at blocks.1.hook_mlp_out \(layer 1\)"):
        model.run_with_hooks(ids, fwd_hooks=[(lambda name: name.endswith("resid_pre"), lambda x, hook: None),
                                             ("blocks.1.hook_mlp_out", boom)])
    assert all(not point.fns for point in model.hook_dict.values())
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=["hook_embed", "blocks.0.attn.hook_v"])
    assert list(cache) == ["hook_embed", "blocks.0.attn.hook_v"]


@pytest.mark.parametrize("layout", ["parallel", "post", "sandwich"])
def test_layouts_fire_their_points(layout):
    """The parallel layout has no resid_mid (as TransformerLens's parallel blocks); the others fire every point,
    and resid_post is what the block hands on."""
    extra = ["model/norm=rmsnorm"] if layout == "sandwich" else []
    model = jittered_model(SMALL + extra + [f"model.norm.layout={layout}", "model/embedding=rotary"])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids_of())
    assert "hook_pos_embed" not in model.hook_dict  # rotary positions add no vector
    assert ("blocks.0.hook_resid_mid" in cache) == (layout != "parallel")
    assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
