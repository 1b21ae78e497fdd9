"""The example notebook runs in a real kernel (nbclient + ipykernel) and every view shows inline: figures as PNG,
the attention page as a sandboxed iframe that draws itself — checked by opening the outputs in headless Chromium."""

import base64
import html
import json
import os
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from browser import Browser  # noqa: E402

import builder  # noqa: E402
from builder.checkpoint import save_export  # noqa: E402
from builder.config.plain import to_plain  # noqa: E402
from builder.data.adjectives import VOCABULARY  # noqa: E402
from builder.data.tokenizers import WordTokenizer  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "lecture_views.ipynb"


def outputs_page(nb) -> str:
    """The executed notebook's outputs as one HTML page, as a notebook front end shows them; the page's messages
    (the embedded attention page says when it is drawn) are collected in ``window.__messages``."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>notebook outputs</title><script>",
             "window.__messages = []; window.addEventListener('message', e => window.__messages.push(e.data));",
             "</script></head><body>"]
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/html" in data:
                parts.append(f"<div class='output html'>{data['text/html']}</div>")
            elif "image/png" in data:
                parts.append(f"<div class='output'><img src='data:image/png;base64,{data['image/png']}'></div>")
            elif "text" in out:
                parts.append(f"<pre>{html.escape(out['text'])}</pre>")
    return "".join(parts + ["</body></html>"])


def test_example_notebook_shows_every_view(tmp_path):
    tok = WordTokenizer.from_text(" ".join(VOCABULARY))
    cfg = builder.compose(["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.context_length=32",
                           f"model.vocab_size={tok.vocab_size}"]).model
    torch.manual_seed(0)
    export = save_export(builder.build_model(cfg), tok, to_plain(cfg), tmp_path / "export")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    os.environ["HYDRAFORMER_MODEL"] = str(export)
    try:
        client.execute()
    finally:
        os.environ.pop("HYDRAFORMER_MODEL", None)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    shown = [o.get("data", {}) for c in code[1:] for o in c.outputs if o.output_type == "execute_result"]
    pngs = [d for d in shown if "image/png" in d]
    pages = [d for d in shown if "text/html" in d and "<iframe" in d["text/html"]]
    assert len(pngs) == 6 and len(pages) == 1  # patterns, nearest, map, context, lens, attribution; the page
    for d in pngs:
        assert base64.b64decode(d["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'sandbox="allow-scripts"' in pages[0]["text/html"] and "http" not in pages[0]["text/html"].split("srcdoc")[0]
    out = tmp_path / "outputs.html"
    out.write_text(outputs_page(nb), encoding="utf-8")
    with Browser() as browser:
        browser.open(out.as_uri())
        browser.wait_for("window.__messages.some(m => m && m.hydraformer)", timeout=20)
        messages = browser.eval("JSON.stringify(window.__messages)")
        images = browser.eval("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert not browser.errors, browser.errors
    states = [m["hydraformer"] for m in json.loads(messages) if isinstance(m, dict) and "hydraformer" in m]
    assert states == ["ready"], messages  # drawn inside its sandbox, no script error
    assert images == [True] * 6
