"""Start-up: `python run.py task=report model=gpt2_small` end to end, and what `import builder` pulls in.

    python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("wandb", "matplotlib", "transformers", "pytorch_lightning")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    probe = ("import sys, time; t = time.perf_counter(); import builder; dt = time.perf_counter() - t; "
             f"print(dt, [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    seconds, loaded = out.split(" ", 1)
    print(f"import builder: {float(seconds):.2f} s; heavy modules imported: {loaded.strip()}")
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "run.py"), "task=report", "model=gpt2_small",
                            f"hydra.run.dir={tmp}/{i}"], cwd=REPO, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
    print(f"task=report model=gpt2_small: median {statistics.median(walls):.2f} s over {args.runs} runs "
          f"(min {min(walls):.2f}, max {max(walls):.2f})")


if __name__ == "__main__":
    main()
