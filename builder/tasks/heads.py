"""task=heads: score every head against named patterns, draw the best head of each, write heads.json."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write
from ..interp.capture import head_layout
from ..interp.heads import FOUND, PATTERNS, draw_best, format_table, found, score_heads
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    checkpoint = cfg.get("checkpoint")
    model, tokenizer, _ = read_model(cfg)
    scores = score_heads(model, tokenizer)
    out_dir = Path(out_dir)
    drawings = draw_best(model, tokenizer, scores, out_dir)
    layouts = head_layout(model)  # (n_heads, n_kv_heads) per layer
    report = {"checkpoint": str(checkpoint), "patterns": {p: scores[p] for p in PATTERNS},
              "skipped": scores["skipped"], "found": found(scores), "found_at": FOUND, "drawings": drawings,
              "kv_heads": [pair and list(pair) for pair in layouts]}
    atomic_write(out_dir / "heads.json", json.dumps(report, indent=2) + "\n")
    for n_heads, n_kv in sorted({pair for pair in layouts if pair}):
        if n_kv != n_heads:
            print(f"grouped-query attention: {n_heads} query heads share {n_kv} key/value heads "
                  f"({n_heads // n_kv} each); the kv column says which one each head reads, and who shares it\n")
    print(format_table(scores))
    print(f"\n  scores   : {out_dir / 'heads.json'}")
    for pattern, name in drawings.items():
        print(f"  {pattern:<16}: {out_dir / name}")
    return 0
