"""What training a model on many GPUs takes: ``task=plan``.

From the exact parameter budget (builder/budget.py) and the one memory estimate (builder/memory.py
``training_memory``), for a token budget on a kind of GPU (conf/plan/default.yaml's table of data sheets):

* the training FLOPs: 6 x parameters x tokens (forward 2, backward 4 per parameter and token) plus attention's
  two matmuls at the context length s, 6·L·s·a·d_head per token, halved for the causal mask (a fused causal kernel
  skips the masked half); and Chinchilla's compute-optimal token count, 20 x parameters;
* for each layout: DDP, FSDP (full sharding over every GPU), FSDP with per-block activation checkpointing, and FSDP
  across nodes with Megatron-style tensor parallelism within a node (with activation checkpointing): the memory
  per GPU (the estimate with that sharding and checkpointing applied) split into weights, gradients, optimizer
  states, activations, logits, FSDP's working copies and the allowance (``plan.reserve`` of the GPU's memory),
  whether it fits, and the fewest GPUs that fit;
* the step time: the FLOPs at ``plan.mfu`` of the dense peak (4/3 of them with checkpointing: the forward runs
  twice), plus the communication that cannot overlap it — per micro-batch FSDP all-gathers the parameters twice
  (forward, backward) in the compute dtype and reduce-scatters the gradients in fp32, which overlaps the compute
  except the first block's gather and the last block's reduce-scatter and any excess; DDP all-reduces the fp32
  gradients once a step, overlapping the last micro-batch's backward; tensor parallelism all-reduces each block's
  activations twice in the forward and twice in the backward (twice more in the recompute), none of it overlapped.
  Ring collectives move (n - 1)/n of the data (twice for an all-reduce) at each GPU's link bandwidth: NVLink
  within a node, the network past one node;
* tokens/s per GPU, wall-clock days, GPU-hours and cost to the token budget, and the command that launches the
  chosen layout with this project (and its SLURM form through the submitit launcher, conf/hydra/launcher/slurm.yaml).
"""

from __future__ import annotations

import math
from dataclasses import asdict

from .config import parallel
from .errors import ConfigError
from .memory import GIB, block_params, training_memory
from .report import human
from .tables import table

LAYOUTS = {"ddp": "DDP", "fsdp": "FSDP", "fsdp_ac": "FSDP + act. ckpt", "tp": "FSDP + TP in node + act. ckpt"}
CHINCHILLA_TOKENS_PER_PARAM = 20
MAX_GPUS = 1 << 24  # the most GPUs searched when no count is given
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "working", "allowance")


def training_flops(budget: dict, context_length: int, tokens: float) -> dict:
    """Training FLOPs for ``tokens`` tokens of ``context_length``: 6·P·D plus causal attention, 6·L·s·a·d_head·D."""
    m, params = budget["config"], budget["total_params"]
    attention_per_token = 6 * m["n_layers"] * context_length * m["n_heads"] * m["d_head"]
    per_token = 6 * params + attention_per_token
    return {"flops_params": 6 * params * tokens, "flops_attention": attention_per_token * tokens,
            "flops_total": per_token * tokens, "flops_per_token": per_token,
            "attention_share": attention_per_token / per_token, "context_length": context_length}


def _tensor_parallel(n: int, per_node: int, model_cfg: dict | None = None) -> int:
    """The tensor-parallel degree on n GPUs: the largest power of two up to a node that divides n (and that the
    trainer splits ``model_cfg`` by: its heads, key/value heads and hidden width; builder/config/parallel.py)."""
    t = 1
    while t * 2 <= per_node and n % (t * 2) == 0 and not (model_cfg and any(parallel.problems(model_cfg, t * 2))):
        t *= 2
    return t


def layout_memory(layout: str, budget: dict, n: int, batch_size: int, context_length: int, precision: str,
                  gpu, reserve: float, model_cfg: dict | None = None, kernel: str = "fused") -> dict | None:
    """The memory per GPU of ``layout`` on ``n`` GPUs (bytes), with ``fits``; None where the layout does not apply
    (tensor parallelism on an odd count, or on a model the trainer does not split: ``model_cfg``). The estimate is
    ``training_memory``'s ``least``: the activations as the model's blocks keep them with a GPU's fused attention
    (``kernel``; builder/activations.py)."""
    t = _tensor_parallel(n, gpu.gpus_per_node, model_cfg) if layout == "tp" else 1
    if layout == "tp" and t == 1:
        return None
    shards = {"ddp": 1, "fsdp": n, "fsdp_ac": n, "tp": n // t}[layout]
    est = training_memory(budget, batch_size, context_length, precision, shards=shards,
                          checkpointing=layout in ("fsdp_ac", "tp"), tensor_parallel=t, kernel=kernel)
    capacity = int(gpu.memory_gib * GIB)
    parts = {k: est[k] for k in MEMORY_PARTS[:-1]}
    parts["allowance"] = int(reserve * capacity)
    total = sum(parts.values())
    return {**parts, "total": total, "capacity": capacity, "fits": total <= capacity, "gpus": n,
            "tensor_parallel": t, "data_parallel": n // t, "checkpointing": est["checkpointing"]}


def _count(i: int, per_node: int, tp: bool) -> int:
    """The i-th GPU count searched (i >= 1): 1 .. a node, then whole nodes; tensor parallel: whole nodes only."""
    if tp:
        return per_node * i
    return i if i <= per_node else per_node * (i - per_node + 1)


def min_gpus(layout: str, budget: dict, batch_size: int, context_length: int, precision: str, gpu,
             reserve: float, model_cfg: dict | None = None, limit: int = MAX_GPUS) -> int | None:
    """The fewest GPUs (up to ``limit``) on which ``layout`` fits; None when none does. Memory per GPU only falls
    as GPUs are added, so the counts are bisected."""
    per_node, tp = gpu.gpus_per_node, layout == "tp"

    def fits(i: int) -> bool:
        mem = layout_memory(layout, budget, _count(i, per_node, tp), batch_size, context_length, precision, gpu,
                            reserve, model_cfg)
        return bool(mem and mem["fits"])

    if layout == "ddp":
        return 1 if fits(1) else None
    last = limit // per_node if tp else (limit if limit <= per_node else per_node + limit // per_node - 1)
    if last < 1:
        return None
    hi = 1
    while hi < last and not fits(hi):
        hi = min(2 * hi, last)
    if not fits(hi):
        return None
    lo = 0  # fits(lo) is False (or lo is 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return _count(hi, per_node, tp)


def step_time(layout: str, mem: dict, budget: dict, flops: dict, gpu, settings) -> dict:
    """Seconds per optimizer step of ``layout`` (its memory ``mem`` on ``mem['gpus']`` GPUs) and what follows from
    it: tokens/s per GPU, days, GPU-hours, cost (``settings``: tokens, batch_size, context_length, precision, mfu,
    global_batch, price_per_gpu_hour)."""
    n, t, dp = mem["gpus"], mem["tensor_parallel"], mem["data_parallel"]
    b, s = settings["batch_size"], settings["context_length"]
    accumulate = max(1, math.ceil(settings["global_batch"] / (b * dp))) if settings["global_batch"] else 1
    tokens_per_step = b * s * dp * accumulate
    bf16 = settings["precision"].startswith("bf16")
    peak = (gpu.bf16_tflops if bf16 else gpu.fp32_tflops) * 1e12
    compute = flops["flops_per_token"] * b * s / t * (4 / 3 if mem["checkpointing"] else 1) / (peak * settings["mfu"])
    params = budget["total_params"]
    link = (gpu.intra_node_gbps if n <= gpu.gpus_per_node else gpu.inter_node_gbps) * 1e9
    ring = (dp - 1) / dp
    if layout == "ddp":  # the fp32 gradients all-reduced once a step, under the last micro-batch's backward
        comm = 2 * ring * params * 4 / link
        exposed = max(0.0, comm - compute * 2 / 3)
        step = accumulate * compute + exposed
    else:
        gathered = 2 if bf16 else 4
        comm = ring * params / t * (2 * gathered + 4) / link  # per micro-batch: 2 all-gathers, 1 reduce-scatter
        unit = ring * block_params(budget) / t * (gathered + 4) / link  # the first gather, the last reduce-scatter
        exposed = max(0.0, comm - compute) + unit
        if t > 1:
            m = budget["config"]
            passes = 6 if mem["checkpointing"] else 4
            exposed += passes * m["n_layers"] * 2 * (t - 1) / t * b * s * m["d_model"] * (2 if bf16 else 4) \
                / (gpu.intra_node_gbps * 1e9)
        step = accumulate * (compute + exposed)
    steps = math.ceil(settings["tokens"] / tokens_per_step)
    seconds = steps * step
    per_gpu = tokens_per_step / step / n
    return {"accumulate_grad_batches": accumulate, "global_batch": b * dp * accumulate,
            "tokens_per_step": tokens_per_step, "steps": steps, "compute_s": accumulate * compute,
            "exposed_comm_s": step - accumulate * compute, "step_s": step, "tokens_per_s_per_gpu": per_gpu,
            "mfu_achieved": flops["flops_per_token"] * per_gpu / peak, "days": seconds / 86400,
            "gpu_hours": seconds * n / 3600, "cost": seconds * n / 3600 * settings["price_per_gpu_hour"],
            "peak_flops": peak}


def _gpus_asked(plan_cfg, gpu) -> int | None:
    if plan_cfg.gpus is not None:
        return plan_cfg.gpus
    return plan_cfg.nodes * gpu.gpus_per_node if plan_cfg.nodes is not None else None


def make_plan(budget: dict, plan_cfg, batch_size: int, context_length: int, model_cfg: dict | None = None) -> dict:
    """The plan (a JSON-ready dict) for the model of ``budget`` under ``plan_cfg`` (the checked PlanConfig), with
    ``data.batch_size`` windows of ``context_length`` tokens per GPU and micro-batch. ConfigError when the model
    fits nowhere in the limits given. ``model_cfg`` (the plain model config): tensor parallelism only in a degree
    the trainer splits it by (none for a mixture of experts or latent attention)."""
    gpu = plan_cfg.accelerators[plan_cfg.gpu]
    params = budget["total_params"]
    tokens = plan_cfg.tokens if plan_cfg.tokens is not None else CHINCHILLA_TOKENS_PER_PARAM * params
    flops = training_flops(budget, context_length, tokens)
    args = (budget, batch_size, context_length, plan_cfg.precision, gpu, plan_cfg.reserve, model_cfg)
    asked = _gpus_asked(plan_cfg, gpu)
    fewest = {name: min_gpus(name, *args) for name in LAYOUTS}
    possible = [v for v in fewest.values() if v is not None]
    if not possible:
        raise fits_nowhere(budget, plan_cfg, gpu, batch_size, context_length, None)
    n = asked or min(possible)
    if asked is None and n > gpu.gpus_per_node:
        n = math.ceil(n / gpu.gpus_per_node) * gpu.gpus_per_node
    settings = {"tokens": tokens, "batch_size": batch_size, "context_length": context_length,
                "precision": plan_cfg.precision, "mfu": plan_cfg.mfu, "global_batch": plan_cfg.global_batch,
                "price_per_gpu_hour": plan_cfg.price_per_gpu_hour}
    layouts = {}
    for name in LAYOUTS:
        mem = layout_memory(name, *args[:1], n, *args[1:])
        entry = {"layout": LAYOUTS[name], "min_gpus": fewest[name]}
        if mem is None:
            refused = next(parallel.problems(model_cfg, 2), None) if model_cfg else None
            entry.update(fits=False, note=f"the trainer does not split this model: {refused[0]}={refused[1]!r}"
                         if refused else f"tensor parallelism needs an even number of GPUs, not {n}")
        else:
            entry.update(memory=mem, fits=mem["fits"], **step_time(name, mem, budget, flops, gpu, settings))
        layouts[name] = entry
    fitting = [k for k, v in layouts.items() if v["fits"]]
    if not fitting:
        raise fits_nowhere(budget, plan_cfg, gpu, batch_size, context_length, asked, fewest)
    # the fastest that fits; tensor parallelism (its all-reduces exposed, with activation checkpointing) only when
    # nothing else does
    chosen = min(fitting, key=lambda k: (k == "tp", layouts[k]["days"]))
    nodes = plan_cfg.nodes or math.ceil(n / gpu.gpus_per_node)
    if "fsdp" in fitting or "ddp" in fitting:
        layouts["tp"]["note"] = "not needed: FSDP alone fits"
    return {"model": budget.get("model"), "params": params, "tokens": tokens,
            "chinchilla_tokens": CHINCHILLA_TOKENS_PER_PARAM * params, **flops,
            "gpu": plan_cfg.gpu, "accelerator": asdict(gpu),
            "gpus": n, "nodes": nodes, "gpus_per_node": n // nodes, "min_gpus": min(possible),
            "precision": plan_cfg.precision,
            "mfu": plan_cfg.mfu, "batch_size": batch_size, "context_length": context_length,
            "price_per_gpu_hour": plan_cfg.price_per_gpu_hour, "reserve": plan_cfg.reserve, "layouts": layouts,
            "chosen": chosen}


def fits_nowhere(budget, plan_cfg, gpu, batch_size, context_length, asked, fewest=None) -> ConfigError:
    """The refusal of a model that fits in none of the layouts within the GPUs given (or any count)."""
    capacity = gpu.memory_gib * (1 - plan_cfg.reserve)
    where = f"on any number of {plan_cfg.gpu} GPUs (up to {MAX_GPUS:,})"
    known = {k: v for k, v in (fewest or {}).items() if v is not None}
    if asked and known:
        best = min(known, key=known.get)
        key = "plan.gpus" if plan_cfg.gpus is not None else "plan.nodes"
        return ConfigError(key, getattr(plan_cfg, key.split(".")[1]), f"a count of GPUs on which training fits: "
                           f"{budget.get('model') or 'the model'} ({human(budget['total_params'])} parameters) needs "
                           f"at least {known[best]} {plan_cfg.gpu} GPUs ({LAYOUTS[best]}) at data.batch_size="
                           f"{batch_size} windows of {context_length} tokens; use {key}="
                           f"{math.ceil(known[best] / (1 if key == 'plan.gpus' else gpu.gpus_per_node))} or more, or "
                           f"a shorter data.context_length" + (" or smaller data.batch_size" if batch_size > 1 else ""))
    most = min(GIB * gpu.memory_gib * 2, 1e30)
    probe = layout_memory("tp", budget, max(gpu.gpus_per_node, 2) * (1 << 20), batch_size, context_length,
                          plan_cfg.precision, gpu, plan_cfg.reserve)
    need = (probe["activations"] + probe["logits"] + probe["working"]) / GIB if probe else most
    key, value = ("data.batch_size", batch_size) if batch_size > 1 else ("model", budget.get("model") or "the model")
    return ConfigError(key, value, f"a model and batch whose training fits {where}: even with activation "
                       f"checkpointing, tensor parallelism over {gpu.gpus_per_node} GPUs and the states sharded, each "
                       f"GPU needs {need:,.1f} GiB for the activations, logits and FSDP's working copies of "
                       f"data.batch_size={batch_size} windows of {context_length} tokens, beside the "
                       f"{capacity:,.1f} GiB a {plan_cfg.gpu} has past its allowance (plan.reserve={plan_cfg.reserve}); "
                       f"use a {'smaller data.batch_size or ' if batch_size > 1 else ''}shorter data.context_length, or a GPU "
                       f"with more memory (plan.gpu)")


# --------------------------------------------------------------------------------------------------
# the command that launches it
# --------------------------------------------------------------------------------------------------


def override_value(value) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, str) and (not value or any(c in value for c in " ,[]{}()=:'\"\\$*")):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def model_overrides(model_cfg: dict) -> list[str]:
    """Overrides that compose ``model_cfg`` (a full model config: every key, each component with its ``name``)."""
    out, settings = [], []
    for key, value in model_cfg.items():
        if isinstance(value, dict) and "name" in value:
            out.append(f"model/{key}={value['name']}")
            settings += [f"model.{key}.{k}={override_value(v)}" for k, v in value.items() if k != "name"]
        else:
            out.append(f"model.{key}={override_value(value)}")
    return out + settings


# keys the launch command sets itself (dropped from the plan's own overrides)
SET_BY_PLAN = ("task", "plan", "trainer", "checkpoint", "hydra", "data.batch_size", "data.context_length",
               "train.activation_checkpointing", "train.total_steps")


def launch_command(plan: dict, kept: list[str]) -> dict:
    """The ``hydraformer`` arguments that train the chosen layout (``args``) and their SLURM form (``slurm``):
    ``kept``, the plan's overrides that describe the model and data, then the trainer, the batch, gradient
    accumulation to the global batch, activation checkpointing, the precision and the steps to the token budget; the
    tensor-parallel layout with ``trainer.tensor_parallel`` (builder/training/tensor_parallel.py)."""
    layout = plan["layouts"][plan["chosen"]]
    n, nodes, per_node = plan["gpus"], plan["nodes"], plan["gpus_per_node"]
    trainer = "gpu" if n == 1 else ("ddp" if plan["chosen"] == "ddp" else "fsdp")
    split = [f"trainer.tensor_parallel={layout['memory']['tensor_parallel']}"] if plan["chosen"] == "tp" else []
    args = ["task=train", *kept, f"trainer={trainer}", f"trainer.devices={per_node}", f"trainer.num_nodes={nodes}",
            *split, f"trainer.precision={plan['precision']}", f"data.batch_size={plan['batch_size']}",
            f"data.context_length={plan['context_length']}",
            f"trainer.accumulate_grad_batches={layout['accumulate_grad_batches']}",
            f"trainer.max_steps={layout['steps']}"]
    if layout["memory"]["checkpointing"]:
        args.append("train.activation_checkpointing=true")
    slurm = ["-m", "hydra/launcher=slurm", f"hydra.launcher.nodes={nodes}", f"hydra.launcher.tasks_per_node={per_node}",
             f"hydra.launcher.gpus_per_node={per_node}", *args]
    return {"args": args, "slurm": slurm}


def kept_overrides(overrides: list[str]) -> list[str]:
    """The plan command's overrides that the training command keeps (model, data, training settings)."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    return [o for o in overrides if not any(key(o) == k or key(o).startswith((k + ".", k + "/")) for k in SET_BY_PLAN)]


def shell(args: list[str]) -> str:
    return "python run.py " + " ".join(a if all(c not in a for c in " '\"$[]{}*()") else f'"{a}"' for a in args)


# --------------------------------------------------------------------------------------------------
# the plan as text
# --------------------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f}"


def _days(d: float) -> str:
    return f"{d:,.1f}" if d >= 0.1 else f"{d * 24:,.2f} h"


def summary(plan: dict) -> str:
    """The lines ``task=plan`` prints: what is planned, the FLOPs, one row per layout."""
    acc = plan["accelerator"]
    head = [f"plan: {plan['model'] or 'the model'} ({human(plan['params'])} parameters) on {human(plan['tokens'])} "
            f"tokens, {plan['gpus']} x {plan['gpu']} ({plan['nodes']} node{'s' if plan['nodes'] > 1 else ''}), "
            f"{plan['precision']}, MFU {plan['mfu']:.2f} assumed, data.batch_size={plan['batch_size']} x "
            f"{plan['context_length']} tokens per GPU",
            f"training FLOPs {plan['flops_total']:.3g} = 6 x params x tokens ({plan['flops_params']:.3g}) + causal "
            f"attention at context {plan['context_length']} ({plan['flops_attention']:.3g}, "
            f"{100 * plan['attention_share']:.1f}%); Chinchilla-optimal: {human(plan['chinchilla_tokens'])} tokens "
            f"(20 x params)"]
    rows = []
    for name, v in plan["layouts"].items():
        mark = " <-" if name == plan["chosen"] else ""
        if "memory" not in v:
            rows.append([v["layout"] + mark, "-", "no", v["min_gpus"] or "none", "-", "-", "-", "-"])
            continue
        timing = [f"{v['tokens_per_s_per_gpu']:,.0f}", _days(v["days"]), f"{v['gpu_hours']:,.0f}",
                  f"${v['cost']:,.0f}"] if v["fits"] else ["-"] * 4  # (a layout that does not fit never runs)
        rows.append([v["layout"] + mark, f"{_gib(v['memory']['total'])} / {acc['memory_gib']:g}",
                     "yes" if v["fits"] else "no", v["min_gpus"] or "none", *timing])
    body = table(["layout", "GiB per GPU", "fits", "min GPUs", "tokens/s/GPU", "days", "GPU-hours", "cost"], rows)
    return "\n".join(head) + "\n\n" + body


def markdown(plan: dict, command: dict) -> str:
    """plan.md: the summary, the memory split and the timing per layout, the assumptions and the commands."""
    acc = plan["accelerator"]
    mem_rows, time_rows = [], []
    for v in plan["layouts"].values():
        if "memory" not in v:
            continue
        m = v["memory"]
        mem_rows.append([v["layout"], m["gpus"], m["tensor_parallel"], *(_gib(m[k]) for k in MEMORY_PARTS),
                         _gib(m["total"]), "yes" if v["fits"] else "no", v["min_gpus"] or "none"])
        if not v["fits"]:  # its time is of a run that cannot happen on these GPUs
            continue
        time_rows.append([v["layout"], v["accumulate_grad_batches"], v["global_batch"], f"{v['compute_s']:.3g}",
                          f"{v['exposed_comm_s']:.3g}", f"{v['step_s']:.3g}", f"{v['tokens_per_s_per_gpu']:,.0f}",
                          f"{v['mfu_achieved']:.3f}", _days(v["days"]), f"{v['gpu_hours']:,.0f}", f"${v['cost']:,.0f}"])
    lines = [f"# Plan: {plan['model'] or 'the model'} on {plan['gpus']} x {plan['gpu']}", "", "```",
             summary(plan), "```", "",
             f"## Memory per GPU (GiB of {acc['memory_gib']:g})", "",
             table(["layout", "GPUs", "TP", *MEMORY_PARTS, "total", "fits", "min GPUs"], mem_rows, markdown=True), "",
             f"## Time to {human(plan['tokens'])} tokens", "",
             table(["layout", "accumulate", "global batch", "compute s", "exposed comm s", "step s", "tokens/s/GPU",
                    "MFU", "days", "GPU-hours", "cost"], time_rows, markdown=True), "",
             "## Assumptions", "",
             f"- {plan['gpu']}: {acc['memory_gib']:g} GiB, dense peak {acc['bf16_tflops']:g} TFLOP/s bf16, "
             f"{acc['fp32_tflops']:g} fp32; {acc['intra_node_gbps']:g} GB/s within a node, "
             f"{acc['inter_node_gbps']:g} GB/s between nodes, {acc['gpus_per_node']} a node ({acc['source']}).",
             f"- Step time: the FLOPs at MFU {plan['mfu']} of the peak (x 4/3 with activation checkpointing), plus "
             "the communication that cannot overlap it (builder/plan.py). FLOPs: 6 x parameters x tokens + causal "
             "attention (6·L·s·a·d_head per token).",
             "- Memory: builder/memory.py's estimate (the one that refuses a training run), the activations measured "
             "on the model's own blocks (builder/activations.py) with a GPU's fused attention; allowance: "
             f"{plan['reserve']:.0%} of the GPU's memory.",
             f"- Cost at ${plan['price_per_gpu_hour']:g} per GPU-hour.", "",
             f"## Launch ({plan['layouts'][plan['chosen']]['layout']})", ""]
    lines += ["```", shell(command["args"]), "```", "", "On SLURM (the submitit launcher, conf/hydra/launcher/slurm.yaml):",
              "", "```", shell(command["slurm"]), "```", ""]
    return "\n".join(lines)
