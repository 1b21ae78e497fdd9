"""Start-up: `python run.py task=report model=gpt2_small` end to end, what `import builder` pulls in, and how soon
task=train refuses a bad model or data value, beside what importing Lightning alone takes (the refusal comes
before task=train's imports).

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
REFUSED = ("model.n_heads=5", "data.tokenizer=bpe", "train.lr=0")  # a bad model, data and train value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    probe = ("import sys, time; t = time.perf_counter(); import builder; dt = time.perf_counter() - t; "
             f"print(dt, [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    seconds, loaded = out.split(" ", 1)
    print(f"import builder: {float(seconds):.2f} s; heavy modules imported: {loaded.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"task=report model=gpt2_small": ["task=report", "model=gpt2_small"]}
        commands.update({f"task=train {o} (refused)": [o] for o in REFUSED})
        walls: dict[str, list[float]] = {name: [] for name in [*commands, "import pytorch_lightning"]}
        for i in range(args.runs):  # one round of each at a time: a drifting machine slows them alike
            for name, overrides in commands.items():
                walls[name].append(_timed([str(REPO / "run.py"), *overrides, f"hydra.run.dir={tmp}/{i}"],
                                          2 if name.endswith("(refused)") else 0))
            walls["import pytorch_lightning"].append(_timed(["-c", "import pytorch_lightning"], 0))
    for name, times in walls.items():
        print(f"{name}: median {statistics.median(times):.2f} s over {args.runs} runs "
              f"(min {min(times):.2f}, max {max(times):.2f})")


def _timed(args: list[str], status: int) -> float:
    """Seconds ``python ARGS`` takes; it must exit with ``status``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != status:
        raise SystemExit(f"python {' '.join(args)} exited {proc.returncode}, not {status}:\n{proc.stderr[-2000:]}")
    return seconds


if __name__ == "__main__":
    main()
