"""The example notebook runs in a real kernel (nbclient + ipykernel) and every view shows inline: figures as PNG,
the attention page as a sandboxed iframe that draws itself — checked by opening the outputs in headless Chromium."""

import base64
import html
import json
import os
import re
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
    model trained yet) and ``examples/``, whose notebooks and helper module are copied (a kernel started from
    their folder writes there). Returns the examples folder."""
    clone = root / "repo"
    clone.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("outputs", "examples", ".git") and not entry.name.startswith("."):
            (clone / entry.name).symlink_to(entry)
    (clone / "examples").mkdir()
    for name in [*(REPO / "examples").glob("*.ipynb"), *(REPO / "examples").glob("*.py")]:
        shutil.copy(name, clone / "examples" / name.name)
    return clone / "examples"


def run_notebook(path: Path, timeout: int = 600):
    """Execute the notebook at ``path`` as a person opening it does: a python3 kernel started in its own folder,
    with no HYDRAFORMER_* variable set. Returns the executed notebook (a cell that raises fails the test)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("HYDRAFORMER")]:
            mp.delenv(name)
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def shown_outputs(nb) -> tuple[str, list[dict]]:
    """What the code cells printed (one string), and what they showed (each result's data), after checking that
    no cell failed and no figure warned of its text (builder.figures' CrowdedText)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    printed = "".join(o["text"] for c in code for o in c.outputs if o.output_type == "stream")
    assert "CrowdedText" not in printed, printed
    return printed, [o.get("data", {}) for c in code for o in c.outputs if o.output_type == "execute_result"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """One fresh clone for the notebooks of this module: the first to run trains the model, the next finds it."""
    return fresh_clone(tmp_path_factory.mktemp("clone"))


@pytest.mark.slow
def test_example_notebook_shows_every_view(clone, tmp_path):
    """From a fresh clone, nothing set: the notebook finds or trains the small model it needs (300 steps; about
    15 s on an idle 2-core CPU, most of this test's time) into the clone's outputs/, then shows every view."""
    nb = run_notebook(clone / NOTEBOOK.name)
    assert (clone.parent / "outputs" / "notebook" / "adjective_head" / "checkpoints" / "last.ckpt").is_file()
    printed, shown = shown_outputs(nb)
    assert "outputs/notebook/adjective_head/checkpoints/last.ckpt: 2 layers x 4 heads" in printed
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


@pytest.mark.slow
def test_ablation_and_patching_notebook(clone):
    """The second notebook, from the same fresh clone with nothing set: hook points by name, a head zeroed in turn,
    the clean stream and each head's output patched into the corrupted run (run_with_hooks, run_with_cache)."""
    nb = run_notebook(clone / "ablate_and_patch.ipynb")
    printed, shown = shown_outputs(nb)
    assert re.search(r"logit\(roamed\) - logit\(swam\): \+\d+\.\d+ after 'a fluffy blue creature', -\d+\.\d+ after "
                     r"'a slippery blue creature'", printed)  # the model learned the verb the key adjective sets
    assert re.search(r"blocks\.0\.attn\.hook_z +\[1, 4, 4, 16\]", printed)  # [batch, pos, head, d_head]
    assert "the head that matters most: layer" in printed
    pngs = [d["image/png"] for d in shown if "image/png" in d]
    assert len(pngs) == 3 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
