"""Training throughput: the builder's GPT-2-shaped model against transformers' GPT2LMHeadModel.

    python benchmarks/train_throughput.py [--rounds 7] [--steps 5] [--modes fp32,bf16,fp32+compile,bf16+compile]

Same shape for both (6 layers, 6 heads, d_model 384, context 256, vocab 65, batch 8), same
parameter count, same optimizer (fused AdamW, as the builder's training uses; `--optimizer foreach`
for the other one), timed in alternating rounds in one process; each round runs `--steps` training
steps (forward, cross-entropy, backward, AdamW) per model. Reports the median tokens/s of each, the
median of the per-round ratios (robust to the machine's load drifting between rounds), and MFU: model FLOPs/s (training FLOPs per
token from the parameter budget) over a matmul peak measured in the same run at the same thread
count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import builder  # noqa: E402
from builder.perf import matmul_peak  # noqa: E402

SHAPE = {"n_layers": 6, "n_heads": 6, "d_model": 384, "context_length": 256, "vocab_size": 65}
BATCH = 8


def ours():
    cfg = builder.compose([f"model.{k}={v}" for k, v in SHAPE.items()] + ["model.dropout=0.0"])
    return builder.build_model(cfg.model), cfg.model


def theirs():
    import transformers

    cfg = transformers.GPT2Config(n_embd=SHAPE["d_model"], n_layer=SHAPE["n_layers"], n_head=SHAPE["n_heads"],
                                  n_positions=SHAPE["context_length"], vocab_size=SHAPE["vocab_size"],
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def step_fn(model, hf: bool, bf16: bool, compiled: bool, optimizer: str = "fused"):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **{optimizer: True})
    forward = torch.compile(model) if compiled else model

    def step(x, y):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = forward(x).logits if hf else forward(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run(rounds: int, steps: int, bf16: bool, compiled: bool, optimizer: str = "fused") -> dict:
    torch.manual_seed(0)
    a, cfg = ours()
    b = theirs()
    n_a, n_b = sum(p.numel() for p in a.parameters()), sum(p.numel() for p in b.parameters())
    flops = builder.parameter_budget(cfg)["flops_per_token"]["training"]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["context_length"]), generator=g)
    y = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["context_length"]), generator=g)
    sa, sb = step_fn(a, False, bf16, compiled, optimizer), step_fn(b, True, bf16, compiled, optimizer)
    for _ in range(3 if compiled else 2):  # warm-up (and compilation)
        sa(x, y)
        sb(x, y)
    tokens = BATCH * SHAPE["context_length"] * steps
    rate_a, rate_b = [], []
    for _ in range(rounds):
        for fn, rates in ((sa, rate_a), (sb, rate_b)):
            start = time.perf_counter()
            for _ in range(steps):
                fn(x, y)
            rates.append(tokens / (time.perf_counter() - start))
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    ma, mb = statistics.median(rate_a), statistics.median(rate_b)
    ratio = statistics.median(x / y for x, y in zip(rate_a, rate_b))
    return {"ours": ma, "theirs": mb, "ratio": ratio, "params": (n_a, n_b), "mfu": ma * flops / peak,
            "mfu_theirs": mb * flops / peak, "peak": peak}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", default="fp32,bf16,fp32+compile,bf16+compile")
    parser.add_argument("--optimizer", choices=["fused", "foreach"], default="fused")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"shape {SHAPE}, batch {BATCH}; {args.optimizer} AdamW; median of {args.rounds} alternating rounds x "
          f"{args.steps} steps")
    results = {}
    for mode in args.modes.split(","):
        r = run(args.rounds, args.steps, bf16="bf16" in mode, compiled="compile" in mode, optimizer=args.optimizer)
        results[mode] = r
        print(f"{mode:14s} builder {r['ours']:8.0f} tok/s   transformers {r['theirs']:8.0f} tok/s   "
              f"ratio {r['ratio']:.2f}x   MFU {100 * r['mfu']:.1f}% (theirs {100 * r['mfu_theirs']:.1f}%) "
              f"of {r['peak'] / 1e9:.0f} GFLOP/s   params {r['params'][0]:,} vs {r['params'][1]:,}")
    if "fp32" in results and "bf16" in results:
        print(f"bf16 builder vs transformers fp32: {results['bf16']['ours'] / results['fp32']['theirs']:.2f}x")


if __name__ == "__main__":
    main()
