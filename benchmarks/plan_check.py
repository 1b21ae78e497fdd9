"""task=plan's model checked on this machine: predicted vs measured peak memory per process and step time, for
``trainer=fsdp_cpu`` (two processes, FSDP2 over gloo), with and without activation checkpointing.

    python benchmarks/plan_check.py [--steps 8] [--d-model 384] [--layers 6] [--batch 8] [--context 256]

Each run is ``run.py task=train trainer=fsdp_cpu`` in a fresh process group, one thread a process, glibc's malloc
told to map each large block on its own (LIVE_RSS); its peak resident set size is the largest of its processes'
(getrusage of the children), less the peak of the same run with a one-block, 8-wide model (the interpreter, torch,
Lightning and the data: what the estimate does not model).
Predicted memory: builder/memory.py's ``training_memory`` (``least``: what task=plan's per-layout numbers are) with
the states sharded over 2 and checkpointing on or off, its activations measured on the model's blocks with
attention as the CPU runs it (``kernel="cpu"``: builder/activations.py). Predicted step time: the model's
training FLOPs per step and process (x 4/3 with checkpointing) at this machine's measured fp32 matmul rate (one
thread), i.e. at MFU 1 of that rate, plus FSDP's traffic at a measured memory-copy rate; measured: from the run's
perf/tokens_per_s (the median window after the first).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 1 << 20
# glibc's malloc keeps what a process frees on its heap (and raises its mmap threshold as large blocks are freed), so
# a peak RSS is the heap's high-water mark, fragmentation included, not the most the process held at once: each
# allocation of 64 KiB or more gets its own mapping here, returned when freed, so the peak RSS is the peak of what
# was live (run to run, the default allocator's peaks scattered by +-60 MiB on this model)
LIVE_RSS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
WRAP = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def train(args, out: Path, model: list[str], checkpointing: bool) -> dict:
    """One fsdp_cpu run; its peak RSS (bytes, the largest process) and its tokens/s windows."""
    cmd = [sys.executable, "-c", WRAP, sys.executable, str(REPO / "run.py"), "trainer=fsdp_cpu", *model,
           f"data.batch_size={args.batch}", f"data.context_length={args.context}", f"trainer.max_steps={args.steps}",
           "trainer.val_check_interval=100000", "trainer.limit_val_batches=0", "callbacks=none",
           "+callbacks.throughput.window=1", "logger=csv", "trainer.log_every_n_steps=1",
           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "train.warmup_steps=0",
           "callbacks.model_checkpoint=null",
           f"train.activation_checkpointing={str(checkpointing).lower()}", f"hydra.run.dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **LIVE_RSS}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"run failed ({' '.join(cmd[3:])}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    peak = int(proc.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss: KiB on Linux
    rates = []
    metrics = next(out.glob("csv/**/metrics.csv"), None)
    if metrics is not None:
        rates = [float(r["perf/tokens_per_s"]) for r in csv.DictReader(open(metrics)) if r.get("perf/tokens_per_s")]
    return {"peak_rss": peak, "tokens_per_s": rates}


def copy_rate() -> float:
    """Bytes/s of a large tensor copy on one thread: what gloo's all-gathers between two processes on one machine
    are bounded by."""
    import torch

    torch.set_num_threads(1)
    a = torch.empty(64 * MIB // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.5:
        b.copy_(a)
        n += 1
    return 2 * a.numel() * 4 * n / (time.perf_counter() - start)  # read + write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()

    import torch

    import builder
    from builder.budget import parameter_budget
    from builder.config.plain import to_plain
    from builder.config.schema import AcceleratorConfig
    from builder.memory import training_memory
    from builder.plan import layout_memory, step_time, training_flops
    from builder.training.throughput import matmul_peak

    torch.set_num_threads(1)
    matmul = matmul_peak(torch.float32, 1024, 1.0)
    copy = copy_rate()
    model = [f"model.d_model={args.d_model}", f"model.n_layers={args.layers}", f"model.n_heads={args.heads}",
             f"model.context_length={args.context}"]
    baseline_model = ["model.d_model=8", "model.n_layers=1", "model.n_heads=1", f"model.context_length={args.context}"]
    cfg = builder.compose(model)
    model_cfg = to_plain(cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        base = train(args, Path(tmp) / "base", baseline_model, False)
        runs = {ac: train(args, Path(tmp) / f"ac_{ac}", model, ac) for ac in (False, True)}
        vocab = json.loads(next((Path(tmp) / "ac_False").glob("budget.json")).read_text())["config"]["vocab_size"]
    model_cfg["vocab_size"] = vocab  # the run's, set to the tokenizer's
    budget = parameter_budget(model_cfg, "plan_check")
    cpu = AcceleratorConfig(memory_gib=1e6, bf16_tflops=matmul / 1e12, fp32_tflops=matmul / 1e12,
                            intra_node_gbps=copy / 1e9, inter_node_gbps=copy / 1e9, gpus_per_node=2, source="this CPU")
    flops = training_flops(budget, args.context, 1e9)
    settings = {"tokens": 1e9, "batch_size": args.batch, "context_length": args.context, "precision": "32-true",
                "mfu": 1.0, "global_batch": None, "price_per_gpu_hour": 0.0}
    print(f"model: {budget['total_params']:,} parameters (d_model {args.d_model}, {args.layers} layers, vocab {vocab}); "
          f"batch {args.batch} x {args.context} per process; fp32 matmul {matmul / 1e9:.1f} GFLOP/s, copy "
          f"{copy / 1e9:.1f} GB/s (one thread); baseline peak RSS {base['peak_rss'] / MIB:,.0f} MiB\n")
    rows = []
    for ac, run in runs.items():
        layout = "fsdp_ac" if ac else "fsdp"
        est = training_memory(budget, args.batch, args.context, "32-true", shards=2, checkpointing=ac, kernel="cpu")
        mem = layout_memory(layout, budget, 2, args.batch, args.context, "32-true", cpu, 0.0, kernel="cpu")
        assert mem["total"] == est["least"]  # the plan's per-layout number is the estimate
        measured_mem = run["peak_rss"] - base["peak_rss"]
        timing = step_time(layout, mem, budget, flops, cpu, settings)
        windows = run["tokens_per_s"][1:] or run["tokens_per_s"]
        measured_step = args.batch * args.context * 2 / statistics.median(windows) if windows else float("nan")
        rows.append({"activation_checkpointing": ac, "predicted_mib": est["least"] / MIB,
                     "measured_mib": measured_mem / MIB, "memory_ratio": measured_mem / est["least"],
                     "predicted_step_s": timing["step_s"], "measured_step_s": measured_step,
                     "step_ratio": measured_step / timing["step_s"]})
    header = f"{'activation checkpointing':>24}  {'predicted MiB':>13}  {'measured MiB':>12}  {'measured/pred':>13}  " \
             f"{'predicted step s':>16}  {'measured step s':>15}  {'measured/pred':>13}"
    print(header)
    for r in rows:
        print(f"{str(r['activation_checkpointing']):>24}  {r['predicted_mib']:>13,.0f}  {r['measured_mib']:>12,.0f}  "
              f"{r['memory_ratio']:>13.2f}  {r['predicted_step_s']:>16.3f}  {r['measured_step_s']:>15.3f}  "
              f"{r['step_ratio']:>13.2f}")
    saved = rows[0]["measured_mib"] - rows[1]["measured_mib"]
    print(f"\nactivation checkpointing saves {saved:,.0f} MiB measured, "
          f"{rows[0]['predicted_mib'] - rows[1]['predicted_mib']:,.0f} MiB predicted")


if __name__ == "__main__":
    main()
