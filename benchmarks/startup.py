"""Start-up: `python run.py task=report model=gpt2_small` end to end, what `import builder` pulls in, and how soon
task=train refuses a bad model or data value, beside what importing Lightning alone takes (the refusal comes
before task=train's imports).

    python benchmarks/startup.py [--runs 5] [--against DIR]

``--against DIR``: the same commands with another checkout's run.py (``git worktree add DIR COMMIT``), the two
alternated run by run, printed side by side with the ratio of medians (this tree's over DIR's).
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
REFUSED = ("model.n_heads=5", "data.tokenizer=bpe", "train.lr=0", "model.nlayers=3")  # model, data, train, a typo


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, default=None, help="another checkout, timed alternately")
    args = parser.parse_args()
    probe = ("import sys, time; t = time.perf_counter(); import builder; dt = time.perf_counter() - t; "
             f"print(dt, [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    seconds, loaded = out.split(" ", 1)
    print(f"import builder: {float(seconds):.2f} s; heavy modules imported: {loaded.strip()}")
    trees = {"this": REPO} | ({"against": args.against.resolve()} if args.against else {})
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"task=report model=gpt2_small": ["task=report", "model=gpt2_small"]}
        commands.update({f"task=train {o} (refused)": [o] for o in REFUSED})
        walls: dict[tuple[str, str], list[float]] = {}
        for i in range(args.runs):  # one round of each at a time: a drifting machine slows them alike
            for name, overrides in commands.items():
                for tree, root in trees.items():
                    walls.setdefault((name, tree), []).append(_timed(
                        [str(root / "run.py"), *overrides, f"hydra.run.dir={tmp}/{tree}{i}"],
                        2 if name.endswith("(refused)") else 0, root))
            walls.setdefault(("import pytorch_lightning", "this"), []).append(
                _timed(["-c", "import pytorch_lightning"], 0, REPO))
    for (name, tree), times in walls.items():
        line = (f"{name} [{tree}]: median {statistics.median(times):.2f} s over {args.runs} runs "
                f"(min {min(times):.2f}, max {max(times):.2f})")
        if tree == "against":
            line += f"; this/against {statistics.median(walls[(name, 'this')]) / statistics.median(times):.2f}x"
        print(line)


def _timed(args: list[str], status: int, cwd: Path) -> float:
    """Seconds ``python ARGS`` takes in ``cwd``; it must exit with ``status``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != status:
        raise SystemExit(f"python {' '.join(args)} exited {proc.returncode}, not {status}:\n{proc.stderr[-2000:]}")
    return seconds


if __name__ == "__main__":
    main()
