"""Peak memory of looking inside a long input: a capture of every field, a pattern-only capture, and task=attend.

    python benchmarks/capture_memory.py [--preset gpt2_small] [--tokens 1024] [--layers 0,11]

Each mode runs in a fresh process (random weights; peak resident set size from getrusage), so one mode's memory
never counts in another's. Reports each mode's peak RSS and what it adds to the model alone.
``all`` records every field (q, k, v, scores, mask, pattern, z and each head's update: [B, H, T, d_model] per
layer); ``pattern`` records only the patterns, what the pictures and head scoring ask for; ``attend`` is
``write_attention_pictures`` (patterns.png, the steps, the page) for the chosen layers, every head.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("model", "pattern", "all", "attend")


def child(mode: str, preset: str, tokens: int, layers: list[int]) -> dict:
    sys.path.insert(0, str(REPO))
    import tempfile

    import torch

    import builder
    from builder.data.tokenizers import CharTokenizer
    from builder.interp.capture import record
    from builder.interp.pictures import write_attention_pictures

    torch.manual_seed(0)
    text = ("the quick brown fox jumps over the lazy dog " * (tokens // 44 + 1))[:tokens]
    tok = CharTokenizer.from_text(text)
    cfg = builder.compose([f"model={preset}", f"model.context_length={max(tokens, 8)}"]).model
    model = builder.build_model(cfg).eval()
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        if mode == "model":
            model(ids)
        elif mode == "pattern":
            record(model, ids, fields=("pattern",))
        elif mode == "all":
            record(model, ids)
        elif mode == "attend":
            with tempfile.TemporaryDirectory() as out:
                write_attention_pictures(model, tok, text, Path(out), layers=layers)
    return {"mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2_small")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", default="0,11", help="task=attend's layers (every head of each)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.tokens, layers)))
        return 0
    rows = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--preset", args.preset, "--tokens",
                               str(args.tokens), "--layers", args.layers], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"mode {mode} failed:\n{proc.stderr[-2000:]}")
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    print(f"{args.preset}, {args.tokens} tokens, random weights, fp32; peak RSS of a fresh process per mode")
    base = rows["model"]
    for mode in MODES:
        extra = "" if mode == "model" else f"  (+{rows[mode] - base:,.0f} MB over the model alone)"
        label = {"model": "model built, one forward", "pattern": "capture, pattern only", "all": "capture, every field",
                 "attend": f"task=attend pictures, layers {args.layers}"}[mode]
        print(f"{label:38s} {rows[mode]:8,.0f} MB{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
