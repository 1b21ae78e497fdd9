"""task=tour: the lecture as one self-contained page, lecture.html, drawn with this model's own numbers."""

from __future__ import annotations

from pathlib import Path

from ..interp.tour import summary, write_tour
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    model, tokenizer, model_cfg = read_model(cfg, texts={"text": cfg.text})
    page, measured = write_tour(Path(out_dir) / "lecture.html", model, tokenizer, model_cfg, cfg.text,
                                title=f"The lecture, with {Path(str(cfg.checkpoint)).name}")
    if measured is not None:
        print(summary(measured))
    print(f"the lecture, drawn with this model (open it from disk; no network): {page}")
    return 0

