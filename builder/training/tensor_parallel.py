"""Tensor parallelism within a node (Megatron-style) under FSDP2: ``trainer.tensor_parallel=N`` with ``strategy:
fsdp2``.

Lightning's ModelParallelStrategy lays the processes out on a 2-D mesh, ``data_parallel`` x ``tensor_parallel``
(N consecutive processes: one node's GPUs). Each block's linear maps are split over the N processes of its
tensor-parallel group with torch's ``parallelize_module`` (:func:`parallelize`), then FSDP2 shards what each holds
over the data-parallel processes (builder/training/fsdp.py):

* attention: the fused q/k/v projection column-wise by heads, W_o row-wise: each process computes n_heads/N query
  heads and the n_kv_heads/N key/value heads they read, and W_o's partial sums are all-reduced;
* MLP: fc (gelu, relu) or gate and up (swiglu, geglu) column-wise, proj row-wise: one all-reduce;
* embeddings, positions, norms (and q/k norms) and the unembedding are replicated over the group (their
  gradients agree without communication: every process of a group sees the same batch and full activations).

The fused q/k/v weight stacks all queries, then all keys, then all values; an even split of its rows would give one
process every query and half the keys. So in training its rows are held in the order that gives each process its
own heads (:meth:`components.attention.GroupedQueryAttention.split_rows`), and every checkpoint holds them as
built (:func:`reorder`, applied by FullyShardedStrategy on save and resume): a checkpoint of a tensor-parallel run
is the same as any other, and resumes under any layout. The random initial values are the ones a single process
draws (they are drawn in the built order, then reordered).

What is not split is refused before training (builder/config/parallel.py): a mixture of experts, latent
attention, attention sinks, a tensor-parallel size that does not divide the heads, key/value heads, the MLP's hidden
width or the processes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from components.attention import GroupedQueryAttention
from components.mlp import GeluMLP, SwiGLUMLP

from ..model import build_model

MLPS = {GeluMLP: (("fc",), "proj"), SwiGLUMLP: (("gate", "up"), "proj")}  # (column-wise, row-wise)


def row_orders(model_cfg: dict, tp: int) -> dict[str, torch.Tensor]:
    """The parameters held reordered in training (each block's fused q/k/v weight and bias), name -> the order of
    their built rows that the tensor-parallel processes split evenly (:meth:`GroupedQueryAttention.split_rows`).
    Read from the model ``model_cfg`` builds (on the meta device: no values)."""
    with torch.device("meta"):
        model = build_model(model_cfg)
    orders = {}
    for i, block in enumerate(model.blocks):
        order = block.attention.split_rows(tp)
        for name, _ in block.attention.qkv.named_parameters():
            orders[f"blocks.{i}.attention.qkv.{name}"] = order
    return orders


def parallelize(model: nn.Module, mesh) -> None:
    """Split each block's attention and MLP over the tensor-parallel ``mesh`` (module docstring); the model may be
    on the meta device. Its q/k/v rows are then read in :func:`row_orders`' order."""
    tp = mesh.size()
    for block in model.blocks:
        attention, mlp = block.attention, block.mlp
        split = next(((cols, row) for cls, (cols, row) in MLPS.items() if isinstance(mlp, cls)), None)
        if not isinstance(attention, GroupedQueryAttention) or split is None:
            raise ValueError(f"tensor parallelism splits multi-head / grouped-query attention and dense MLPs, not "
                             f"{type(attention).__name__} / {type(mlp).__name__}")
        cols, row = split
        plan = {"attention.qkv": ColwiseParallel(), "attention.o": RowwiseParallel(),
                **{f"mlp.{name}": ColwiseParallel() for name in cols}, f"mlp.{row}": RowwiseParallel()}
        parallelize_module(block, mesh, plan)
        attention.keep_heads(tp)


def reorder(state: dict, orders: dict[str, torch.Tensor], prefix: str = "", back: bool = False) -> dict:
    """``state`` (a model's or an optimizer's state dict, keys ``prefix`` + parameter name) with the rows of the
    parameters in ``orders`` from the training order to the built one (``back``: the other way). A DTensor is
    gathered, reordered and split again with its own placements; other values are reordered as they are."""

    def rows(value, order: torch.Tensor):
        if not torch.is_tensor(value) or value.ndim == 0:  # (an optimizer's step count)
            return value
        index = order if back else torch.argsort(order)
        if isinstance(value, DTensor):
            full = value.full_tensor()
            return distribute_tensor(full[index.to(full.device)], value.device_mesh, value.placements,
                                     src_data_rank=None)
        return value[index.to(value.device)]

    if "state" in state and "param_groups" in state:  # an optimizer's: each parameter's moments
        moments = {}
        for key, entry in state["state"].items():
            order = orders.get(key[len(prefix):]) if isinstance(key, str) and key.startswith(prefix) else None
            moments[key] = entry if order is None else {n: rows(v, order) for n, v in entry.items()}
        return {**state, "state": moments}
    return {k: rows(v, orders[k[len(prefix):]]) if isinstance(k, str) and k.startswith(prefix) and
            k[len(prefix):] in orders else v for k, v in state.items()}
