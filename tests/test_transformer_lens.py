"""Cross-checked against TransformerLens: the same hook functions on the same GPT-2 weights give the same activations
and the same logits (1e-4, fp32), for reads, ablations and patches at several hook names.

Needs the optional extra ``pip install -e ".[lens]"`` (TransformerLens 4: its TransformerBridge over the Hugging Face
model), which the README's test command (and so CI) installs beside ``.[dev]``; the main install leaves it out (it
pulls datasets, pandas, accelerate and more).
"""

import pytest
import torch
import transformer_lens  # noqa: F401  (the optional extra .[lens]: the README's test command installs it)
import transformers
from conftest import random_gpt2_dir

from builder.checkpoint import load_model

TEXTS = ["a fluffy blue creature roamed the verdant forest", "the creature swims in the blue forest"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Our model and TransformerLens's bridge, both from one random GPT-2 folder (3 layers, 4 heads, d_model 32)."""
    from transformer_lens.model_bridge import TransformerBridge

    path = random_gpt2_dir(tmp_path_factory.mktemp("gpt2"), TEXTS)
    slow = transformers.GPT2TokenizerFast(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    slow.save_pretrained(path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf,
                                                 tokenizer=transformers.AutoTokenizer.from_pretrained(path))
    ours, _, _ = load_model(path)
    clean = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    corrupted = clean.clone()
    corrupted[:, 4] = (corrupted[:, 4] + 17) % 300
    return ours.eval(), bridge.eval(), clean, corrupted


SHARED = ["hook_embed", "hook_pos_embed", "ln_final.hook_normalized"] + [
    f"blocks.{layer}.{name}" for layer in (0, 2) for name in (
        "hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post", "attn.hook_q",
        "attn.hook_k", "attn.hook_v", "attn.hook_pattern", "attn.hook_z")]


def test_same_activations_under_the_same_names(both):
    ours, bridge, clean, _ = both
    with torch.no_grad():
        logits, cache = ours.run_with_cache(clean, names_filter=SHARED)
        their_logits, theirs = bridge.run_with_cache(clean, names_filter=lambda name: name in SHARED)
    torch.testing.assert_close(logits, their_logits, atol=ATOL, rtol=0)
    for name in SHARED:
        torch.testing.assert_close(cache[name], theirs[name], atol=ATOL, rtol=0, msg=name)


def _zero_head(head):
    def fn(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z
    return fn


def _scale(factor):
    def fn(x, hook):
        return x * factor
    return fn


def _self_only(pattern, hook):
    return torch.eye(pattern.shape[-1], dtype=pattern.dtype).expand_as(pattern).clone()


def _ablate_value_head(head):
    def fn(v, hook):
        v = v.clone()
        v[:, :, head] = v[:, :, head].mean(dim=(0, 1))
        return v
    return fn


EDITS = {
    "zero-ablate head 1 of layer 1 (hook_z)": [("blocks.1.attn.hook_z", _zero_head(1))],
    "mean-ablate value head 2 of layer 0 (hook_v)": [("blocks.0.attn.hook_v", _ablate_value_head(2))],
    "every token looks at itself in layer 2 (hook_pattern)": [("blocks.2.attn.hook_pattern", _self_only)],
    "halve every MLP's output (predicate on hook_mlp_out)": [(lambda name: name.endswith("hook_mlp_out"), _scale(0.5))],
    "scale queries and the final stream": [("blocks.1.attn.hook_q", _scale(2.0)),
                                           ("ln_final.hook_normalized", _scale(0.7))],
    "zero the position embedding": [("hook_pos_embed", _scale(0.0))],
}


@pytest.mark.parametrize("edit", EDITS)
def test_the_same_edits_give_the_same_logits(both, edit):
    ours, bridge, clean, _ = both
    with torch.no_grad():
        plain = ours(clean)
        mine = ours.run_with_hooks(clean, fwd_hooks=EDITS[edit])
        theirs = bridge.run_with_hooks(clean, fwd_hooks=EDITS[edit])
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    assert (mine - plain).abs().max() > 1e-3  # the edit did something


@pytest.mark.parametrize("name", ["blocks.1.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.2.hook_mlp_out",
                                  "blocks.1.attn.hook_z"])
def test_the_same_patches_give_the_same_logits(both, name):
    """Activation patching: the clean run's activation at one position put into the corrupted run."""
    ours, bridge, clean, corrupted = both
    with torch.no_grad():
        _, mine_clean = ours.run_with_cache(clean, names_filter=name)
        _, their_clean = bridge.run_with_cache(clean, names_filter=lambda n: n == name)

        def patch_from(cache):
            def fn(x, hook):
                x = x.clone()
                x[:, 4] = cache[name][:, 4]
                return x
            return fn

        mine = ours.run_with_hooks(corrupted, fwd_hooks=[(name, patch_from(mine_clean))])
        theirs = bridge.run_with_hooks(corrupted, fwd_hooks=[(name, patch_from(their_clean))])
        unpatched = ours(corrupted)
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    assert (mine - unpatched).abs().max() > 1e-3


def test_grouped_query_keys_and_values_as_transformer_lens_holds_them(tmp_path):
    """A random Llama (4 query heads on 2 key/value heads): hook_k / hook_v hold one entry per key/value head in both
    ([batch, pos, 2, d_head]), hook_rot_q / hook_rot_k the rotated ones, with the same values; an edit of key/value
    head 1 gives the same logits."""
    from transformer_lens.model_bridge import TransformerBridge

    gpt2 = random_gpt2_dir(tmp_path / "gpt2", TEXTS, n_layer=1)  # (its tokenizer, saved beside the Llama)
    slow = transformers.GPT2TokenizerFast(vocab_file=str(gpt2 / "vocab.json"), merges_file=str(gpt2 / "merges.txt"))
    path = tmp_path / "llama"
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=300, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    slow.save_pretrained(path)
    hf = transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf,
                                                 tokenizer=transformers.AutoTokenizer.from_pretrained(path)).eval()
    ours, _, _ = load_model(path)
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    names = [f"blocks.1.attn.hook_{n}" for n in ("q", "k", "v", "rot_q", "rot_k", "z")]
    with torch.no_grad():
        _, mine = ours.run_with_cache(ids, names_filter=names)
        _, theirs = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
        edit = [("blocks.1.attn.hook_v", _ablate_value_head(1))]
        edited, their_edited = ours.run_with_hooks(ids, fwd_hooks=edit), bridge.run_with_hooks(ids, fwd_hooks=edit)
    assert mine["blocks.1.attn.hook_k"].shape == theirs["blocks.1.attn.hook_k"].shape == (2, 9, 2, 8)
    for name in names:
        torch.testing.assert_close(mine[name], theirs[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(edited, their_edited, atol=ATOL, rtol=0)
