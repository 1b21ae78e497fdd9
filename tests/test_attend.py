"""task=attend end to end: a GPT-2 directory and a trained checkpoint give every picture and a page that works."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from browser import Browser  # noqa: E402
from conftest import random_gpt2_dir, run_cli, tiny_checkpoint  # noqa: E402

PHRASE = "a fluffy blue creature roamed the verdant forest"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A small random GPT-2 saved in Hugging Face format with its own BPE vocab.json + merges.txt."""
    return random_gpt2_dir(tmp_path_factory.mktemp("gpt2"), [PHRASE, "the creature swims in the blue forest"])


def test_attend_on_a_gpt2_directory(gpt2_dir, tmp_path):
    out = tmp_path / "attend"
    proc = run_cli("task=attend", f"checkpoint={gpt2_dir}", f"text={PHRASE}", "layers=[0,2]", "heads=[1,3]",
                   f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("patterns.png", "head_L0_H1.png", "head_L0_H3.png", "head_L2_H1.png", "head_L2_H3.png",
                 "steps_L0_H1.png", "attention.html"):
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"<!DO"), name
    assert not (out / "head_L1_H0.png").exists()
    with Browser() as browser:
        browser.open((out / "attention.html").as_uri())
        browser.wait_for("document.body.dataset.ready === '1'")
        state = browser.eval("JSON.stringify(window.__hf.state())")
        assert '"layer":0' in state.replace(" ", "") or "layer" in state
        texts = browser.eval("Array.from(document.querySelectorAll('.tok, [data-token]')).map(e => e.textContent)")
        assert "fluffy" in "".join(texts) and "creature" in "".join(texts)
        assert not browser.errors


def test_attend_on_a_trained_checkpoint(tmp_path):
    ckpt, env = tiny_checkpoint(tmp_path, PHRASE)
    out = tmp_path / "attend"
    proc = run_cli("task=attend", f"checkpoint={ckpt}", "text=a fluffy creature",
                   f"hydra.run.dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    heads = sorted(p.name for p in out.glob("head_L*_H*.png"))
    assert heads == ["head_L0_H0.png", "head_L0_H1.png", "head_L1_H0.png", "head_L1_H1.png"]
    assert (out / "steps_L0_H0.png").exists() and (out / "patterns.png").exists()
    html = (out / "attention.html").read_text()
    assert "http://" not in html and "https://" not in html


def test_attend_refuses_bad_input(gpt2_dir, tmp_path):
    proc = run_cli("task=attend", f"checkpoint={gpt2_dir}", "layers=[7]", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 2 and "layers" in proc.stderr and "between 0 and 2" in proc.stderr
    proc = run_cli("task=attend", f"hydra.run.dir={tmp_path / 'b'}")
    assert proc.returncode == 2 and "checkpoint" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["causal", "sliding", "random"])
def test_hatching_covers_exactly_the_masked_cells(kind):
    """The hatch rectangles drawn over masked cells lie on cell edges and cover those cells, no others."""
    import numpy as np

    from builder.interp.plots import masked_hatching

    t = 9
    allowed = {"causal": np.tril(np.ones((t, t), bool)),
               "sliding": np.tril(np.ones((t, t), bool)) & ~np.tril(np.ones((t, t), bool), -3),
               "random": np.random.default_rng(0).random((t, t)) < 0.5}[kind]
    covered = np.zeros((t, t), bool)
    for path in masked_hatching(~allowed).get_paths():
        xs, ys = path.vertices[:, 0], path.vertices[:, 1]
        assert np.allclose(xs % 1, 0.5) and np.allclose(ys % 1, 0.5)  # corners on cell edges
        rows = slice(int(ys.min() + 0.5), int(ys.max() + 0.5))
        cols = slice(int(xs.min() + 0.5), int(xs.max() + 0.5))
        assert not covered[rows, cols].any()  # no cell hatched twice
        covered[rows, cols] = True
    assert (covered == ~allowed).all()


def test_pictures_teach_long_inputs_and_pick_a_telling_head(tmp_path):
    """The steps picture stays a readable size and, with no head named, shows the head that looks hardest at one
    token other than itself and the first; a named head is drawn as named."""
    from PIL import Image

    import builder
    from builder.data.tokenizers import CharTokenizer
    from builder.interp.capture import record
    from builder.interp.pictures import focused_head, write_attention_pictures

    text = PHRASE + " and then it slept"
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = builder.build_model(builder.compose([f"model.vocab_size={tok.vocab_size}"]).model).eval()
    files = write_attention_pictures(model, tok, text, tmp_path, title="tiny")
    rec = record(model, torch.tensor([tok.encode(text)]), fields=("pattern",))
    layer, head = focused_head(rec, list(range(4)), list(range(4)))
    assert files["steps"].name == f"steps_L{layer}_H{head}.png"
    width, height = Image.open(files["steps"]).size
    assert width <= 1800 and height <= 1700  # was 3300 x 902 with unreadable labels
    named = write_attention_pictures(model, tok, text, tmp_path / "named", layers=[3], heads=[0], title="tiny")
    assert named["steps"].name == "steps_L3_H0.png"
