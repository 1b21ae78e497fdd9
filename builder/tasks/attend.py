"""task=attend: every picture of the lecture for one phrase, from a checkpoint, an export or a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from ..interp.pictures import write_attention_pictures
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    model, tokenizer, _ = read_model(cfg, "text='...'", texts={"text": cfg.text})
    files = write_attention_pictures(model, tokenizer, cfg.text, out_dir, cfg.layers, cfg.heads,
                                     title=Path(str(cfg.checkpoint)).name)
    print(f"attention of {len(model.blocks)} layers x {model.blocks[0].attention.n_heads} heads on {cfg.text!r}:")
    for line in files["summary"]:
        print(f"  {line}")
    print(f"  {files['patterns']}\n  {files['steps']}\n  {files['html']}")
    for p in files["heads"]:
        print(f"  {p}")
    return 0
