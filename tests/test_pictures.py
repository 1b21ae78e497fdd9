"""Every picture the project makes has readable text: no two texts overlap and none is cut at the canvas's edge.

Each picture leaves through builder.figures (save_png, or png_bytes for a notebook's inline image and the tour's
inlined pictures), which asks matplotlib where each drawn text lies and warns ``CrowdedText`` when two overlap
or one reaches past the canvas. Here every picture is made through the real task (in-process run.py, whose
warnings reach its stderr) or the real view, on a small model trained here, and no warning may come."""

import io
import warnings

import numpy as np
import pytest
from conftest import train_env

from builder.figures import CrowdedText, ShownFigure, text_problems
from builder.interp.interventions import PATCHED_STREAMS, ablation_figure, cell_text, patching_figure
from builder.interp.plots import context_figure, map_figure, patterns_figure

LECTURE_WORDS = "groups={adjectives:[fluffy,blue,shiny,verdant,slippery,small],nouns:[creature,forest,cat,river,mole," \
                "bank],verbs:[roamed,swam,glowed,waited,dug,reacted]}"


def clean(proc) -> str:
    """The run succeeded and warned of no picture."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CrowdedText" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout


def test_the_check_finds_overlapping_and_cut_text():
    fig = ShownFigure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.text(0.5, 0.5, "first label")
    ax.text(0.52, 0.5, "second label")
    ax.plot([0.1], [0.9], "o", ms=12)
    ax.text(0.1, 0.9, "on a point", ha="center", va="center")
    ax.set_title("a title far too long for a figure four inches wide, cut at both edges")
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")
    problems = text_problems(fig)
    assert "'first label' overlaps 'second label'" in problems
    assert any(p.startswith("'a title far too long") and "cut at the left and right edge" in p for p in problems)
    assert "'on a point' lies on a plotted point" in problems
    assert len(problems) == 3, problems  # the tick labels laid out by tight_layout are fine
    with pytest.warns(CrowdedText, match="an inline picture"):
        fig._repr_png_()


@pytest.mark.slow
def test_every_picture_of_a_trained_lecture_model(tmp_path, cli):
    """A word-level model of the lecture's language, trained a few steps (its patterns_step*.png drawn at each
    validation), then every task that draws: attend, heads, embed, context, lens, ablate, patch and the tour."""
    env = train_env(tmp_path)["env"]
    run = tmp_path / "train"
    clean(cli("data=lecture", "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.context_length=32",
              "logger=csv", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
              "callbacks.text_samples=null", "callbacks.attention_probe.text='near the garden , the small mole dug again .'",
              "trainer.enable_progress_bar=false", f"hydra.run.dir={run}", env=env))
    assert sorted(p.name for p in (run / "attention").glob("patterns_step*.png")) == ["patterns_step2.png",
                                                                                      "patterns_step4.png"]
    ckpt = f"checkpoint={run / 'checkpoints' / 'last.ckpt'}"
    for args in (["task=attend", "text=a fluffy blue creature roamed the verdant forest ."],
                 ["task=heads"],
                 ["task=embed", "words=[fluffy,creature]", "pairs=[[fluffy,creature],[blue,forest]]", LECTURE_WORDS],
                 ["task=context", "word=mole", "contexts=['near the garden , the small mole dug again .',"
                  "'at the chemist , the mole reacted today .','near the clinic , the mole darkened today .']"],
                 ["task=lens", "text=a fluffy blue creature roamed"],
                 ["task=ablate", "texts=['near the garden , the small mole dug again .','at the chemist , the mole "
                  "reacted today .']"],
                 ["task=patch", "clean='near the garden , the mole'", "corrupted='at the chemist , the mole'",
                  "answers=[dug,reacted]"],
                 ["task=tour"]):
        clean(cli(*args, ckpt, f"hydra.run.dir={tmp_path / args[0].split('=')[1]}", env=env))


def test_budget_charts(tmp_path, cli):
    """One model's chart (with every preset in the lower panel), and every preset side by side."""
    clean(cli("task=report", "model=gpt3_175b", f"hydra.run.dir={tmp_path / 'one'}"))
    clean(cli("task=report", "models=[gpt2_*,gpt3_*,llama*]", f"hydra.run.dir={tmp_path / 'many'}"))


def test_crowded_inputs_are_laid_out():
    """Inputs that crowd a picture: words whose vectors nearly coincide on the PCA map, a long title on the
    patterns grid of one head, six contexts of one word, patching one token over six layers of sixteen heads with
    shares far from [-1, 1] (a clean and corrupted run that barely differ), ablating sixteen heads with changes
    in the thousands."""
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(18)]
    xy = np.concatenate([rng.normal(0, 0.01, (9, 2)), rng.normal(1, 0.01, (9, 2))])
    figures = [map_figure(words, ["a"] * 9 + ["b"] * 9, xy, [0.6, 0.3]),
               patterns_figure(["a", "fluffy", "blue", "creature"], np.full((1, 1, 4, 4), 0.25), title="model")]
    sims = np.tile(np.eye(6), (3, 1, 1)) * 0.5 + 0.5
    figures.append(context_figure({"word": "mole", "similarity": sims, "labels": ["embedding", "after layer 0",
                                   "after layer 1"], "mean_similarity": [1.0, 0.7, 0.4],
                                   "update_sizes": np.ones((2, 4)), "top_heads": [{"layer": 1, "head": 2}],
                                   "contexts": [f"context number {i} of the mole" for i in range(6)]}))
    shares = {stream: rng.uniform(-150, 150, (6, 1)) for stream in PATCHED_STREAMS}  # a tiny span: large shares
    figures += [patching_figure({**shares, "heads": rng.uniform(-0.02, 0.02, (6, 16))}, ["mole"], title="patch"),
                ablation_figure({"heads": rng.uniform(-1e4, 1e4, (6, 16)), "mlps": rng.uniform(-1, 1, 6),
                                 "ablation": "mean", "metric": "loss", "baseline": 4.2})]
    assert [cell_text(v) for v in (0.01, -0.004, 12.3, -999.4, 1234.0, float("nan"))] == [
        "+0.01", "-0.00", "+12", "-999", "+1e3", ""]
    for fig in figures:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CrowdedText)
            fig._repr_png_()


@pytest.mark.parametrize("tokens", [1, 3, 30, 48, 100])
def test_one_heads_pattern_keeps_its_labels_on_the_canvas(tmp_path, tokens):
    """task=attend's picture of one head, from one token to a window longer than the labels shown: the axis labels,
    the two-line title and the colour bar's ticks all on the canvas, none over another (with a fixed aspect and a
    two-line title, 'query (looking)' was cut off from about 30 tokens on)."""
    from builder.interp.plots import draw_head

    pattern = np.tril(np.ones((tokens, tokens)))
    pattern /= pattern.sum(1, keepdims=True)
    labels = [f"tok{i}" if i % 3 else "a" for i in range(tokens)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrowdedText)
        draw_head(tmp_path / "head.png", labels, pattern, pattern > 0, "last.ckpt layer 0 head 0 · kv 0 (shared by "
                  "heads 0-3)")


def test_sweep_chart_labels_close_points_apart(tmp_path):
    """A sweep whose jobs land close together: every job's label placed where it overlaps no other."""
    from builder.tasks.compare import draw

    rows = [{"status": "ok", "label": f"model.n_heads={h} model.d_model={d}", "params": 10_000 * d + h,
             "best_val_loss": 2.0 + 0.001 * h} for d in (32, 33, 64) for h in (1, 2, 4, 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrowdedText)
        draw(rows, tmp_path / "sweep.png", "val/loss by job")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
