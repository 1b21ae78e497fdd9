"""bf16 autocast learns like fp32: 200 training steps of the embedded corpus, through `run.py`.

    python benchmarks/bf16_loss_curve.py [--steps 200] [--out DIR]

Three real training runs (Lightning, the default data module, csv logger) of the GPT-2-shaped model
of `train_throughput.py` (6 layers, 6 heads, d_model 384, context 256, batch 8):

  fp32  seed 0   trainer.precision=32-true
  bf16  seed 0   trainer.precision=bf16-mixed
  fp32  seed 1   the noise reference: another initialisation and data order

"Within noise" means: the bf16 curve's distance from the fp32 curve (mean |difference| of the
per-step losses, each smoothed over 10 steps, after the first 20 steps) is no larger than the
distance between the two fp32 seeds, and the final losses differ by less than the seeds' do.
Also reports each run's training tokens/s (the trainer's perf/tokens_per_s, data loading included)
and writes loss_curves.csv and loss_curves.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPE = ["model.n_layers=6", "model.n_heads=6", "model.d_model=384", "model.context_length=256", "model.dropout=0.0",
         "data.batch_size=8"]
RUNS = {"fp32 seed 0": ["trainer.precision=32-true", "seed=0"],
        "bf16 seed 0": ["trainer.precision=bf16-mixed", "seed=0"],
        "fp32 seed 1": ["trainer.precision=32-true", "seed=1"]}


def train(name: str, overrides: list[str], steps: int, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_")
    args = [sys.executable, str(REPO / "run.py"), *SHAPE, *overrides, "logger=csv", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "train.warmup_steps=20", "callbacks.attention_probe=null", "callbacks.text_samples.max_new_tokens=20",
            f"callbacks.model_checkpoint.every_n_train_steps={steps}", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv")))))
    loss = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    rates = [float(r["perf/tokens_per_s"]) for r in rows if r.get("perf/tokens_per_s")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    return {"loss": [loss[s] for s in sorted(loss)], "tokens_per_s": statistics.median(rates[1:] or rates),
            "val_loss": val[-1], "wall": wall}


def smooth(xs: list[float], k: int = 10) -> list[float]:
    return [statistics.fmean(xs[max(0, i - k + 1): i + 1]) for i in range(len(xs))]


def distance(a: list[float], b: list[float], skip: int = 20) -> float:
    sa, sb = smooth(a), smooth(b)
    return statistics.fmean(abs(x - y) for x, y in zip(sa[skip:], sb[skip:]))


def final(xs: list[float], k: int = 20) -> float:
    return statistics.fmean(xs[-k:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bf16_curve_"))
    out.mkdir(parents=True, exist_ok=True)
    results = {name: train(name, overrides, args.steps, out) for name, overrides in RUNS.items()}
    fp32, bf16, other = (results[n] for n in RUNS)
    for name, r in results.items():
        print(f"{name}: final train loss (mean of last 20 steps) {final(r['loss']):.4f}, val/loss {r['val_loss']:.4f}, "
              f"{r['tokens_per_s']:.0f} tokens/s (median of the trainer's 10-step windows), wall {r['wall']:.0f} s")
    d_prec, d_seed = distance(bf16["loss"], fp32["loss"]), distance(other["loss"], fp32["loss"])
    f_prec = abs(final(bf16["loss"]) - final(fp32["loss"]))
    f_seed = abs(final(other["loss"]) - final(fp32["loss"]))
    print(f"mean |smoothed loss difference| over steps 20-{args.steps}: bf16 vs fp32 {d_prec:.4f}; "
          f"fp32 seed 1 vs seed 0 {d_seed:.4f}")
    print(f"final-loss difference: bf16 vs fp32 {f_prec:.4f}; fp32 seed 1 vs seed 0 {f_seed:.4f}")
    within = d_prec <= d_seed and f_prec <= max(f_seed, 0.01)
    print(f"bf16 curve {'within' if within else 'OUTSIDE'} the seed-to-seed noise; "
          f"bf16 training {bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x fp32 tokens/s")
    with open(out / "loss_curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *RUNS])
        for i, row in enumerate(zip(*(r["loss"] for r in results.values()))):
            w.writerow([i, *row])
    sys.path.insert(0, str(REPO))
    from builder.figures import ShownFigure, save_png  # every picture's text checked, as the tasks' are

    fig = ShownFigure(figsize=(7, 4))
    ax = fig.subplots()
    styles = {"fp32 seed 0": {"lw": 3.0, "alpha": 0.5}, "bf16 seed 0": {"lw": 1.2, "ls": "--"}, "fp32 seed 1": {"lw": 1.2}}
    for name, r in results.items():
        ax.plot(smooth(r["loss"]), label=name, **styles[name])
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (10-step mean)")
    ax.set_title(f"bf16 autocast vs fp32, {args.steps} steps of the embedded corpus")
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "loss_curves.png", dpi=110)
    print(f"wrote {out / 'loss_curves.csv'} and loss_curves.png")
    sys.exit(0 if within else 1)


if __name__ == "__main__":
    main()
