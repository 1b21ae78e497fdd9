"""task=tour: the lecture as one self-contained page, lecture.html, drawn with this model's own numbers."""

from __future__ import annotations

from pathlib import Path

from ..interp.tour import summary, write_tour
from .reading import read_model


def model_name(path) -> str:
    """What to call the model at ``path``: a training run's checkpoint by its run folder and file
    (``lecture/last.ckpt``), an export or Hugging Face folder by its name."""
    path = Path(str(path)).expanduser()
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name or str(path)


def run(cfg, out_dir: Path) -> int:
    model, tokenizer, model_cfg = read_model(cfg, texts={"text": cfg.text})
    name = model_name(cfg.checkpoint)
    page, measured = write_tour(Path(out_dir) / "lecture.html", model, tokenizer, model_cfg, cfg.text,
                                title=f"The lecture, with {name}", name=name)
    if measured is not None:
        print(summary(measured))
    print(f"the lecture, drawn with this model (open it from disk; no network): {page}")
    return 0

