"""Hook points with nothing attached cost nothing: training tokens/s against the components before they had them.

    python benchmarks/hooks_overhead.py [--rounds 15] [--steps 2] [--before REF] [--arch gpt2|llama]

Loads ``components/`` as it was at ``REF`` (default: the parent of the commit that added components/hooks.py)
beside today's, as a second package, and gives one model both: the same parameters, today's classes (every
``hook_*`` point in place, nothing attached) against the earlier classes (no hook points at all). Checks that the
two give the same logits bit for bit, then times training steps (forward, cross-entropy, backward, AdamW) of each
in alternating rounds, who goes first alternating, and prints the median tokens/s of each and the median of the
per-round ratios. The shape is train_throughput.py's (6 layers, 6 heads, d_model 384, context 256, batch 8).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_throughput import BATCH, model_config  # noqa: E402

import builder  # noqa: E402


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout


def components_at(ref: str, into: Path):
    """``components/`` of commit ``ref``, imported as the package ``components_before``."""
    with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", ref, "components"))) as tar:
        tar.extractall(into, filter="data")
    spec = importlib.util.spec_from_file_location("components_before", into / "components" / "__init__.py",
                                                  submodule_search_locations=[str(into / "components")])
    package = importlib.util.module_from_spec(spec)
    sys.modules["components_before"] = package
    spec.loader.exec_module(package)
    return package


def as_before(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose modules are the earlier package's classes (the hook points stay, never called)."""
    old = copy.deepcopy(model)
    for module in old.modules():
        name = type(module).__module__
        if name.startswith("components.") and name != "components.hooks":
            module.__class__ = getattr(sys.modules["components_before" + name[len("components"):]],
                                       type(module).__name__)
        if hasattr(module, "qkv"):
            module.recorder = None  # what the earlier attention read
    return old


def train_step(model, optimizer, ids):
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="training steps of each model per round")
    parser.add_argument("--before", default=None, help="the commit whose components/ is the baseline")
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--preset", default=None, help="a model preset instead of the small shape")
    args = parser.parse_args()
    before = args.before or git("log", "--diff-filter=A", "--format=%H", "-1", "--", "components/hooks.py").decode()
    before = before.strip() + ("^" if args.before is None else "")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        components_at(before, Path(tmp))
        cfg = model_config(args.preset, args.arch)
        hooked = builder.build_model(cfg)
        plain = as_before(hooked)
    vocab, context = cfg.vocab_size, cfg.context_length
    ids = torch.randint(0, vocab, (BATCH, context + 1))
    with torch.no_grad():
        same = torch.equal(hooked.eval()(ids[:, :-1]), plain.eval()(ids[:, :-1]))
    print(f"baseline: components/ at {git('rev-parse', '--short', before).decode().strip()}; "
          f"{len(hooked.hook_dict)} hook points, none attached; logits bit-identical: {same}")
    models = {"hook points": hooked.train(), "no hook points": plain.train()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}
    for name, m in models.items():  # warm-up
        train_step(m, optimizers[name], ids)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(models[name], optimizers[name], ids)
            rates[name].append(args.steps * BATCH * context / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name:15s} median {statistics.median(values):9.0f} tokens/s")
    point, x = next(iter(hooked.hook_dict.values())), torch.zeros(1)
    idle = (timeit.timeit(lambda: point(x), number=100_000) - timeit.timeit(lambda: x, number=100_000)) / 100_000
    step = BATCH * context / statistics.median(rates["no hook points"])
    print(f"an idle hook point's call: {1e9 * idle:.0f} ns; {len(hooked.hook_dict)} per forward pass = "
          f"{1e6 * idle * len(hooked.hook_dict):.0f} us, {100 * idle * len(hooked.hook_dict) / step:.3f}% of a "
          f"training step ({1000 * step:.0f} ms)")
    ratios = [a / b for a, b in zip(rates["hook points"], rates["no hook points"])]
    print(f"hook points / no hook points: median per-round ratio {statistics.median(ratios):.3f} "
          f"({args.rounds} rounds of {args.steps} steps, {torch.get_num_threads()} threads)")
    if not same:
        raise SystemExit("the logits differ")


if __name__ == "__main__":
    main()
