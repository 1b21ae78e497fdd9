"""Refusing a training run that cannot fit in memory, before anything is allocated.

``check_training_memory(budget, cfg)`` (task=train, right after the parameter budget) estimates what training
takes from the budget and ``data.batch_size`` × ``data.context_length``, and compares it with what the device has:
the GPU's free memory (``torch.cuda.mem_get_info``) when training runs on CUDA, else the machine's ``MemAvailable``
(``/proc/meminfo``; ``os.sysconf`` elsewhere). For P parameters, b windows of s tokens, d_model h, n_heads a,
n_layers L and vocabulary V, in bytes:

* weights, gradients and AdamW's two moments: 16·P, all fp32 (Lightning's mixed precision keeps fp32 weights);
  8·P at ``trainer.precision`` 16-true / bf16-true, 32·P at 64-true;
* activations kept for the backward pass: measured, not assumed — builder/activations.py runs one window through
  the model's own blocks on fake tensors and counts the bytes of every storage the autograd graph keeps (for GPT-2's
  blocks in fp32 that is 68·s·h a block, Korthikanti et al.'s 34·s·h at 16 bits exactly; a SwiGLU block with
  grouped-query attention keeps more, Gemma 2's soft-capped attention keeps its s x s scores). Attention as the
  device runs it: a GPU's fused kernels (O(s)) under CUDA, torch's CPU dispatch on the CPU (its flash kernel
  without dropout, the math path, s x s, with it);
* the logits: b·s·V × 12 (the logits, their fp32 log-softmax and its gradient);
* with ``train.activation_checkpointing``: each block's input plus the largest block's activations (recomputed one
  block at a time); under FSDP the parameters gathered at once (``training_memory``'s ``working``).

``training_memory`` is the one estimate: ``task=plan`` (builder/plan.py) applies it to each parallel layout (DDP,
FSDP, FSDP with activation checkpointing, tensor parallel) on the GPUs it plans for.

The run is refused only when even the least it needs (what the graph keeps, the logits, the states) exceeds what
is available; attention's explicit path (``most``: its scores kept) is reported, not refused on. Measured with
``trainer=fsdp_cpu`` on 2 processes (benchmarks/plan_check.py, the peak of what is live), ``least`` is the peak to
within 1 %, with activation checkpointing (1 % above it) and without; the refusal allows MARGIN for that.
``train.check_memory=false`` skips the check.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .activations import saved_activations
from .errors import ConfigError

GIB = 1 << 30
# the refusal's tolerance: ``least`` is the measured peak to within 1-2 % (above it by up to 1.2 % with activation
# checkpointing: benchmarks/plan_check.py), so a run is refused only past 5 % more than is available
MARGIN = 1.05


def _bytes_per_value(precision) -> tuple[int, int]:
    """(bytes an activation takes, bytes a parameter's weight + gradient + two AdamW moments take)."""
    act, split = _precision_bytes(precision)
    return act, sum(split)


def _precision_bytes(precision) -> tuple[int, tuple[int, int, int]]:
    """(bytes an activation takes, (weight, gradient, AdamW's two moments) bytes a parameter)."""
    p = str(precision).lower()
    if p.startswith("64"):
        return 8, (8, 8, 16)
    if p.startswith(("16", "bf16", "transformer-engine")):
        return 2, (2, 2, 4) if p.endswith("-true") else (4, 4, 8)  # mixed: fp32 weights, gradients and moments
    return 4, (4, 4, 8)  # 32-true, 32


def block_params(budget: dict) -> int:
    """The parameters of one transformer block (attention, MLP and the block's norms): what FSDP gathers at once."""
    g, layers = budget["groups"], budget["config"]["n_layers"]
    return (g["attention"]["total"] + g["mlp"]["total"] + g["norms"]["total"]) // layers


def _split_params(budget: dict) -> int:
    """The parameters tensor parallelism splits: the attention's and the MLP's but for the biases of the row-wise
    W_o and MLP proj (whole on every process; q/k norms, 2·d_head a layer, are counted as split) — a budget of
    counts alone: all."""
    g, m = budget.get("groups"), budget["config"]
    if not g:
        return budget["total_params"]
    return g["attention"]["total"] + g["mlp"]["total"] - (2 * m["n_layers"] * m["d_model"] if m.get("bias") else 0)


def training_memory(budget: dict, batch_size: int, context_length: int | None = None, precision="32-true",
                    shards: int = 1, checkpointing: bool = False, tensor_parallel: int = 1,
                    kernel: str = "fused") -> dict:
    """The estimate (bytes) for one training process: ``states`` (``weights`` + ``gradients`` + ``optimizer``:
    AdamW's two moments; divided over ``shards`` FSDP processes, the attention's and MLP's also over
    ``tensor_parallel`` ones), ``activations`` (what the forward pass keeps for the backward, measured:
    builder/activations.py), ``scores`` (what the explicit attention path would keep beyond that: the a·s² scores
    and pattern), ``logits``, and ``working`` (FSDP, shards > 1: the parameters gathered at once, in the compute
    dtype — the root module's, kept through the step, and two blocks', the one running and the one prefetched — and
    one block's unsharded gradients in fp32); ``least`` = states + working + activations + logits, ``most`` = least
    + scores; ``per_window`` is what one more window adds to ``least``.

    ``kernel``: attention's, as builder/activations.py traces it — ``fused`` (a GPU's FlashAttention /
    memory-efficient kernels: what task=plan assumes) or ``cpu`` (torch's CPU dispatch). ``checkpointing`` (per
    block, train.activation_checkpointing): each block keeps only its input, and one block's activations are
    recomputed at a time in the backward pass (the largest block's, measured). ``tensor_parallel`` t
    (Megatron-style within a node, no sequence parallelism, as trainer.tensor_parallel runs it:
    builder/training/tensor_parallel.py): the attention and MLP parameters are split over the t processes, the
    embeddings, norms and unembedding replicated (each then sharded over the ``shards`` data-parallel processes); a
    block keeps (10 + 24/t)/34 of its activations (Korthikanti et al. 2022, §4.2: the norms' and dropouts' inputs
    stay whole, the rest is split); the logits are whole on every process (no vocabulary parallelism). A budget
    without ``model_config`` (counts alone) falls back on Korthikanti et al.'s 34·s·h bytes a block at 16 bits
    (+ 5·a·s² for the scores)."""
    m = budget["config"]
    b, s = int(batch_size), int(context_length or m["context_length"])
    t = max(1, int(tensor_parallel))
    act_bytes, (w_bytes, g_bytes, o_bytes) = _precision_bytes(precision)
    params = budget["total_params"]
    split = _split_params(budget) if t > 1 else 0  # what the tensor-parallel processes divide between them
    held = params - split + split // t  # one process's parameters before FSDP shards them
    weights, gradients, optimizer = (n * held // max(1, shards) for n in (w_bytes, g_bytes, o_bytes))
    working = 0
    if shards > 1 and "groups" in budget:  # (a budget of counts alone: no working copies counted)
        compute = 2 if act_bytes == 2 else w_bytes  # FSDP2 gathers in param_dtype: bf16 under bf16-mixed
        block = block_params(budget) - (split - split // t) // m["n_layers"]
        root = params - m["n_layers"] * block_params(budget)  # embeddings, final norm: replicated
        working = compute * (root + 2 * block) + 4 * block
    split_share = (10 + 24 / t) / 34  # of a block's activations, per tensor-parallel process
    if budget.get("model_config") is not None:
        saved = saved_activations(budget["model_config"], s, precision, kernel)
        layer, inputs = saved["largest"], saved["inputs"]
        blocks, shared, scores_all = saved["blocks"], saved["shared"], saved["scores"]
        source = f"measured ({kernel} attention)"
    else:
        layer = int(s * m["d_model"] * 34 * act_bytes) // 2  # one block's, one window: 34·s·h at 16 bits
        inputs, blocks, shared = m["n_layers"] * s * m["d_model"] * w_bytes, m["n_layers"] * layer, 0
        scores_all = m["n_layers"] * (5 * m["n_heads"] * s * s * act_bytes // 2)
        source = "Korthikanti et al. 2022"
    if checkpointing:  # each block's input kept, one block's activations (and scores) alive at a time
        activations = inputs + int(layer * split_share) + shared
        scores = int(scores_all / m["n_layers"] / t)
    else:
        activations, scores = int(blocks * split_share) + shared, int(scores_all / t)
    logits = 12 * s * m["vocab_size"]  # whole on every tensor-parallel process
    states = weights + gradients + optimizer
    least = states + working + b * (activations + logits)
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "states": states,
            "state_bytes_per_param": w_bytes + g_bytes + o_bytes, "working": working, "activations": b * activations,
            "logits": b * logits, "scores": b * scores, "per_window": activations + logits, "least": least,
            "most": least + b * scores, "batch_size": b, "context_length": s, "precision": str(precision),
            "shards": max(1, shards), "tensor_parallel": t, "checkpointing": bool(checkpointing),
            "activations_source": source}


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit (a container, a SLURM job) leaves; None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        return None if limit == "max" else max(0, int(limit) - int(used))
    except (OSError, ValueError):
        return None


def _devices(trainer) -> list[int] | int | str:
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and "," in devices:
        return [int(d) for d in devices.split(",") if d.strip()]
    try:
        return [int(d) for d in devices] if not isinstance(devices, (str, int)) else int(devices)
    except (TypeError, ValueError):
        return str(devices)


def available_memory(trainer) -> dict | None:
    """Where training will run and what it has there: ``{"bytes", "where", "processes", "shards", "kernel"}``
    (processes: training processes sharing that memory; shards: FSDP processes the states are divided over;
    kernel: attention's there, ``fused`` on CUDA, ``cpu`` on the CPU, as builder/activations.py reads it). None when it
    cannot be told (an accelerator other than CPU or CUDA; a fork-based strategy, which needs CUDA untouched)."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    strategy = str(trainer.get("strategy", "auto")).lower()
    devices = _devices(trainer)
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        if "fork" in strategy or "notebook" in strategy:
            return None
        index = devices[0] if isinstance(devices, list) and devices else 0
        if isinstance(devices, list):
            count = len(devices)
        else:
            count = devices if isinstance(devices, int) and devices > 0 else torch.cuda.device_count()
        free, _ = torch.cuda.mem_get_info(index)  # the GPU rank 0 trains on: no context on any other
        return {"bytes": free, "where": f"GPU {index} ({torch.cuda.get_device_name(index)}) has", "processes": 1,
                "shards": count if "fsdp" in strategy else 1, "kernel": "fused"}
    if accelerator not in ("cpu", "auto"):
        return None
    host = _host_available()
    if host is None:
        return None
    processes = devices if isinstance(devices, int) and devices > 0 else 1  # ddp_cpu: each process holds it all
    return {"bytes": host, "where": "this machine has", "processes": processes,
            "shards": processes if "fsdp" in strategy else 1, "kernel": "cpu"}  # fsdp_cpu: each holds its shard


def _host_available() -> int | None:
    """What this machine's memory (or its cgroup's limit, whichever is less) has free; None when it cannot be told."""
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(found) if found else None


def _gib(n: int) -> str:
    if n >= GIB // 10:
        return f"{n / GIB:,.1f} GiB"
    return f"{n / (1 << 20):,.1f} MiB" if n >= 1 << 17 else f"{n / 1024:,.1f} KiB"


def _count(n: int) -> str:
    return next((f"{n / unit:,.2f}{name}" for unit, name in ((1e9, "B"), (1e6, "M")) if n >= unit), f"{n:,}")


def check_training_memory(budget: dict, cfg) -> dict | None:
    """Refuse (ConfigError naming ``model`` or ``data.batch_size``) a training run whose estimate clearly exceeds the
    device's memory; ``cfg`` is the composed config (``data``, ``trainer``, ``train``). Returns the estimate with
    what is available (None when unchecked: ``train.check_memory=false``, not local rank 0, or unknown). Prints
    nothing."""
    if not cfg["train"].get("check_memory", True) or os.environ.get("LOCAL_RANK", "0") != "0":
        return None  # one check a machine: the processes Lightning or torchrun starts for the other ranks skip it
    device = available_memory(cfg["trainer"])
    if device is None:
        return None
    precision = cfg["trainer"].get("precision", "32-true")
    data = cfg["data"]
    tp = int(cfg["trainer"].get("tensor_parallel") or 1)  # fsdp2's tensor-parallel groups: the rest shards the states
    est = training_memory(budget, data["batch_size"], data.get("context_length"), precision,
                          max(1, device["shards"] // tp),
                          checkpointing=bool(cfg["train"].get("activation_checkpointing", False)),
                          tensor_parallel=tp, kernel=device["kernel"])
    est["available"], n = device["bytes"], device["processes"]
    if est["least"] * n <= device["bytes"] * MARGIN:
        return est
    m = budget["config"]
    processes = f" × {n} processes" if n > 1 else ""
    need = (f"training needs at least {_gib(est['least'] * n)} ({_gib(est['states'])} for the weights, gradients "
            f"and AdamW state at {est['state_bytes_per_param']} bytes a parameter, {_count(budget['total_params'])} "
            f"parameters; {_gib(est['activations'] + est['logits'])} of activations for data.batch_size="
            f"{est['batch_size']} windows of {est['context_length']} tokens at precision {precision}{processes}; "
            f"up to {_gib(est['most'] * n)} with attention's scores kept), but {device['where']} "
            f"{_gib(device['bytes'])} available")
    skip = "or set train.check_memory=false to skip this check"
    fits = (int(device["bytes"] * MARGIN) // n - est["states"] - est["working"]) // est["per_window"]
    if fits >= 1:
        raise ConfigError("data.batch_size", est["batch_size"], f"a batch that fits in memory: {need}; use "
                          f"data.batch_size={fits} or less (trainer.accumulate_grad_batches keeps the effective "
                          f"batch), a smaller model or data.context_length, {skip}")
    model = budget.get("model") or f"d_model={m['d_model']}, n_layers={m['n_layers']}"
    raise ConfigError("model", model, f"a model whose training fits in memory (d_model={m['d_model']}, n_layers="
                      f"{m['n_layers']}): {need}, and not even data.batch_size=1 fits beside the weights; pick a smaller "
                      f"model or a device with more memory, {skip}")


# What each token of a continuation costs besides the KV cache, generously: its id in the output tensor (8 bytes), in
# the Python list the tokenizer decodes (a pointer and an int object: 40), the decoder's pieces and the text, which
# is copied for sample.txt and encoded to UTF-8 (up to 16 characters a token, a few bytes each, three times)
TOKEN_BYTES = 256


def kv_bytes_per_token(model) -> int:
    """What one more position of ``model``'s KV cache holds: a key and a value per layer, n_kv_heads x d_head each (a
    component without those attributes: d_model wide), in the weights' dtype."""
    weights = next(model.parameters())
    d_model = model.token_embedding.weight.shape[1]
    per_layer = 0
    for block in model.blocks:
        attention = block.attention
        heads, d_head = getattr(attention, "n_kv_heads", None), getattr(attention, "d_head", None)
        per_layer += 2 * (heads * d_head if heads and d_head else d_model)
    return per_layer * weights.element_size()


def check_generation_memory(model, prompt_tokens: int, max_new_tokens: int, key: str = "max_new_tokens") -> dict:
    """Refuse (ConfigError naming ``key``) a continuation of ``prompt_tokens`` by ``max_new_tokens`` that cannot fit
    in the memory of the device ``model`` is on, before anything is allocated. The KV cache holds at most
    ``model.context_length`` positions when the model has a position table (generation restarts it there), else
    every token; each token also costs TOKEN_BYTES (its id, the decoded text). Returns the estimate (bytes)."""
    limit = model.context_length
    per_position = kv_bytes_per_token(model)

    def need(new: int) -> int:
        length = prompt_tokens + new
        return per_position * (min(limit, length) if limit else length) + TOKEN_BYTES * length

    weights = next(model.parameters())
    if weights.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(weights.device)
        available, where = free, f"GPU {weights.device.index or 0} has"
    else:
        available, where = _host_available(), "this machine has"
    est = {"bytes": need(max_new_tokens), "available": available, "kv_bytes_per_token": per_position}
    if available is None or est["bytes"] <= available:
        return est
    if limit:
        fits = (available - per_position * limit) // TOKEN_BYTES - prompt_tokens
        cache = (f"a KV cache of {_gib(per_position * limit)} (model.context_length={limit} positions of "
                 f"{per_position:,} bytes: generation restarts it there)")
    else:
        fits = available // (per_position + TOKEN_BYTES) - prompt_tokens
        cache = (f"{per_position:,} bytes of KV cache a token (the model's positions have no table to restart at, "
                 f"so the cache holds every token)")
    advice = f"use {key}={fits} or less" if fits >= 1 else "use a shorter prompt or a smaller model"
    raise ConfigError(key, max_new_tokens, f"a continuation that fits in memory: {prompt_tokens + max_new_tokens:,} "
                      f"tokens need {_gib(est['bytes'])} ({cache}, and {TOKEN_BYTES} bytes a token for its id and "
                      f"text), but {where} {_gib(available)} available; {advice}")
