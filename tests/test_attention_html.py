"""The attention page (builder/interp/page.py), driven in a real headless Chromium (tests/browser.py).

Needs Debian's chromium package at /usr/bin/chromium; without it these tests fail and say how to
install it (they do not skip).
"""

from __future__ import annotations

import json
import re
import struct
import time

import numpy as np
import pytest
import torch
from browser import INSTALL_HINT, Browser, BrowserError, find_chromium

from builder.interp.page import attention_page_data, write_attention_html

PHRASE = "a fluffy blue creature roamed the verdant forest".split()
READY = "document.body.dataset.ready === '1' || document.body.dataset.ready === 'error'"


def causal_patterns(L: int, H: int, T: int, seed: int = 0, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Causal softmax of random scores: ([L, H, T, T] float32 patterns, [T, T] bool mask)."""
    rng = np.random.default_rng(seed)
    mask = np.tril(np.ones((T, T), dtype=bool))
    scores = np.where(mask, rng.normal(size=(L, H, T, T)).astype(np.float32) * scale, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32), mask


@pytest.fixture
def browser():
    missing = None
    try:
        find_chromium()
    except BrowserError as err:
        missing = str(err)
    if missing:
        pytest.fail(f"{missing}\nThe project's test command must install it first: {INSTALL_HINT}", pytrace=False)
    with Browser(width=1280, height=900) as b:
        yield b


def open_page(b: Browser, path, timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    b.open(path.resolve().as_uri(), timeout=timeout)
    state = b.wait_for(READY + " ? document.body.dataset.ready : ''", timeout=timeout)
    info = b.eval("document.getElementById('info').textContent")
    assert state == "1", f"page failed to render: {info}; {b.errors}"
    return time.monotonic() - t0


def span_weights(b: Browser) -> list:
    return b.eval("[...document.querySelectorAll('#tokens .tok')].map(s => s.dataset.w === undefined ? null : s.dataset.w)")


def assert_png(path, min_bytes: int = 5000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert len(data) > min_bytes, f"PNG is only {len(data)} bytes"
    from PIL import Image  # matplotlib's dependency

    with Image.open(path) as im:
        im.load()
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50, "screenshot is nearly blank"
    return w, h


@pytest.mark.timeout(120)
def test_lecture_phrase_hover_masks_heads_and_screenshot(browser, tmp_path):
    b = browser
    p, mask = causal_patterns(2, 3, len(PHRASE))
    path = write_attention_html(tmp_path / "attention.html", PHRASE, torch.from_numpy(p),
                                masks=torch.from_numpy(np.broadcast_to(mask, (2, 1, 8, 8)).copy()), title="Lecture phrase")
    assert path == tmp_path / "attention.html" and not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"
    open_page(b, path)
    assert b.eval("window.__hf.ready") is True
    assert b.eval("[...document.querySelectorAll('#tokens .tok .t')].map(s => s.textContent)") == PHRASE

    assert b.eval("__hf.select(1, 2)")["head"] == 2
    assert b.eval("[document.getElementById('layer').value, document.getElementById('head').value]") == ["1", "2"]

    # hover "creature" with real mouse events at its span
    creature = PHRASE.index("creature")
    b.mouse_move(1, 1)
    b.mouse_move(*b.center_of(f"document.querySelectorAll('#tokens .tok')[{creature}]"))
    assert b.eval("__hf.state().hover") == creature
    row = p[1, 2, creature]
    shown = span_weights(b)
    for k, w in enumerate(shown):
        if k <= creature:
            assert w is not None and abs(float(w) - row[k]) <= 5e-4 + 1e-6, (k, w, row[k])
        else:
            assert w == "masked", (k, w)
    info = b.eval("__hf.info()")
    assert "layer 1, head 2" in info and '"creature"' in info
    pairs = re.findall(r'"creature" → "(\w+)" (\d\.\d{3})', info)
    assert pairs, info
    for key, w in pairs:
        assert abs(float(w) - row[PHRASE.index(key)]) <= 5e-4 + 1e-6, (key, w)
    assert pairs[0][0] == PHRASE[int(np.argmax(row))], "the info line should list the strongest key first"
    # its column: who looks at "creature"
    col = p[1, 2, :, creature]
    by = b.eval("[...document.querySelectorAll('#tokens .tok')].map(s => s.dataset.by || null)")
    for q, w in enumerate(by):
        if col[q] >= 5e-4:
            assert w is not None and abs(float(w) - col[q]) <= 5e-4 + 1e-6, (q, w, col[q])
    shot = b.screenshot(tmp_path / "attention.png")
    assert assert_png(shot) == (1280, 900)

    # masked cell (query 0 "a", key 7 "forest"): in the strip, in the page's data and on the canvas
    b.mouse_move(*b.center_of("document.querySelectorAll('#tokens .tok')[0]"))
    assert span_weights(b)[7] == "masked"
    assert b.eval("__hf.cell(0, 7)") == {"weight": 0, "masked": True}
    r = b.eval("__hf.cellRect(0, 7)")
    b.mouse_move(r["x"], r["y"])
    assert '"a" → "forest" masked' in b.eval("__hf.info()")
    r2 = b.eval("__hf.cellRect(7, 0)")
    b.mouse_move(r2["x"], r2["y"])
    assert f'"forest" → "a" {p[1, 2, 7, 0]:.3f}' in b.eval("__hf.info()")
    cells = b.eval("""(() => {
        const c = document.getElementById('heat'), ctx = c.getContext('2d'), s = c.width / c.getBoundingClientRect().width;
        const box = (q, k) => { const r = __hf.cellRect(q, k), o = c.getBoundingClientRect(), h = r.size * 0.35;
          const d = ctx.getImageData(Math.round((r.x - o.left - h) * s), Math.round((r.y - o.top - h) * s),
                                     Math.round(2 * h * s), Math.round(2 * h * s)).data;
          const m = [0, 0, 0]; for (let i = 0; i < d.length; i += 4) { m[0] += d[i]; m[1] += d[i + 1]; m[2] += d[i + 2]; }
          const n = d.length / 4; return m.map(v => v / n); };
        return {masked: box(0, 7), top: box(2, 2)};
    })()""")
    mr, mg, mb = cells["masked"]
    assert max(mr, mg, mb) - min(mr, mg, mb) < 12 and 120 < mr < 245, f"masked cell should be hatched grey: {cells}"
    tr, tg, tb = cells["top"]
    assert tb - tr > 60, f"a heavy-weight cell should be blue: {cells}"

    # all heads of layer 1: H small canvases; clicking one selects that head
    b.click(*b.center_of("document.getElementById('view')"))
    assert b.eval("__hf.state().view") == "grid"
    assert b.eval("document.querySelectorAll('#grid canvas').length") == 3
    assert b.eval("[...document.querySelectorAll('#grid canvas')].every(c => c.getBoundingClientRect().width > 50)")
    b.screenshot(tmp_path / "attention_heads.png")
    b.click(*b.center_of("document.querySelectorAll('#grid figure')[0]"))
    assert b.eval("[__hf.state().layer, __hf.state().head, __hf.state().view]") == [1, 0, "single"]
    assert b.eval("document.getElementById('head').value") == "0"
    assert b.errors == []


@pytest.mark.timeout(120)
def test_token_text_is_escaped(browser, tmp_path):
    b = browser
    tokens = ["<script>window.__pwned=1</script>", "</script><b>x</b>", "a & b", '"q"', "<!--", "\u00e9\u2028z", " sp",
              "<script>"]
    p, mask = causal_patterns(1, 2, len(tokens), seed=1)
    title = "</title><script>window.__pwned=2</script>"
    path = write_attention_html(tmp_path / "esc.html", tokens, p, masks=mask[None], title=title)
    text = path.read_text(encoding="utf-8")
    assert "window.__pwned=1</script>" not in text and "</script><b>" not in text and "<script>window" not in text
    open_page(b, path)
    assert b.eval("typeof window.__pwned") == "undefined"
    assert b.eval("[...document.querySelectorAll('#tokens .tok .t')].map(s => s.textContent)") == tokens
    assert b.eval("[...document.querySelectorAll('b')].filter(e => e.textContent === 'x').length") == 0
    assert b.eval("document.getElementById('title').textContent") == title
    assert b.eval("document.title") == title
    b.mouse_move(*b.center_of("document.querySelectorAll('#tokens .tok')[1]"))
    assert json.dumps("</script><b>x</b>") in b.eval("__hf.info()")
    assert b.eval("typeof window.__pwned") == "undefined"
    assert b.errors == []


@pytest.mark.timeout(180)
def test_long_input_stays_responsive(browser, tmp_path):
    b = browser
    T, L, H = 1024, 2, 4
    p, mask = causal_patterns(L, H, T, seed=2, scale=3.0)
    path = write_attention_html(tmp_path / "long.html", [f" tok{i}" for i in range(T)], p, masks=np.broadcast_to(mask, (L, T, T)))
    size = path.stat().st_size
    assert size < 8e6, f"page is {size / 1e6:.1f} MB"  # deflated byte planes (raw uint16 base64 was 11 MB)
    took = open_page(b, path, timeout=30)
    assert took < 10, f"page took {took:.1f}s to become ready"

    timing = b.eval("""(() => { __hf.select(1, 3); const t0 = performance.now(); __hf.hover(700); const info = __hf.info();
        return {ms: performance.now() - t0, info: info}; })()""")
    assert timing["ms"] < 1000, timing
    assert '" tok700"' in timing["info"]
    for k in (0, 350, 699, 700):
        cell = b.eval(f"__hf.cell(700, {k})")
        assert not cell["masked"] and abs(cell["weight"] - p[1, 3, 700, k]) < 1e-4
    assert b.eval("__hf.cell(700, 701)")["masked"] is True

    # a real mouse hover on a token deep in the strip: event in, info out
    x, y = b.center_of("document.querySelectorAll('#tokens .tok')[900]")
    t0 = time.monotonic()
    b.mouse_move(x, y)
    info = b.eval("__hf.info()")
    round_trip = time.monotonic() - t0
    assert '" tok900"' in info and round_trip < 1.0, (round_trip, info[:200])
    assert span_weights(b)[1000] == "masked"

    ms = b.eval("(() => { const t0 = performance.now(); __hf.view('grid'); return performance.now() - t0; })()")
    assert ms < 3000 and b.eval("document.querySelectorAll('#grid canvas').length") == H
    ms = b.eval("(() => { const t0 = performance.now(); __hf.select(0, 1); __hf.view('single');"
                " return performance.now() - t0; })()")
    assert ms < 2000
    assert b.errors == []


def test_page_is_offline_and_compact(tmp_path):
    p, mask = causal_patterns(2, 3, len(PHRASE))
    path = write_attention_html(tmp_path / "a.html", PHRASE, p, masks=np.broadcast_to(mask, (2, 8, 8)))
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text), "the page must not reference anything online"
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link\b|@import|url\(", text, re.I)
    assert text.count('<script type="application/json" id="hf-data">') == 1
    # no mask given: cells that are zero in every head are not stored, and are weights (0), not masked cells
    d = attention_page_data(PHRASE, p)
    assert d["masked"] is False and d["keep"][0] is not None
    dm = attention_page_data(PHRASE, p, masks=mask)
    assert dm["masked"] is True


def test_ids_and_bad_input(tmp_path):
    p, mask = causal_patterns(2, 3, 4)
    d = attention_page_data(["a", "b", "c", "d"], p, layer_ids=[5, 11], head_ids=[0, 4, 7])
    assert d["layer_ids"] == [5, 11] and d["head_ids"] == [0, 4, 7]
    with pytest.raises(ValueError, match="tokens"):
        write_attention_html(tmp_path / "x.html", ["a", "b"], p)
    with pytest.raises(ValueError, match="layer_ids"):
        attention_page_data(list("abcd"), p, layer_ids=[0])
    bad = p.copy()
    bad[0, 0, 0, 3] = 0.5
    with pytest.raises(ValueError, match="masks forbid"):
        attention_page_data(list("abcd"), bad, masks=mask)
    with pytest.raises(ValueError, match="shape"):
        attention_page_data(list("abcd"), p[0, 0])
    assert not (tmp_path / "x.html").exists()


@pytest.mark.timeout(60)
def test_subset_of_layers_and_heads_shows_real_ids(browser, tmp_path):
    b = browser
    p, mask = causal_patterns(2, 2, 5)
    path = write_attention_html(tmp_path / "ids.html", list("abcde"), p, masks=mask, layer_ids=[3, 9], head_ids=[2, 6])
    open_page(b, path)
    assert b.eval("[...document.querySelectorAll('#layer option')].map(o => o.textContent)") == ["layer 3", "layer 9"]
    assert b.eval("__hf.select(9, 6)")["head"] == 6
    assert b.eval("__hf.hover(4)").startswith("layer 9, head 6")
    assert b.eval("__hf.cell(4, 2)")["weight"] == pytest.approx(float(p[1, 1, 4, 2]), abs=1e-4)
    assert b.errors == []


@pytest.mark.timeout(60)
def test_without_masks_and_medium_length(browser, tmp_path):
    """No masks: cells are weights (0 is white, never 'masked'); T=100 draws one pixel block per cell without labels."""
    b = browser
    T = 100
    p, _ = causal_patterns(1, 2, T, seed=3)
    path = write_attention_html(tmp_path / "nomask.html", [f"w{i}" for i in range(T)], p)
    open_page(b, path)
    assert b.eval("__hf.cell(0, 50)") == {"weight": 0, "masked": False}
    b.eval("__hf.select(0, 1)")
    r = b.eval("__hf.cellRect(60, 20)")
    b.mouse_move(r["x"], r["y"])
    assert f'"w60" → "w20" {p[0, 1, 60, 20]:.3f}' in b.eval("__hf.info()")
    b.mouse_move(*b.center_of("document.querySelectorAll('#tokens .tok')[10]"))
    weights = span_weights(b)
    assert "masked" not in weights and all(float(w or 0) == 0 for w in weights[11:])
    assert float(weights[3]) == pytest.approx(p[0, 1, 10, 3], abs=6e-4)
    assert b.errors == []
