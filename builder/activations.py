"""What a window keeps for the backward pass, measured: one forward pass of the composed model on fake tensors.

``saved_activations(model_cfg, context_length, precision, kernel)`` builds the model's distinct blocks (one per
kind of layer: a mixture of experts' first dense layers, an alternating mask's banded and dense layers) under
``FakeTensorMode`` — the real modules and the real torch operators, with shapes and dtypes but no memory and no
arithmetic, so a 175B model at context 8,192 takes milliseconds — runs one window of ``context_length`` tokens
through them in training mode and counts, with ``torch.autograd.graph.saved_tensors_hooks``, the bytes of every
distinct storage the autograd graph keeps for the backward pass (a view counts its whole storage once, as memory
does; parameters, buffers and the weights' casts are not activations). Per block, per window, in bytes:

* ``blocks``: what all ``n_layers`` blocks keep without activation checkpointing; ``largest``: the most one
  block keeps (what a checkpointed block holds again while it is recomputed); ``inputs``: what the blocks keep with
  ``train.activation_checkpointing``: each block's input, the residual stream (torch.utils.checkpoint holds it; its
  own hooks hide it from a trace, so it is read at each block's entry);
* ``shared``: tensors several blocks keep once (the rotation's cos and sin, a sliding window's mask);
* ``scores``: what the explicit attention path (scores and pattern kept: hooks on them, soft-capping, sinks)
  keeps beyond the kernel measured.

Precision: ``32-true`` traces fp32; ``bf16-mixed`` / ``16-mixed`` trace under autocast as Lightning runs them
(fp32 weights and residual stream, the matmuls' inputs and outputs in 16 bits, norms and softmax in fp32);
``*-true`` builds the weights themselves in 16 bits. Scaled-dot-product attention is where the CPU and a GPU differ:

* ``kernel="fused"`` (what the plan assumes, and the refusal on CUDA): FlashAttention / memory-efficient
  attention as torch runs them on a GPU, which keep q, k, v, the output and an fp32 log-sum-exp per head and
  query (and the mask, if any) — O(s), with or without dropout (its random state is two numbers);
* ``kernel="cpu"`` (the refusal on the CPU): torch's CPU dispatch as it is — its flash kernel without dropout
  (the same O(s) set), the math path with dropout (the s x s probabilities, and the dropout mask, kept).

The count is exact for what the graph keeps (tests/test_activations.py holds it to a real forward pass on the
CPU, byte for byte); builder/memory.py adds the logits and the states, and its estimate is the live peak of a real
run to within about 1 % (benchmarks/plan_check.py).
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.overrides import TorchFunctionMode

from .model import build_model, model_config, resolve

KERNELS = ("fused", "cpu")
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_TRUE = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


class _FusedAttention(torch.autograd.Function):
    """Stands in for a GPU's fused attention: its output, and what its backward keeps (FlashAttention-2's and the
    memory-efficient kernel's saved set: q, k, v, out, the fp32 log-sum-exp, the mask)."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        b, h, s, _ = q.shape  # the kernels write [batch, query, head, d]: the caller's transpose back is free
        out = q.new_empty(b, s, h, v.shape[-1]).transpose(1, 2)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, *([mask] if mask is not None else []))
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the trace only counts what the forward keeps
        raise NotImplementedError


class _Trace(TorchFunctionMode):
    """What the trace changes in the forward pass: ``F.scaled_dot_product_attention`` as a GPU runs it (``fused``:
    see _FusedAttention), and a mixture of experts' tokens per expert (data the fake tensors do not hold) spread
    evenly — the bytes kept do not depend on the spread, as every expert's slice adds up to top_k x tokens."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.fused:
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if torch.is_autocast_enabled("cpu"):  # autocast's lower-precision list: SDPA runs in 16 bits
                dtype = torch.get_autocast_dtype("cpu")
                q, k, v = (t.to(dtype) for t in (q, k, v))
            return _FusedAttention.apply(q, k, v, mask)
        if func is torch.bincount:
            n, bins = args[0].numel(), max(kwargs.get("minlength", 0), 1)
            with unset_fake_temporarily():
                return torch.tensor([n // bins + (i < n % bins) for i in range(bins)])
        return func(*args, **kwargs)


def _layer_kinds(mc) -> dict[int, int]:
    """The first layer of each kind of block -> how many layers are of that kind."""
    m, specs = resolve(mc)
    mask = specs["mask"].build()
    per_layer = getattr(specs["mlp"].cls, "for_layer", None)
    kinds: dict = {}
    for i in range(m["n_layers"]):
        mlp = json.dumps(specs["mlp"].formula(layer=i), sort_keys=True) if per_layer else None
        kinds.setdefault((mlp, repr(mask.layer_key(i)), mask.plain_causal(i)), []).append(i)
    return {layers[0]: len(layers) for layers in kinds.values()}


def _trace(mc, layers: int, context_length: int, precision: str, kernel: str, explicit: bool) \
        -> tuple[list[int], list[int], int]:
    """(bytes each of ``layers`` blocks keeps, bytes of each block's input, bytes kept by more than one block) for
    one window."""
    owners: dict[int, set[int]] = {}
    sizes: dict[int, int] = {}
    current = [None]
    inputs = [0] * layers  # what each checkpointed block keeps: its input, the residual stream
    default = torch.get_default_dtype()
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.set_default_dtype(_TRUE.get(precision, torch.float32))  # *-true: the weights themselves in 16 bits
        try:
            model = build_model(replace(mc, n_layers=layers, context_length=max(mc.context_length, context_length)
                                        if mc.context_length else None))
        finally:
            torch.set_default_dtype(default)
        model.train()
        excluded = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}

        def enter(i, args):
            current[0], inputs[i] = i, args[0].untyped_storage().nbytes()

        for i, block in enumerate(model.blocks):
            block.register_forward_pre_hook(lambda module, args, i=i: enter(i, args))
            block.register_forward_hook(lambda module, args, out: current.__setitem__(0, None))

        def pack(t):
            storage = t.untyped_storage()
            key = storage._cdata
            if current[0] is not None and key not in excluded and not _weight_cast(t):
                owners.setdefault(key, set()).add(current[0])
                sizes[key] = storage.nbytes()
            return t

        ids = torch.zeros(1, context_length, dtype=torch.long)
        autocast = torch.autocast("cpu", _AUTOCAST.get(precision, torch.bfloat16), enabled=precision in _AUTOCAST)
        # explicit: a function on each pattern's hook point, so attention takes the explicit path (scores kept)
        hooks = [(lambda name: name.endswith("hook_pattern"), lambda t, hook: None)] if explicit else []
        with autocast, _Trace(kernel == "fused"), model.hooks(hooks), warnings.catch_warnings(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            warnings.simplefilter("ignore")  # a CPU kernel's "cannot dispatch to fused" notes: nothing runs here
            model(ids)
    per_block = [0] * layers
    shared = 0
    for key, blocks in owners.items():
        if len(blocks) == 1:
            per_block[next(iter(blocks))] += sizes[key]
        else:
            shared += sizes[key]
    return per_block, inputs, shared


# what a parameter goes through before an operator keeps it: autocast's cast, a transpose, a view, a split
_WEIGHT_STEPS = {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "ViewBackward0", "PermuteBackward0",
                 "ExpandBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "UnbindBackward0", "SelectBackward0",
                 "SplitBackward0", "SplitWithSizesBackward0", "UnsafeViewBackward0", "AliasBackward0"}


def _weight_cast(t: torch.Tensor) -> bool:
    """Whether ``t`` is a parameter's cast or view (autocast's 16-bit copy of a weight, a transposed weight):
    per model, not per window."""
    def derived(fn) -> bool:
        name = type(fn).__name__
        if name == "AccumulateGrad":
            return True
        return name in _WEIGHT_STEPS and all(derived(n) for n, _ in fn.next_functions if n is not None)

    return t.grad_fn is not None and derived(t.grad_fn)


def precision_name(precision) -> str:
    """A ``trainer.precision`` as the trace reads it: ``32-true``, ``bf16-mixed``, ``16-mixed``, ``bf16-true``, ..."""
    p = str(precision).lower()
    short = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed", "transformer-engine": "bf16-mixed"}
    return short.get(p, p if p in (*_AUTOCAST, *_TRUE) else "32-true")


def saved_activations(model_cfg, context_length: int, precision="32-true", kernel: str = "fused") -> dict:
    """What one window of ``context_length`` tokens keeps for the backward pass of the model ``model_cfg`` (a
    composed ``model`` config, a plain dict or a ModelConfig) at ``precision``, with attention's ``kernel``
    (``fused``: a GPU's; ``cpu``: torch's CPU dispatch), in bytes: ``blocks``, ``largest``, ``inputs``,
    ``shared``, ``scores`` (see the module's docstring), and ``per_token`` (``blocks`` / ``context_length``)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    mc = model_config(model_cfg)
    return dict(_measured(json.dumps(asdict(mc), sort_keys=True), int(context_length), precision_name(precision),
                          kernel))


@functools.lru_cache(maxsize=256)
def _measured(config: str, s: int, precision: str, kernel: str) -> dict:
    mc = model_config(json.loads(config))
    kinds = _layer_kinds(mc)
    # the blocks up to the last kind's first layer and one more, so what blocks share (the rotation's cos and sin,
    # a mask) shows as shared
    built = min(max(kinds) + 2, mc.n_layers)
    plain, kept, shared = _trace(mc, built, s, precision, kernel, False)
    explicit, _, _ = _trace(mc, built, s, precision, kernel, True)
    blocks = sum(plain[i] * n for i, n in kinds.items())
    return {"blocks": blocks, "largest": max(plain[i] for i in kinds), "inputs": sum(kept[i] * n for i, n in kinds.items()),
            "shared": shared, "scores": max(0, sum(explicit[i] * n for i, n in kinds.items()) - blocks),
            "per_token": blocks / s, "context_length": s, "precision": precision, "kernel": kernel,
            "per_kind": {i: {"layers": n, "bytes": plain[i], "checkpointed": kept[i]} for i, n in kinds.items()}}
