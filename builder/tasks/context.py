"""task=context: one word in several contexts — how each layer refines its vector, and which heads did it."""

from __future__ import annotations

import json
from pathlib import Path

from ..config.plain import to_plain
from ..errors import ConfigError
from ..files import atomic_write
from ..interp.context import context_views
from ..interp.plots import context_figure, save_figure
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    word, contexts = cfg.get("word"), to_plain(cfg.get("contexts"))
    if not word:
        raise ConfigError("word", word, "the word to follow through the layers, e.g. word=mole")
    model, tokenizer, _ = read_model(cfg, "word=mole contexts=['the mole dug','a mole of carbon']",
                                 texts={"word": word, "contexts": contexts})
    views = context_views(model, tokenizer, str(word), contexts)
    out_dir = Path(out_dir)
    png = save_figure(context_figure(views), out_dir / "context.png")
    atomic_write(out_dir / "context.json", json.dumps(views, indent=2) + "\n")
    print(f"{word!r} in {len(contexts)} contexts; mean similarity of its vectors: " + ", ".join(
        f"{label} {s:+.2f}" for label, s in zip(views["labels"], views["mean_similarity"])))
    print(f"  the heads whose update to {word!r} was largest (mean over the contexts), largest first; where each "
          "looked, context by context:")
    for rank, h in enumerate(views["top_heads"], 1):
        looked = " | ".join(", ".join(f"{t!r} {p:.2f}" for t, p in ctx) for ctx in h["looked_at"])
        print(f"  {rank}. L{h['layer']}H{h['head']} (update size {h['update_size']:.3f}): {looked}")
    print(f"  {png}\n  {out_dir / 'context.json'}")
    return 0
