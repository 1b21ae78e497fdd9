"""Training throughput: the builder's models against the same shapes written by others.

    python benchmarks/train_throughput.py [--rounds 25] [--steps 1] [--modes fp32,bf16,fp32+compile,bf16+compile]
    python benchmarks/train_throughput.py --against handwritten [--context 512]   # a plain-PyTorch GPT (below)
    python benchmarks/train_throughput.py --arch llama                            # against LlamaForCausalLM
    python benchmarks/train_throughput.py --device cuda --preset gpt2_small --batch 16 --modes bf16,bf16+compile

``--against transformers`` (the default) compares with transformers' GPT2LMHeadModel (``--arch gpt2``) or
LlamaForCausalLM (``--arch llama``: rotary, RMSNorm, SwiGLU, 6 query heads on 2 key/value heads, no biases,
untied); ``--against handwritten`` with ``HandGPT`` below, the fastest GPT-2 block plain PyTorch offers
(fused QKV, SDPA, tied head): what the registry and its components must cost nothing against.

Same shape for both (6 layers, 6 heads, d_model 384, context 256, vocab 65, batch 8), same
parameter count, same optimizer (fused AdamW, as the builder's training uses; `--optimizer foreach`
for the other one), timed in alternating rounds in one process: each round runs `--steps` training
steps (forward, cross-entropy, backward, AdamW) of each model, short enough that both meet the same
machine load, and who goes first alternates. Reports the median tokens/s of each, the median of the
per-round ratios, and MFU: model FLOPs/s (training FLOPs per token from the parameter budget) over
the best matmul rate measured between the rounds at the same thread count (on a GPU: the data
sheet's dense peak, as the trainer's perf/mfu). `--preset` takes any GPT-2-shaped model preset instead.

``--breakdown`` then profiles a few steps of each model (torch.profiler, CPU) and splits each step's time
into matrix multiplies, the attention kernel and everything else, and prints the ratio the builder would
reach over the other model if everything else cost it nothing: the most any eager rewrite of the
elementwise work could give.
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
from builder.training.throughput import matmul_peak, peak_flops  # noqa: E402

SHAPE = {"n_layers": 6, "n_heads": 6, "d_model": 384, "context_length": 256, "vocab_size": 65}
BATCH = 8
GPT2_PARTS = {"embedding": "learned", "attention": "multi_head", "mask": "causal", "mlp": "gelu", "norm": "layernorm"}
LLAMA_PARTS = {"embedding": "rotary", "attention": "grouped_query", "mask": "causal", "mlp": "swiglu", "norm": "rmsnorm"}
LLAMA_KV_HEADS = 2


def model_config(preset: str | None, arch: str = "gpt2", context: int | None = None):
    """The builder's config: the small shape (GPT-2's or Llama's block), or a preset of that architecture."""
    parts = GPT2_PARTS if arch == "gpt2" else LLAMA_PARTS
    if preset is None:
        shape = {**SHAPE, **({"context_length": context} if context else {})}
        base = [] if arch == "gpt2" else ["model=llama2_7b", f"model.attention.n_kv_heads={LLAMA_KV_HEADS}",
                                          "model.mlp.hidden=1024"]
        return builder.compose(base + [f"model.{k}={v}" for k, v in shape.items()] + ["model.dropout=0.0"]).model
    cfg = builder.compose([f"model={preset}", "model.dropout=0.0"] + ([f"model.context_length={context}"] if context
                                                                       else [])).model
    got = {kind: cfg[kind].name for kind in parts}
    plain = cfg.norm.get("layout", "pre") == "pre" and all(
        not cfg.attention.get(k) for k in ("qkv_bias", "qk_norm", "softcap", "query_scale"))
    if got != parts or not plain or (arch == "gpt2" and cfg.d_head not in (None, cfg.d_model // cfg.n_heads)):
        sys.exit(f"--preset {preset}: not a plain {arch} shape ({got}); pick "
                 + ("a gpt2_* or gpt3_* preset" if arch == "gpt2" else "llama2_7b, llama3_8b or llama3_70b"))
    return cfg


class HandBlock(torch.nn.Module):
    """LayerNorm -> fused QKV -> SDPA -> W_o, LayerNorm -> 4d GELU MLP, both residual."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc, self.out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class HandGPT(torch.nn.Module):
    """GPT-2 written by hand in plain PyTorch: token + position embeddings, blocks, final norm, tied head."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, context: int):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, d), torch.nn.Embedding(context, d)
        self.blocks = torch.nn.ModuleList(HandBlock(d, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def theirs(cfg, arch: str = "gpt2", against: str = "transformers"):
    """The other model of the same shape, and whether it returns transformers' output object."""
    if against == "handwritten":
        if arch != "gpt2":
            sys.exit("--against handwritten writes GPT-2's block; use --arch gpt2")
        return HandGPT(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.context_length), False
    import transformers

    if arch == "llama":
        hf = transformers.LlamaConfig(
            hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.attention.n_kv_heads, head_dim=cfg.d_head or cfg.d_model // cfg.n_heads,
            intermediate_size=cfg.mlp.hidden, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.context_length,
            rms_norm_eps=cfg.norm.eps, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.embedding.base})
        return transformers.LlamaForCausalLM(hf), True
    hf = transformers.GPT2Config(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                                 n_positions=cfg.context_length, vocab_size=cfg.vocab_size,
                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(hf), True


def step_fn(model, hf: bool, bf16: bool, compiled: bool, optimizer: str = "fused", device: str = "cpu"):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **{optimizer: True})
    forward = torch.compile(model) if compiled else model

    def step(x, y):
        ctx = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = forward(x).logits if hf else forward(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def breakdown(step, x, y, steps: int = 3) -> dict:
    """Seconds per step in matrix multiplies, in the attention kernel (forward and backward) and in the rest."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(steps):
            step(x, y)
    parts = {"matmul": 0.0, "attention": 0.0, "rest": 0.0}
    for event in prof.key_averages():
        part = ("matmul" if event.key in MATMUL_OPS else
                "attention" if "scaled_dot_product" in event.key or "flash_attention" in event.key else "rest")
        parts[part] += event.self_cpu_time_total / 1e6 / steps
    return parts


def run(rounds: int, steps: int, bf16: bool, compiled: bool, optimizer: str = "fused", preset: str | None = None,
        batch: int = BATCH, device: str = "cpu", arch: str = "gpt2", against: str = "transformers",
        context: int | None = None, profile: bool = False) -> dict:
    torch.manual_seed(0)
    cfg = model_config(preset, arch, context)
    budget = builder.parameter_budget(cfg)
    need = 2 * 16 * budget["total_params"]  # two models: weights, grads, AdamW's m and v
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        sys.exit(f"--preset {preset}: two fp32 models with gradients and AdamW state need {need / 2**30:.1f} GiB before "
                 f"activations; {device} has {free / 2**30:.1f} GiB free")
    other, other_hf = theirs(cfg, arch, against)
    a, b = builder.build_model(cfg).to(device), other.to(device)
    n_a, n_b = sum(p.numel() for p in a.parameters()), sum(p.numel() for p in b.parameters())
    flops = budget["flops_per_token"]["training"]
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), generator=g).to(device) for _ in range(2))
    sa, sb = (step_fn(m, hf, bf16, compiled, optimizer, device) for m, hf in ((a, False), (b, other_hf)))
    for _ in range(3 if compiled else 2):  # warm-up (and compilation)
        sa(x, y)
        sb(x, y)
    tokens = batch * cfg.context_length * steps
    rate_a, rate_b, peaks = [], [], []
    for i in range(rounds):
        # who goes first alternates, so a drift in the machine's speed favours neither
        for fn, rates in ((sa, rate_a), (sb, rate_b)) if i % 2 == 0 else ((sb, rate_b), (sa, rate_a)):
            start = time.perf_counter()
            for _ in range(steps):
                fn(x, y)
            rates.append(tokens / (time.perf_counter() - start))
        if device == "cpu":
            peaks.append(matmul_peak(torch.bfloat16 if bf16 else torch.float32, seconds=0.1))
    # the machine is shared: its best matmul rate over the rounds is the practical peak
    peak = max(peaks) if peaks else peak_flops("bf16-mixed" if bf16 else "32-true")[0]
    ma, mb = statistics.median(rate_a), statistics.median(rate_b)
    ratio = statistics.median(x / y for x, y in zip(rate_a, rate_b))
    out = {"ours": ma, "theirs": mb, "ratio": ratio, "params": (n_a, n_b), "mfu": ma * flops / peak,
           "mfu_theirs": mb * flops / peak, "peak": peak}
    if profile:
        out["breakdown"] = (breakdown(sa, x, y), breakdown(sb, x, y))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--modes", default="fp32,bf16,fp32+compile,bf16+compile")
    parser.add_argument("--optimizer", choices=["fused", "foreach"], default="fused")
    parser.add_argument("--preset", default=None, help="a GPT-2-shaped model preset instead of the small shape")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2", help="the block both models use")
    parser.add_argument("--against", choices=["transformers", "handwritten"], default="transformers")
    parser.add_argument("--context", type=int, default=None, help="the context length (default: the shape's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="profile each model's step: matmul, attention and the rest, and the ratio's ceiling")
    args = parser.parse_args()
    where = (torch.cuda.get_device_name() if args.device == "cuda" else
             f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    shape = args.preset or {**SHAPE, **({"context_length": args.context} if args.context else {})}
    print(f"{where}, torch {torch.__version__}; {args.arch} model {shape}, batch {args.batch}; {args.optimizer} "
          f"AdamW; median of {args.rounds} alternating rounds x {args.steps} steps")
    results = {}
    for mode in args.modes.split(","):
        r = run(args.rounds, args.steps, bf16="bf16" in mode, compiled="compile" in mode, optimizer=args.optimizer,
                preset=args.preset, batch=args.batch, device=args.device, arch=args.arch, against=args.against,
                context=args.context, profile=args.breakdown)
        results[mode] = r
        print(f"{mode:14s} builder {r['ours']:8.0f} tok/s   {args.against} {r['theirs']:8.0f} tok/s   "
              f"ratio {r['ratio']:.2f}x   MFU {100 * r['mfu']:.1f}% (theirs {100 * r['mfu_theirs']:.1f}%) "
              f"of {r['peak'] / 1e9:.0f} GFLOP/s   params {r['params'][0]:,} vs {r['params'][1]:,}")
        if "breakdown" in r:
            for name, parts in zip(("builder", args.against), r["breakdown"]):
                total = sum(parts.values())
                print(f"{'':14s} {name:12s} {1000 * total:7.1f} ms/step under the profiler: " + ", ".join(
                    f"{part} {1000 * t:.1f} ms ({100 * t / total:.0f}%)" for part, t in parts.items()))
            mine, other = r["breakdown"]
            print(f"{'':14s} profiled ratio {sum(other.values()) / sum(mine.values()):.2f}x; with the builder's "
                  f"'rest' at zero: {sum(other.values()) / (mine['matmul'] + mine['attention']):.2f}x")
    if "fp32" in results and "bf16" in results:
        print(f"bf16 builder vs {args.against} fp32: {results['bf16']['ours'] / results['fp32']['theirs']:.2f}x")


if __name__ == "__main__":
    main()
