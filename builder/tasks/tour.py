"""task=tour: the lecture as one self-contained page, lecture.html, drawn with this model's own numbers."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_model
from ..errors import ConfigError
from ..interp.tour import write_tour


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint, export or Hugging Face directory: "
                          "python run.py task=tour checkpoint=PATH")
    model, tokenizer, model_cfg = load_model(cfg.checkpoint, dtype=cfg.get("dtype"))
    page, measured = write_tour(Path(out_dir) / "lecture.html", model, tokenizer, model_cfg, cfg.text,
                                title=f"The lecture, with {Path(str(cfg.checkpoint)).name}")
    if measured is not None:
        print(summary(measured))
    print(f"the lecture, drawn with this model (open it from disk; no network): {page}")
    return 0


def summary(measured: dict) -> str:
    """The measurements in a few lines."""
    sp, sh, wc = measured["sense_probes"], measured["sense_head"], measured["word_classes"]
    probes = ", ".join(f"{label} {100 * a:.1f}%" for label, a in zip(sp["labels"], sp["accuracy"]))
    return (f"sense probe (held-out accuracy; chance {100 * sp['chance']:.1f}%): {probes}; >= 95% from "
            f"{sp['rises_at'] or 'no layer'}\n"
            f"sense head: L{sh['layer']}H{sh['head']} ({100 * sh['score']:.1f}% of the homonym's attention on its cue)\n"
            f"word classes: {100 * wc['adjectives']:.0f}% of an adjective's nearest tokens are adjectives, "
            f"{100 * wc['nouns']:.0f}% of a noun's are nouns\n"
            f"lens: the last layer's guess is the model's prediction at {100 * measured['lens_agreement']:.1f}% of "
            "positions")
