"""The example notebook runs in a real kernel (nbclient + ipykernel) and every view shows inline: figures as PNG,
the attention page as a sandboxed iframe that draws itself — checked by opening the outputs in headless Chromium."""

import base64
import html
import json
import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from browser import Browser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "lecture_views.ipynb"


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


def fresh_clone(root: Path) -> Path:
    """``root/repo``: this checkout as a fresh clone has it — every top-level entry linked, except ``outputs/`` (no
    model trained yet) and ``examples/``, whose notebooks are copied (a kernel started from their folder writes
    there). Returns the examples folder."""
    clone = root / "repo"
    clone.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("outputs", "examples", ".git") and not entry.name.startswith("."):
            (clone / entry.name).symlink_to(entry)
    (clone / "examples").mkdir()
    for notebook in (REPO / "examples").glob("*.ipynb"):
        shutil.copy(notebook, clone / "examples" / notebook.name)
    return clone / "examples"


def run_notebook(path: Path, monkeypatch, timeout: int = 600):
    """Execute the notebook at ``path`` as a person opening it does: a python3 kernel started in its own folder,
    with no HYDRAFORMER_* variable set. Returns the executed notebook; an error in any cell fails the test."""
    for name in [k for k in os.environ if k.startswith("HYDRAFORMER")]:
        monkeypatch.delenv(name)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


@pytest.mark.slow
def test_example_notebook_shows_every_view(tmp_path, monkeypatch):
    """From a fresh clone, nothing set: the notebook trains the small model it needs (300 steps; about 15 s on an
    idle 2-core CPU, most of this test's time) into the clone's outputs/, then shows every view."""
    examples = fresh_clone(tmp_path)
    nb = run_notebook(examples / NOTEBOOK.name, monkeypatch)
    trained = tmp_path / "repo" / "outputs" / "notebook" / "adjective_head" / "checkpoints" / "last.ckpt"
    assert trained.is_file()
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    assert "outputs/notebook/adjective_head/checkpoints/last.ckpt: 2 layers x 4 heads" in printed
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    warned = [o["text"] for c in code for o in c.outputs if o.output_type == "stream" and "CrowdedText" in o["text"]]
    assert not warned, warned  # every figure's text laid out (builder.figures)
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
