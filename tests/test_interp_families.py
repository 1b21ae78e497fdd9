"""Seeing inside every decoder family (issue 13): capture, head scores, pictures and the page on Llama-, Mistral-,
Qwen-, Pythia- and Gemma-shaped models, grouped-query heads labelled with the key/value head they share,
sliding-window layers showing their band, and a 1,024-token Llama-shaped page driven in a real Chromium.

Real torch models built from the presets (shrunk), real Chromium (tests/browser.py); nothing is mocked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from browser import Browser

import builder
from builder.data.tokenizers import CharTokenizer
from builder.errors import ConfigError
from builder.interp.capture import describe_grid, head_layout, record
from builder.interp.heads import format_table, score_heads
from builder.interp.page import attention_page_data, write_attention_html
from builder.interp.pictures import score_label, write_attention_pictures

READY = "document.body.dataset.ready === '1' || document.body.dataset.ready === 'error'"
SMALL = ["model.d_model=64", "model.n_layers=2", "model.n_heads=8", "model.d_head=8", "model.vocab_size=64",
         "model.context_length=64", "model.mlp.hidden=96"]
# each family's preset, shrunk; grouped-query families keep 2 key/value heads for 8 query heads
FAMILIES = {
    "llama2_7b": ["model.attention.n_kv_heads=8"],  # grouped_query with one K/V head per query head: multi-head
    "llama3_8b": ["model.attention.n_kv_heads=2"],
    "mistral_7b": ["model.attention.n_kv_heads=2", "model.mask.window=4"],
    "qwen2_7b": ["model.attention.n_kv_heads=2"],
    "qwen3_8b": ["model.attention.n_kv_heads=2"],
    "pythia_160m": [],
    "gemma2_2b": ["model.attention.n_kv_heads=2", "model.mask.window=4"],
}
# what each layer's mask reads as (2 layers)
NOTES = {"mistral_7b": ["band 4", "band 4"], "gemma2_2b": ["band 4", "causal"]}


def family(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = builder.build_model(builder.compose([f"model={name}", *SMALL, *FAMILIES[name]]).model)
    with torch.no_grad():  # Gemma's (1 + w) norm gains start at w = 0: give every parameter some spread
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def llama_shaped(n_layers: int = 2, n_heads: int = 8, n_kv_heads: int = 2, context: int = 1024, mask=None):
    """Rotary, RMSNorm, SwiGLU, grouped-query attention, no biases, untied: built from a plain config dict."""
    cfg = {"d_model": 8 * n_heads, "n_layers": n_layers, "n_heads": n_heads, "d_head": None, "vocab_size": 256,
           "context_length": context, "bias": False, "tie_embeddings": False, "dropout": 0.0,
           "embedding": {"name": "rotary"}, "attention": {"name": "grouped_query", "n_kv_heads": n_kv_heads},
           "mask": mask or {"name": "causal"}, "mlp": {"name": "swiglu"}, "norm": {"name": "rmsnorm"}}
    torch.manual_seed(0)
    return builder.build_model(cfg).eval()


@pytest.fixture(scope="module")
def browser():
    with Browser(width=1280, height=900) as b:
        yield b


def open_page(b: Browser, path) -> None:
    b.open(path.resolve().as_uri(), timeout=60)
    state = b.wait_for(READY + " ? document.body.dataset.ready : ''", timeout=60)
    info = b.eval("document.getElementById('info').textContent")
    assert state == "1", f"page failed to render: {info}; {b.errors}"


# ------------------------------------------------------------------------------- every family, no browser


@pytest.mark.parametrize("name", list(FAMILIES))
def test_capture_sees_every_family_as_the_fused_path_computes_it(name):
    """Capturing changes no logit; patterns are softmax rows, zero where masked; K/V shared within each group;
    each layer's mask reads as the family's rule; the head table has a kv column; the page data describes both."""
    model = family(name)
    ids = torch.randint(64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = model(ids)
        rec = record(model, ids)
        with builder.capture_attention(model):
            explicit = model(ids)
    torch.testing.assert_close(explicit, fused, atol=2e-5, rtol=1e-4)
    attn = model.blocks[0].attention
    n_heads, n_kv = attn.n_heads, getattr(attn, "n_kv_heads", attn.n_heads)
    assert head_layout(model) == [(n_heads, n_kv)] * 2
    notes = NOTES.get(name, ["causal", "causal"])
    for layer in range(2):
        p = rec.pattern(layer)
        assert p.shape == (2, n_heads, 12, 12)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, n_heads, 12))
        assert rec.mask_note(layer) == notes[layer] == describe_grid(rec.mask(layer)[0, 0])
        assert (p[0][:, ~rec.mask(layer)[0, 0]] == 0).all()
        assert rec.n_kv_heads(layer) == n_kv
        for h in range(n_heads):
            kv = rec.kv_head(layer, h)
            assert kv == h // (n_heads // n_kv) and h in rec.sharing(layer, h)
            for mate in rec.sharing(layer, h):  # the heads of one group read the very same keys and values
                assert torch.equal(rec.k(layer)[:, mate], rec.k(layer)[:, h])
                assert torch.equal(rec.v(layer)[:, mate], rec.v(layer)[:, h])
    if n_kv < n_heads:
        assert not torch.equal(rec.k(0)[:, 0], rec.k(0)[:, n_heads - 1])
    assert ("× 0.0625, capped: 50·tanh(s/50)" in score_label(attn)) == (name == "gemma2_2b")  # query_scale, softcap

    scores = score_heads(model, None)
    table = format_table(scores)
    assert table.splitlines()[0].split()[:6] == ["pattern", "rank", "layer", "head", "kv", "score"]
    assert any(line.startswith("adjective_noun skipped: the model carries no tokenizer") for line in table.splitlines())
    for e in scores["previous_token"]:
        assert (e["kv_head"], e["kv_shared"]) == (e["head"] // (n_heads // n_kv), n_heads // n_kv)
    if n_kv == n_heads:
        assert " own " in table and "(heads" not in table
    else:
        assert "1 (heads 4-7)" in table or "0 (heads 0-3)" in table

    patterns = torch.stack([rec.pattern(layer)[0] for layer in range(2)])
    masks = torch.stack([rec.mask(layer)[0, 0] for layer in range(2)])
    data = attention_page_data([str(i) for i in range(12)], patterns, masks, kv_heads=head_layout(model))
    assert data["groups"] == [[n_heads, n_kv]] * 2 and data["notes"] == notes


def test_band_on_sixteen_tokens_in_the_pictures_and_the_page(browser, tmp_path):
    """Mistral-style sliding window and GPT-3 alternating layers (window 4) on 16 tokens: the pictures and the page
    say which layer is banded, the page greys the cells outside the band, and grouped heads list their mates."""
    b = browser
    text = "abcdefghijklmnop"
    tok = CharTokenizer(text)
    for mask, bands in (({"name": "sliding_window", "window": 4}, [True, True]),
                        ({"name": "alternating", "window": 4}, [False, True])):
        model = llama_shaped(context=64, mask=mask)
        out = tmp_path / mask["name"]
        if mask["name"] == "alternating":  # what task=attend writes (the pictures take a while: one family only)
            files = write_attention_pictures(model, tok, text, out, heads=[5, 6], title="llama-ish")
            assert any("8 query heads share 2 key/value heads (4 each)" in line for line in files["summary"])
            assert "masks: layer 0 causal, layer 1 band 4" in files["summary"]
            assert (out / "patterns.png").stat().st_size > 5000 and (out / "head_L1_H5.png").exists()
            page = files["html"]
        else:  # the page alone, from a record: notes read off the model's rule
            rec = record(model, torch.tensor([tok.encode(text)]))
            page = write_attention_html(out / "attention.html", list(text),
                                        torch.stack([rec.pattern(i)[0, 5:7] for i in range(2)]),
                                        torch.stack([rec.mask(i)[0, 0] for i in range(2)]), layer_ids=[0, 1],
                                        head_ids=[5, 6], kv_heads=head_layout(model),
                                        layer_notes=[rec.mask_note(i) for i in range(2)])
        open_page(b, page)
        options = b.eval("[...document.querySelectorAll('#layer option')].map(o => o.textContent)")
        assert options == [f"layer {i}" + (" · band 4" if band else "") for i, band in enumerate(bands)]
        for layer, band in enumerate(bands):
            state = b.eval(f"__hf.select({layer}, 5)")
            assert state["note"] == ("band 4" if band else "causal")
            assert (state["kv"], state["mates"], state["grouped"]) == (1, [4, 5, 6, 7], True)
            assert b.eval("__hf.cell(10, 7)")["masked"] is False
            assert b.eval("__hf.cell(10, 6)")["masked"] is band  # 4 back: outside a band of 4
            assert b.eval("__hf.cell(10, 11)")["masked"] is True
            line = b.eval("document.getElementById('kv').textContent")
            assert "shared by query heads 4, 5, 6, 7" in line
            assert ("band 4" in line) is band
        # the band's masked cells are grey on the heatmap: a cell outside the band vs. one inside it
        b.eval("__hf.select(1, 5)")
        grey = b.eval("""(() => {
            const c = document.getElementById('heat'), ctx = c.getContext('2d');
            const s = c.width / c.getBoundingClientRect().width, o = c.getBoundingClientRect();
            const at = (q, k) => { const r = __hf.cellRect(q, k);
              return [...ctx.getImageData(Math.round((r.x - o.left) * s), Math.round((r.y - o.top) * s), 1, 1).data]; };
            return {out: at(12, 2), inside: at(12, 11)};
        })()""")
        r, g, bl, _ = grey["out"]
        assert max(r, g, bl) - min(r, g, bl) < 16 and r < 250, grey  # grey (hatched), not white or blue
        assert grey["inside"][2] - grey["inside"][0] > 20, grey  # an allowed cell with weight: blue
        # head options carry the key/value head; a mate in the kv line is a link to that head (a real click)
        assert b.eval("[...document.querySelectorAll('#head option')].map(o => o.textContent)") == [
            "head 5 · kv 1", "head 6 · kv 1"]
        b.click(*b.center_of("document.querySelector('#kv .mate[data-head=\"6\"]')"))
        assert b.eval("__hf.state().head") == 6
        assert b.eval("[...document.querySelectorAll('#kv .mate.absent')].map(e => e.textContent)") == ["4", "7"]
        b.eval("__hf.view('grid')")
        assert b.eval("[...document.querySelectorAll('#grid figure.kvmate')].map(f => f.dataset.id)") == ["5"]
        assert b.eval("document.querySelector('#grid figure.current figcaption').textContent").endswith("head 6 · kv 1")
        b.eval("__hf.view('single')")
    assert b.errors == []


def test_multi_head_page_says_kv_own(browser, tmp_path):
    """A GPT-2-style model: no kv labels on the heads, one line saying every head has its own keys and values."""
    b = browser
    model = builder.build_model(builder.compose(["model=tiny", "model.n_layers=1", "model.d_model=32",
                                                 "model.n_heads=2", "model.vocab_size=20"]).model).eval()
    ids = torch.arange(6)[None]
    rec = record(model, ids)
    path = write_attention_html(tmp_path / "mha.html", list("abcdef"), rec.pattern(0)[0][None],
                                rec.mask(0)[0, 0] if rec.mask(0) is not None else None, kv_heads=head_layout(model))
    open_page(b, path)
    assert b.eval("[...document.querySelectorAll('#head option')].map(o => o.textContent)") == ["head 0", "head 1"]
    assert b.eval("document.getElementById('kv').textContent").startswith("head 0: kv = own")
    assert b.eval("__hf.hover(3)").startswith("layer 0, head 0 · token #3")
    assert b.errors == []


# -------------------------------------------------------------------- 1,024 tokens of a Llama-shaped model


@pytest.mark.timeout(180)
def test_a_thousand_tokens_of_a_llama_shaped_model_in_the_page(browser, tmp_path):
    """Every head of a 2-layer, 8-head (2 K/V heads) Llama-shaped model on 1,024 tokens: the page renders without
    a script error, selecting a head relabels everything, hovering works deep in the input, cells are exact."""
    b = browser
    T = 1024
    model = llama_shaped()
    ids = torch.randint(256, (1, T), generator=torch.Generator().manual_seed(3))
    rec = record(model, ids)
    patterns = torch.stack([rec.pattern(layer)[0] for layer in range(2)])
    masks = torch.stack([rec.mask(layer)[0, 0] for layer in range(2)])
    path = write_attention_html(tmp_path / "llama.html", [f" t{i}" for i in range(T)], patterns, masks,
                                kv_heads=head_layout(model), layer_notes=[rec.mask_note(i) for i in range(2)])
    assert path.stat().st_size < 12e6
    open_page(b, path)
    assert b.eval("__hf.state()")["T"] == T
    state = b.eval("__hf.select(1, 6)")
    assert (state["layer"], state["head"], state["kv"], state["mates"]) == (1, 6, 1, [4, 5, 6, 7])
    assert b.eval("document.getElementById('head').value") == "6"
    assert b.eval("document.getElementById('head').selectedOptions[0].textContent") == "head 6 · kv 1"
    info = b.eval("__hf.hover(700)")
    assert info.startswith("layer 1, head 6 · kv 1 · token #700") and '" t700"' in info
    p = patterns[1, 6].numpy()
    for k in (0, 350, 699, 700):
        cell = b.eval(f"__hf.cell(700, {k})")
        assert not cell["masked"] and abs(cell["weight"] - p[700, k]) < 2e-5
    assert b.eval("__hf.cell(700, 701)")["masked"] is True
    # a real mouse hover on a token deep in the strip, then the grid of all heads with the group marked
    b.mouse_move(*b.center_of("document.querySelectorAll('#tokens .tok')[900]"))
    assert '" t900"' in b.eval("__hf.info()")
    b.eval("__hf.view('grid')")
    assert b.eval("document.querySelectorAll('#grid canvas').length") == 8
    assert b.eval("[...document.querySelectorAll('#grid figure.kvmate')].map(f => +f.dataset.head)") == [4, 5, 7]
    b.click(*b.center_of("document.querySelectorAll('#grid figure')[2]"))
    assert b.eval("[__hf.state().head, __hf.state().kv, __hf.state().view]") == [2, 0, "single"]
    assert b.errors == []


def test_page_data_refuses_kv_layouts_that_do_not_fit():
    p = np.full((1, 2, 3, 3), 1 / 3, dtype=np.float32)
    with pytest.raises(ValueError, match="must divide"):
        attention_page_data(list("abc"), p, kv_heads=(8, 3))
    with pytest.raises(ValueError, match="not a head"):
        attention_page_data(list("abc"), p, head_ids=[0, 9], kv_heads=(8, 2))
    with pytest.raises(ValueError, match="2 entries but patterns have 1"):
        attention_page_data(list("abc"), p, kv_heads=[(8, 2), (8, 2)])
    d = attention_page_data(list("abc"), p, head_ids=[4, 5], kv_heads=[(8, 2)])
    assert d["groups"] == [[8, 2]] and d["notes"] == [""]


def test_a_page_too_big_to_stay_responsive_is_refused_before_recording(tmp_path):
    """2 layers x 8 heads on 2,100 tokens is over the page's budget: refused with what to choose, nothing written."""
    model = llama_shaped(context=4096)
    text = ("abcdefghij" * 210)[:2100]
    with pytest.raises(ConfigError, match=r"layers=\[\.\.\.\] heads=\[\.\.\.\]"):
        write_attention_pictures(model, CharTokenizer("abcdefghij"), text, tmp_path / "big")
    assert not (tmp_path / "big").exists()
