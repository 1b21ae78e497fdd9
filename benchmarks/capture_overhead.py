"""With no capture active, the model runs at the fused speed.

    python benchmarks/capture_overhead.py [--rounds 9]

Times the forward pass of a GPT-2-shaped model (6 layers, d_model 384, context 256, batch 8) in
alternating rounds: a model that was never captured, the same model right after a
`builder.capture_attention` block closed, and (for scale) the model inside a capture.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import builder  # noqa: E402


def timed(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = builder.compose(["model.n_layers=6", "model.n_heads=6", "model.d_model=384", "model.context_length=256",
                           "model.vocab_size=65"])
    fresh = builder.build_model(cfg.model).eval()
    after = builder.build_model(cfg.model).eval()
    after.load_state_dict(fresh.state_dict())
    ids = torch.randint(0, 65, (8, 256))
    with torch.no_grad():
        with builder.capture_attention(after):
            after(ids)
        times = {"fused (never captured)": [], "after a capture closed": [], "inside a capture": []}
        for _ in range(args.rounds):
            times["fused (never captured)"].append(timed(lambda: fresh(ids), args.reps))
            times["after a capture closed"].append(timed(lambda: after(ids), args.reps))
            with builder.capture_attention(after):
                times["inside a capture"].append(timed(lambda: after(ids), args.reps))
    base = statistics.median(times["fused (never captured)"])
    for name, values in times.items():
        m = statistics.median(values)
        print(f"{name:24s} median {1000 * m:7.1f} ms / forward   ratio to fused {m / base:.3f}")


if __name__ == "__main__":
    main()
