"""What tensor parallelism (``trainer.tensor_parallel``, builder/training/tensor_parallel.py) splits, and the
refusal of what it does not: checked with the job's config (builder/config/checks.py check_job), before training."""

from __future__ import annotations

from collections.abc import Iterator

import components

# the components a block may be built of under tensor parallelism, and how each is split
ATTENTIONS = ("multi_head", "grouped_query")
SPLIT_MLPS = ("gelu", "relu", "swiglu", "geglu")


def problems(model: dict, tp: int, processes: int | None = None) -> Iterator[tuple[str, object, str]]:
    """What refuses tensor parallelism of size ``tp`` for the model config ``model`` (plain: attention and mlp are
    dicts with their ``name``) on ``processes`` processes (None: not known yet): (key, value, what is accepted)."""
    if tp == 1:
        return
    if (refused := process_problem(tp, processes)) is not None:
        yield refused
    attention, mlp = model.get("attention") or {}, model.get("mlp") or {}
    if attention.get("name") not in ATTENTIONS:
        yield "model.attention", attention.get("name"), f"one of {', '.join(ATTENTIONS)} under trainer." \
            f"tensor_parallel={tp} (its q/k/v and W_o are split by heads); latent attention is not split: use " \
            "trainer.tensor_parallel=1 (FSDP alone)"
        return
    if attention.get("sinks"):
        yield "model.attention.sinks", True, f"false under trainer.tensor_parallel={tp}: the per-head sink logits " \
            "are not split over the processes; use trainer.tensor_parallel=1"
    if mlp.get("name") not in SPLIT_MLPS:
        yield "model.mlp", mlp.get("name"), f"one of {', '.join(SPLIT_MLPS)} under trainer.tensor_parallel={tp}: a " \
            "mixture of experts is not split over tensor-parallel processes; use trainer.tensor_parallel=1"
        return
    heads = model["n_heads"]
    kv = heads if attention["name"] == "multi_head" else attention.get("n_kv_heads", 1)
    for key, count in (("model.n_heads", heads), ("model.attention.n_kv_heads", kv)):
        if count % tp:
            yield key, count, f"a multiple of trainer.tensor_parallel={tp}: each of the {tp} processes computes " \
                f"whole heads (or use a trainer.tensor_parallel that divides {count})"
    hidden = mlp.get("hidden") or components.get("mlp", mlp["name"]).default_hidden(model["d_model"])
    if hidden % tp:
        yield "model.mlp.hidden", hidden, f"a multiple of trainer.tensor_parallel={tp}: the MLP's hidden units are " \
            "split evenly over the processes"


def process_problem(tp: int, processes: int | None) -> tuple[str, object, str] | None:
    """The refusal of a tensor-parallel size that does not divide the processes (None: it does, or not known)."""
    if processes is None or processes % tp == 0:
        return None
    return "trainer.tensor_parallel", tp, f"a divisor of the {processes} processes (trainer.devices x " \
        "trainer.num_nodes): each group of trainer.tensor_parallel processes is one data-parallel replica"
