"""Each component against a plain hand-written reference on tiny shapes."""

import math

import pytest
import torch

import components
from components import AttentionMask, get
from components.positions import Positions

torch.manual_seed(0)


def test_registry_lists_every_kind():
    assert set(components.names("embedding")) >= {"learned", "sinusoidal", "rotary", "none"}
    assert set(components.names("attention")) >= {"multi_head", "grouped_query"}
    assert set(components.names("mask")) >= {"causal", "none", "sliding_window", "alternating", "prefix"}
    assert set(components.names("mlp")) >= {"gelu", "swiglu", "relu"}
    assert set(components.names("norm")) >= {"layernorm", "rmsnorm"}


def test_unknown_name_lists_names_and_closest():
    with pytest.raises(components.RegistryError) as err:
        get("attention", "multihead")
    assert "multi_head" in str(err.value) and "did you mean 'multi_head'" in str(err.value)
    assert "grouped_query" in str(err.value)
    with pytest.raises(components.RegistryError, match="unknown component kind 'atention'.*attention"):
        get("atention", "multi_head")


def test_duplicate_names_are_refused():
    with pytest.raises(components.RegistryError, match="already registered"):
        components.register("mlp", "gelu")(type("Other", (), {}))


def _reference_attention(x, attn, allowed, rope=None):
    """Per-head loop with explicit matrices: the lecture's steps, written out."""
    b, t, d = x.shape
    h, hkv, dh = attn.n_heads, attn.n_kv_heads, attn.d_head
    w, bias = attn.qkv.weight, attn.qkv.bias
    wq, wk, wv = w[: h * dh], w[h * dh: (h + hkv) * dh], w[(h + hkv) * dh:]
    bq, bk, bv = bias[: h * dh], bias[h * dh: (h + hkv) * dh], bias[(h + hkv) * dh:]
    heads = []
    for i in range(h):
        j = i // (h // hkv)  # the key/value head this query head reads
        q = x @ wq[i * dh:(i + 1) * dh].T + bq[i * dh:(i + 1) * dh]
        k = x @ wk[j * dh:(j + 1) * dh].T + bk[j * dh:(j + 1) * dh]
        v = x @ wv[j * dh:(j + 1) * dh].T + bv[j * dh:(j + 1) * dh]
        if rope is not None:
            q, k = rope(q), rope(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(~allowed, float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    return torch.cat(heads, -1) @ attn.o.weight.T + attn.o.bias


@pytest.mark.parametrize("name,extra", [("multi_head", {}), ("grouped_query", {"n_kv_heads": 2}),
                                        ("grouped_query", {"n_kv_heads": 1})])
def test_attention_matches_reference(name, extra):
    attn = get("attention", name)(d_model=12, n_heads=4, d_head=5, bias=True, **extra)
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    x = torch.randn(2, 7, 12)
    pos = torch.arange(7)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    want = _reference_attention(x, attn, allowed)
    got = attn(x, AttentionMask(None, is_causal=True), Positions(12, 7, 5), pos)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    band = get("mask", "sliding_window")(window=3).allowed(pos, pos, 0)
    got = attn(x, AttentionMask(band[None, None]), Positions(12, 7, 5), pos)
    torch.testing.assert_close(got, _reference_attention(x, attn, band), atol=1e-5, rtol=1e-5)


def test_rotary_matches_reference_and_is_relative():
    rope = get("embedding", "rotary")(d_model=8, context_length=16, d_head=4)
    pos = torch.arange(6)

    def reference(x):  # rotate channel pairs (i, i + half) by pos * base^(-i/half)
        out = x.clone()
        for t in range(x.shape[-2]):
            for i in range(2):
                theta = t * 10000 ** (-i / 2)
                a, b = x[..., t, i], x[..., t, i + 2]
                out[..., t, i] = a * math.cos(theta) - b * math.sin(theta)
                out[..., t, i + 2] = a * math.sin(theta) + b * math.cos(theta)
        return out

    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    rq, rk = rope.rotate(q, k, pos, pos)
    torch.testing.assert_close(rq, reference(q))
    torch.testing.assert_close(rk, reference(k))
    # the score of the same q and k depends only on their distance
    same_q, same_k = q[:, :, :1].expand(1, 2, 6, 4), k[:, :, :1].expand(1, 2, 6, 4)
    rq, rk = rope.rotate(same_q, same_k, pos, pos)
    s = rq @ rk.transpose(-1, -2)
    torch.testing.assert_close(s[..., 3, 1], s[..., 4, 2])
    torch.testing.assert_close(s[..., 5, 0], s[..., 6 - 1, 0])


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rotary_backward_is_the_inverse_rotation(fraction):
    """The turn's written-out backward (the rotation by minus the angle) against autograd of the formula,
    and torch's numerical gradient check in float64."""
    from components.positions import _Turn

    rope = get("embedding", "rotary")(d_model=32, context_length=16, d_head=8, fraction=fraction)
    pos = torch.arange(7)
    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    k = torch.randn(2, 1, 7, 8, requires_grad=True)
    gq, gk = torch.randn(2, 4, 7, 8), torch.randn(2, 1, 7, 8)
    rq, rk = rope.rotate(q, k, pos, pos)
    got = torch.autograd.grad((rq, rk), (q, k), (gq, gk))

    angles = pos.float()[:, None] * rope.inv_freq()[None]
    cos, sin, half, rot = angles.cos(), angles.sin(), rope.rotated // 2, rope.rotated

    def formula(x):  # differentiated op by op
        x1, x2, kept = x[..., :half], x[..., half:rot], x[..., rot:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, kept), dim=-1)

    want = torch.autograd.grad((formula(q), formula(k)), (q, k), (gq, gk))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    cos64, sin64 = (t.double() for t in rope._cos_sin(pos, torch.float64))
    assert torch.autograd.gradcheck(lambda x: _Turn.apply(x, cos64, sin64),
                                    (torch.randn(2, 3, 7, rot, dtype=torch.float64, requires_grad=True),))


def test_learned_and_sinusoidal_positions():
    learned = get("embedding", "learned")(d_model=6, context_length=10, d_head=3)
    x, pos = torch.zeros(1, 4, 6), torch.arange(3, 7)
    torch.testing.assert_close(learned(x, pos)[0], learned.table.weight[3:7])
    sin = get("embedding", "sinusoidal")(d_model=6, context_length=10, d_head=3)
    got = sin(x, pos)[0]
    for t, p in enumerate(range(3, 7)):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert got[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert got[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    none = get("embedding", "none")(d_model=6, context_length=10, d_head=3)
    assert none(x + 1, pos).eq(1).all() and not list(none.parameters())


def _grid(mask, t, layer=0):
    pos = torch.arange(t)
    g = mask.allowed(pos, pos, layer)
    return torch.ones(t, t, dtype=torch.bool) if g is None else g


def test_masks_match_their_definitions():
    t = 6
    cases = {
        "causal": (get("mask", "causal")(), lambda q, k, layer: k <= q),
        "none": (get("mask", "none")(), lambda q, k, layer: True),
        "sliding_window": (get("mask", "sliding_window")(window=2), lambda q, k, layer: 0 <= q - k < 2),
        "alternating": (get("mask", "alternating")(window=2),
                        lambda q, k, layer: k <= q if layer % 2 == 0 else 0 <= q - k < 2),
        "prefix": (get("mask", "prefix")(prefix=3), lambda q, k, layer: k <= q or k < 3),
    }
    for name, (mask, rule) in cases.items():
        for layer in (0, 1):
            want = torch.tensor([[bool(rule(q, k, layer)) for k in range(t)] for q in range(t)])
            assert torch.equal(_grid(mask, t, layer), want), (name, layer)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_window_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="window"):
        get("mask", "sliding_window")(window=bad)


def test_mlps_match_reference():
    x = torch.randn(3, 5, 8)
    gelu = get("mlp", "gelu")(d_model=8)
    h = x @ gelu.fc.weight.T + gelu.fc.bias
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(gelu(x), h @ gelu.proj.weight.T + gelu.proj.bias, atol=1e-5, rtol=1e-5)
    assert gelu.fc.out_features == 32
    relu = get("mlp", "relu")(d_model=8, hidden=10)
    want = torch.clamp(x @ relu.fc.weight.T + relu.fc.bias, min=0) @ relu.proj.weight.T + relu.proj.bias
    torch.testing.assert_close(relu(x), want)
    sw = get("mlp", "swiglu")(d_model=8, bias=False)
    assert sw.gate.out_features == 24  # ceil(8*8/3)=22 -> 24
    g = x @ sw.gate.weight.T
    want = ((g / (1 + torch.exp(-g))) * (x @ sw.up.weight.T)) @ sw.proj.weight.T
    torch.testing.assert_close(sw(x), want, atol=1e-5, rtol=1e-5)


def test_norms_match_reference():
    x = torch.randn(4, 8) * 3 + 1
    ln = get("norm", "layernorm")(d_model=8)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    want = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(ln(x), want * ln.weight + ln.bias, atol=1e-5, rtol=1e-5)
    assert get("norm", "layernorm")(d_model=8, bias=False).bias is None
    rms = get("norm", "rmsnorm")(d_model=8)
    torch.nn.init.normal_(rms.weight)
    want = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * rms.weight
    torch.testing.assert_close(rms(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_written_out_backward_equals_autograd(affine):
    """fp32 CPU training takes RMSNorm's written-out backward; the values and both gradients are autograd's of
    the plain formula, and torch's numerical gradient check passes in float64."""
    from components.norms import _RMSNormCPU

    rms = get("norm", "rmsnorm")(d_model=16)
    if affine:
        torch.nn.init.normal_(rms.weight)
    else:
        rms.weight = None  # as nn.RMSNorm(elementwise_affine=False) has it
    x = (torch.randn(3, 5, 16) * 2 + 0.5).requires_grad_()
    g = torch.randn(3, 5, 16)
    y = rms(x)
    assert type(y.grad_fn).__name__ == "_RMSNormCPUBackward"
    params = (x,) if rms.weight is None else (x, rms.weight)
    got = torch.autograd.grad(y, params, g)
    plain = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * (1 if rms.weight is None else rms.weight)
    torch.testing.assert_close(y, plain, atol=1e-6, rtol=1e-5)
    for a, b in zip(got, torch.autograd.grad(plain, params, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert rms(x).grad_fn is None  # inference: torch's own fused kernel
    x64 = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(8, dtype=torch.float64, requires_grad=True) if affine else None
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormCPU.apply(x, w, 1e-6), (x64, w64))
