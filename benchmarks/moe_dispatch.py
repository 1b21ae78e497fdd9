"""Sparse expert dispatch against the dense equivalent, side by side in one run.

    python benchmarks/moe_dispatch.py                  # Mixtral-shaped routing at a CPU size
    python benchmarks/moe_dispatch.py --experts 64 --top-k 4 --tokens 2048

``sparse``: the MixtureOfExperts forward (the (token, choice) pairs sorted by expert, each expert multiplying only
its own tokens); ``dense``: the same weights with every expert run on every token, weighted by the router's
weights (zero for the experts not chosen): what a mixture of experts costs without dispatch. Both give the same
output (checked here, and in tests/test_moe.py); the medians of forward and forward + backward are printed with
their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from components.moe import MixtureOfExperts  # noqa: E402


def dense(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by a dense [tokens, experts] matrix of the router's weights."""
    flat = x.reshape(-1, x.shape[-1])
    _, experts, weights = moe.route(flat)
    gates = torch.zeros(len(flat), moe.n_experts, dtype=flat.dtype).scatter(1, experts, weights.to(flat.dtype))
    h = torch.einsum("td,ehd->eth", flat, moe.w_in)
    gate, up = h.chunk(2, dim=-1)
    out = torch.einsum("eth,edh->etd", torch.nn.functional.silu(gate) * up, moe.w_out)
    return (out * gates.t()[..., None]).sum(0).view(x.shape)


def timed(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    moe = MixtureOfExperts(args.d_model, n_experts=args.experts, top_k=args.top_k, hidden=args.hidden)
    x = torch.randn(1, args.tokens, args.d_model, requires_grad=True)
    with torch.no_grad():
        diff = (moe(x) - dense(moe, x)).abs().max().item()
    print(f"d_model {args.d_model}, expert hidden {args.hidden}, {args.experts} experts, top-{args.top_k}, "
          f"{args.tokens} tokens, {torch.get_num_threads()} threads; max |sparse - dense| = {diff:.2e}")
    for label, step in (("forward", lambda f: lambda: f(moe, x)),
                        ("forward+backward", lambda f: lambda: f(moe, x).sum().backward())):
        results = {}
        for name, f in (("sparse", MixtureOfExperts.forward), ("dense", dense)):
            if label == "forward":
                with torch.no_grad():
                    results[name] = timed(step(f), args.rounds)
            else:
                results[name] = timed(step(f), args.rounds)
        print(f"{label:17s} sparse {results['sparse']:8.2f} ms   dense {results['dense']:8.2f} ms   "
              f"dense/sparse {results['dense'] / results['sparse']:.2f}x   (expected about "
              f"{args.experts / args.top_k:.1f}x in matmuls)")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
