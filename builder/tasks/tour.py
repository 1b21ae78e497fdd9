"""task=tour: the lecture as one self-contained page, lecture.html, drawn with this model's own numbers."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_model
from ..errors import ConfigError
from ..interp.tour import summary, write_tour


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

