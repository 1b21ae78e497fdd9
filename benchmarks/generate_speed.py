"""Generation speed: the builder's KV-cached greedy decoding against transformers' ``generate`` with its cache.

    python benchmarks/generate_speed.py [--rounds 7] [--prompt 32] [--new 128] [--batch 1] [--threads 2] [--no-compile]

A Llama-shaped model (rotary, RMSNorm, SwiGLU, 8 query heads on 2 key/value heads, no biases, untied;
d_model 512, 8 layers, vocab 32,000) built by the builder and the same shape built as transformers'
LlamaForCausalLM, fp32, timed in alternating rounds in one process (who goes first rotates): each round
decodes ``--new`` tokens greedily after a ``--prompt``-token prompt. Prints the median tokens/s of each
and the median of the per-round ratios. ``--tiny`` shrinks everything (a smoke test).

Four decoders take part (two with ``--no-compile``):
- eager: the builder's ``generate`` against transformers' ``generate`` with its default (dynamic) cache;
- compiled: the builder's ``generate(compile=True)`` (a ``torch.compile``d step over a static cache) against
  transformers' own recipe for it, ``generate(cache_implementation="static")`` with ``model.forward`` compiled.
  Each is compiled by a first, untimed decode of the same length; the seconds it took are printed.

It also prints each model's ceiling: the tokens/s a decoding step would reach if it did nothing but its
matrix-vector products, every ``nn.Linear`` weight read once through ``F.linear`` at the batch size (the
embedding is a lookup of one row), timed between the rounds, best of all; how fast that reads memory; and
what share of it each decoder reaches: the rest of a token is per-op work outside the products.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import builder  # noqa: E402
from builder.generate import generate  # noqa: E402

SHAPE = {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 2, "hidden": 1376, "vocab_size": 32000}
TINY = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden": 96, "vocab_size": 300}


def ours(shape: dict, context: int):
    cfg = builder.compose([
        "model=llama2_7b", f"model.d_model={shape['d_model']}", f"model.n_layers={shape['n_layers']}",
        f"model.n_heads={shape['n_heads']}", f"model.attention.n_kv_heads={shape['n_kv_heads']}",
        f"model.mlp.hidden={shape['hidden']}", f"model.vocab_size={shape['vocab_size']}",
        f"model.context_length={context}"]).model
    return builder.build_model(cfg).eval()


def theirs(shape: dict, context: int):
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=shape["d_model"], num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"], intermediate_size=shape["hidden"], vocab_size=shape["vocab_size"],
        max_position_embeddings=context, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0,
        eos_token_id=None, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def linear_weights(model) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


@torch.no_grad()
def linear_seconds(model, batch: int) -> float:
    """Seconds for one pass of the model's matrix-vector products alone: each linear weight read once."""
    weights = linear_weights(model)
    inputs = [torch.randn(batch, w.shape[1]) for w in weights]
    start = time.perf_counter()
    for x, w in zip(inputs, weights):
        torch.nn.functional.linear(x, w)
    return time.perf_counter() - start


def time_ours(model, ids, new: int, compile: bool = False) -> float:
    start = time.perf_counter()
    out = generate(model, ids, new, temperature=0.0, compile=compile)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new
    return ids.shape[0] * new / elapsed


@torch.no_grad()
def time_theirs(model, ids, new: int, static: bool = False) -> float:
    extra = {"cache_implementation": "static"} if static else {}
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, use_cache=True, **extra)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new
    return ids.shape[0] * new / elapsed


def decoders(a, b, b_compiled) -> dict:
    """name -> a callable(ids, new) -> tokens/s."""
    out = {"builder": lambda ids, new: time_ours(a, ids, new),
           "transformers": lambda ids, new: time_theirs(b, ids, new)}
    if b_compiled is not None:
        out["builder compiled"] = lambda ids, new: time_ours(a, ids, new, compile=True)
        out["transformers compiled"] = lambda ids, new: time_theirs(b_compiled, ids, new, static=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a tiny shape: checks the script runs")
    parser.add_argument("--no-compile", action="store_true", help="the eager decoders only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = TINY if args.tiny else SHAPE
    context = args.prompt + args.new
    torch.manual_seed(0)
    a, b = ours(shape, context), theirs(shape, context)
    n_a, n_b = sum(p.numel() for p in a.parameters()), sum(p.numel() for p in b.parameters())
    if n_a != n_b:
        sys.exit(f"the two models differ in size: builder {n_a:,} vs transformers {n_b:,} parameters")
    b_compiled = None
    if not args.no_compile:  # a second transformers model with the same weights, its forward compiled
        b_compiled = theirs(shape, context)
        b_compiled.load_state_dict(b.state_dict())
        b_compiled.forward = torch.compile(b_compiled.forward, fullgraph=True)
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.prompt))
    runs = decoders(a, b, b_compiled)
    compile_s = {}
    for name, run in runs.items():  # warm-up; the compiled ones compile here, at the timed length
        start = time.perf_counter()
        run(ids, args.new)
        compile_s[name] = time.perf_counter() - start
    rates = {name: [] for name in runs}
    floor_a, floor_b = [], []  # the matrix-vector products' time, per model, each round
    names = list(runs)
    for r in range(args.rounds):
        for model, floors in ((a, floor_a), (b, floor_b)):
            floors.append(min(linear_seconds(model, args.batch) for _ in range(5)))
        for name in names[r % len(names):] + names[: r % len(names)]:
            rates[name].append(runs[name](ids, args.new))
    mine, other = rates["builder"], rates["transformers"]
    ratios = [x / y for x, y in zip(mine, other)]
    import transformers

    print(f"Llama-shaped {shape} ({n_a:,} parameters), batch {args.batch}, prompt {args.prompt}, {args.new} new "
          f"tokens greedy, fp32, {args.threads} threads; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {platform.machine()}; medians of {args.rounds} alternating rounds")
    print(f"builder {statistics.median(mine):9.1f} tok/s   transformers {statistics.median(other):9.1f} tok/s   "
          f"ratio {statistics.median(ratios):.2f}x")
    if b_compiled is not None:
        ours_c, theirs_c = rates["builder compiled"], rates["transformers compiled"]
        seconds = {name: compile_s[name] - args.new / statistics.median(rates[name]) for name in compile_s}
        print(f"compiled: builder {statistics.median(ours_c):9.1f} tok/s   transformers {statistics.median(theirs_c):9.1f} "
              f"tok/s   ratio {statistics.median(x / y for x, y in zip(ours_c, theirs_c)):.2f}x   (compiling took "
              f"{seconds['builder compiled']:.0f} s and {seconds['transformers compiled']:.0f} s)")
        print(f"builder compiled over transformers' eager generate: "
              f"{statistics.median(x / y for x, y in zip(ours_c, other)):.2f}x")
    for name, model, floors in (("builder", a, floor_a), ("transformers", b, floor_b)):
        best, size = min(floors), sum(w.numel() * w.element_size() for w in linear_weights(model))
        ceiling = args.batch / best
        compiled = rates.get(f"{name} compiled")
        print(f"{name:12s} ceiling {ceiling:9.1f} tok/s (its {size / 2**20:,.0f} MiB of linear weights read at "
              f"{size / best / 1e9:.1f} GB/s); "
              f"decoding reaches {100 * statistics.median(rates[name]) / ceiling:.0f}% of it"
              + (f", compiled {100 * statistics.median(compiled) / ceiling:.0f}%" if compiled else ""))
    print(f"the most a decoder with the builder's weights could reach over transformers here: "
          f"{args.batch / min(floor_a) / statistics.median(other):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
