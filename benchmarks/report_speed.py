"""Time and peak memory of `python run.py task=report model=gpt3_175b`, end to end, as real processes.

    python benchmarks/report_speed.py [--runs 5] [--model gpt3_175b]

Each run is a fresh interpreter (imports, composition, meta-device build, formulas for every
preset, the chart). Prints the median wall time and the largest peak RSS.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_run(model: str, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "task=report", f"model={model}",
                             f"hydra.run.dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if not (out / "budget.png").exists():
        raise SystemExit(f"report failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024  # KiB -> MiB


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="gpt3_175b")
    args = parser.parse_args()
    walls, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            wall, peak = one_run(args.model, Path(tmp) / str(i))
            walls.append(wall)
            peaks.append(peak)
            print(f"run {i}: {wall:.2f} s, peak RSS {peak:.0f} MiB")
    print(f"\ntask=report model={args.model}: median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f}) over {args.runs} runs; "
          f"peak RSS {max(peaks):.0f} MiB; {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")


if __name__ == "__main__":
    main()
