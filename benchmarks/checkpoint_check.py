"""What the finite check before each checkpoint save costs, against the save itself (CPU).

    python benchmarks/checkpoint_check.py [--model gpt2_small] [--repeats 5] [--dir /tmp]

Builds the model preset's weights as a training checkpoint holds them (``state_dict``, plus AdamW's two moments per
weight), then times, best of ``--repeats``: ``builder.checkpoint.nonfinite_tensor`` over the weights and the
moments (what ``LitGPT.on_save_checkpoint`` runs on every save) and over the weights alone, a plain
``torch.isfinite(t).all()`` loop for comparison, and ``torch.save`` of the whole checkpoint into an open file (as
``AtomicCheckpointIO`` writes) and to a path, in ``--dir`` (the save times depend on that disk and its page cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import builder  # noqa: E402
from builder.checkpoint import nonfinite_tensor, training_state  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2_small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    a = parser.parse_args()
    model = builder.build_model(builder.compose([f"model={a.model}"]).model)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    moments = {i: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v), "step": torch.tensor(1.0)}
               for i, v in enumerate(state.values())}
    ckpt = {"state_dict": state, "optimizer_states": [{"state": moments}]}
    n = sum(v.numel() for v in state.values())

    weights = best(lambda: nonfinite_tensor(state), a.repeats)
    check = best(lambda: nonfinite_tensor(training_state(ckpt)), a.repeats)
    plain = best(lambda: all(bool(torch.isfinite(v).all()) for v in state.values()), a.repeats)
    with tempfile.TemporaryDirectory(dir=a.dir) as folder:
        path = Path(folder) / "x.ckpt"

        def into_file():
            with open(path, "wb") as f:
                torch.save(ckpt, f)

        to_file = best(into_file, a.repeats)
        to_path = best(lambda: torch.save(ckpt, path), a.repeats)
        size = os.path.getsize(path)
    print(f"{a.model}: {n / 1e6:.1f}M parameters ({n * 4 / 2**20:.0f} MiB of weights), checkpoint "
          f"{size / 2**20:.0f} MiB with AdamW's moments; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"finite check of the weights and AdamW's moments (nonfinite_tensor(training_state(ckpt))): "
          f"{check * 1e3:.0f} ms; of the weights alone {weights * 1e3:.0f} ms (torch.isfinite(t).all() loop: "
          f"{plain * 1e3:.0f} ms)")
    print(f"torch.save into an open file: {to_file * 1e3:.0f} ms   (to a path: {to_path * 1e3:.0f} ms)")
    print(f"the check costs {check / to_file:.1%} of a save")


if __name__ == "__main__":
    main()
