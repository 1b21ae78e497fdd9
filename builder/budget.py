"""Where the parameters go: counted on the meta device, cross-checked by closed-form formulas.

``parameter_budget(cfg.model)`` is what ``budget.json`` holds.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import torch
from torch import nn

from .config.schema import ModelConfig
from .errors import ConfigError
from .model import build_model, has_final_norm, model_config, norms_per_block, resolve

GROUPS = ("token_embedding", "positions", "attention", "mlp", "norms", "unembedding")
ATTENTION_MATRICES = ("W_q", "W_k", "W_v", "W_o")


def _zero() -> dict:
    return {"total": 0, "weight": 0, "bias": 0}


def _add(into: dict, weight: int, bias: int, times: int = 1) -> None:
    into["weight"] += weight * times
    into["bias"] += bias * times
    into["total"] = into["weight"] + into["bias"]


def _count_module(into: dict, module: nn.Module, seen: set) -> None:
    """Add a module's parameters (each tensor once, across the whole model) split by weight / bias."""
    for name, p in module.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        is_bias = name.rsplit(".", 1)[-1].endswith("bias")  # (a mixture of experts: in_bias, out_bias)
        _add(into, 0 if is_bias else p.numel(), p.numel() if is_bias else 0)


def measured_groups(model: nn.Module) -> dict:
    """Counts of a built model (meta or real) by group; tied unembedding counted once, under the embedding."""
    groups = {g: _zero() for g in GROUPS}
    seen: set = set()
    _count_module(groups["token_embedding"], model.token_embedding, seen)
    _count_module(groups["positions"], model.positions, seen)
    for block in model.blocks:
        _count_module(groups["attention"], block.attention, seen)
        _count_module(groups["mlp"], block.mlp, seen)
        for norm in block.norms():
            _count_module(groups["norms"], norm, seen)
    _count_module(groups["norms"], model.final_norm, seen)
    _count_module(groups["unembedding"], model.unembedding, seen)
    groups["unembedding"]["tied"] = bool(model.tie_embeddings)
    other = _zero()
    _count_module(other, model, seen)  # anything a custom component put elsewhere
    if other["total"]:
        groups["other"] = other
    return groups


def _sum_formula(parts: dict | None) -> tuple[int, int]:
    parts = parts or {}
    return sum(p["weight"] for p in parts.values()), sum(p["bias"] for p in parts.values())


def formula_groups(m: dict, specs: dict, active: bool = False) -> dict | None:
    """Closed-form counts by group; None when a component has no ``formula``. ``active``: what one token uses (a
    mixture of experts' router, shared and top-k experts; every other component uses all it has)."""
    if any(getattr(s.cls, "formula", None) is None for s in specs.values() if s.kind != "mask"):
        return None
    d, vocab, layers = m["d_model"], m["vocab_size"], m["n_layers"]
    groups = {g: _zero() for g in GROUPS}
    _add(groups["token_embedding"], vocab * d, 0)
    _add(groups["positions"], *_sum_formula(specs["embedding"].formula()))
    _add(groups["attention"], *_sum_formula(specs["attention"].formula()), times=layers)
    for layer, times in layer_spans(specs["mlp"], layers):  # a mixture of experts' first layers are dense
        _add(groups["mlp"], *_sum_formula(specs["mlp"].formula(layer, active=active)), times=times)
    n_norms = norms_per_block(m["norm_layout"]) * layers + (1 if has_final_norm(m["norm_layout"]) else 0)
    _add(groups["norms"], *_sum_formula(specs["norm"].formula()), times=n_norms)
    _add(groups["unembedding"], 0 if m["tie_embeddings"] else vocab * d, 0)
    groups["unembedding"]["tied"] = bool(m["tie_embeddings"])
    return groups


def layer_spans(spec, layers: int) -> list[tuple[int | None, int]]:
    """(a layer, how many layers are built like it) for a component that differs by layer (its class's
    ``layer_spans``), else [(None, layers)]: every layer alike."""
    spans = getattr(spec.cls, "layer_spans", None)
    return [(None, layers)] if spans is None else spans(layers, **spec.kwargs)


def _per_head(m: dict, layer: dict | None, n_kv: int) -> dict | None:
    """The lecture's count: W_q, W_k, W_v, W_o per head, per layer and over all heads and layers, from one layer's
    ``breakdown()`` (or its formula)."""
    if layer is None:
        return None
    n_heads = m["n_heads"]
    per_head = {}
    for name in ATTENTION_MATRICES:
        heads = n_kv if name in ("W_k", "W_v") else n_heads
        per_head[name] = {
            "weight": layer[name]["weight"] // heads,
            # W_o's bias is added once after the heads are summed: it belongs to no head
            "bias": 0 if name == "W_o" else layer[name]["bias"] // heads,
            "shared_by_heads": n_heads // heads,
        }
    layers = m["n_layers"]
    all_layers = {k: {"weight": v["weight"] * layers, "bias": v["bias"] * layers} for k, v in layer.items()}
    return {
        "n_layers": layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "d_model": m["d_model"],
        "d_head": m["d_head"],
        "per_head": per_head,
        "per_head_weights": sum(v["weight"] for v in per_head.values()),
        "per_layer": layer,
        "all_layers": all_layers,
        "all_layers_weights": sum(v["weight"] for v in all_layers.values()),
    }


def flops_per_token(m: dict, groups: dict, widths: tuple[int, int] | None = None) -> dict:
    """Forward FLOPs per token: 2 per matmul weight, plus attention over the whole context.

    Matmul weights are attention's and the MLP's weights plus the unembedding (used even when
    tied to the embedding); ``groups`` are the active ones (a mixture of experts: the experts a token goes to).
    The context term is 2·2·n_layers·T·n_heads·d_head (q·k and the weighted sum of v, at the full context T, not
    halved for the causal mask); ``widths``: each head's (q·k, v) widths when they are not d_head (latent
    attention: 192 and 128). Training ≈ 3×.
    """
    unembedding = m["vocab_size"] * m["d_model"]
    matmul = groups["attention"]["weight"] + groups["mlp"]["weight"] + unembedding
    qk, v = widths or (m["d_head"], m["d_head"])
    context = 2 * m["n_layers"] * m["context_length"] * m["n_heads"] * (qk + v)
    forward = 2 * matmul + context
    return {
        "forward": forward,
        "training": 3 * forward,
        "matmul_weights": matmul,
        "attention_context": context,
        "context_length": m["context_length"],
    }


# bytes of one cached key/value element: bf16, as a model is served
KV_CACHE_BYTES = 2


def kv_cache(m: dict, attention) -> dict:
    """What the KV cache holds per token: elements per layer (the attention class's ``cache_per_token``, else one
    key and one value per K/V head), bytes per token over all layers in bf16, and bytes for a whole context."""
    per_layer = getattr(attention.cls, "cache_per_token", None)
    if per_layer is not None:
        elements = per_layer(**attention.kwargs)
    else:
        elements = 2 * attention.kwargs.get("n_kv_heads", m["n_heads"]) * m["d_head"]
    per_token = elements * m["n_layers"] * KV_CACHE_BYTES
    return {"elements_per_layer": elements, "bytes_per_token": per_token, "bytes_per_context": per_token *
            m["context_length"], "context_length": m["context_length"], "dtype": "bfloat16"}


def _head_widths(attention) -> tuple[int, int] | None:
    widths = getattr(attention.cls, "head_widths", None)
    return None if widths is None else widths(**attention.kwargs)


def active_params(m: dict, specs: dict, total: int, groups: dict) -> dict:
    """Parameters one token uses, from the closed-form formulas (all of them without a mixture of experts), with
    the looked-up embedding table counted (``total``) and not (``without_embedding``: a tied table stays, the
    unembedding uses it), and attention's share of each; None-valued without formulas."""
    active = formula_groups(m, specs, active=True)
    if active is None:
        active = groups  # no formulas: a component without one is counted whole
    count = sum(g["total"] for g in active.values() if isinstance(g, dict) and "total" in g)
    table = 0 if m["tie_embeddings"] else active["token_embedding"]["total"]
    attention = active["attention"]["total"]
    return {"total": count, "without_embedding": count - table, "attention_share": attention / count,
            "attention_share_without_embedding": attention / (count - table), "groups": active,
            "share_of_total": count / total}


def memory_bytes(total: int) -> dict:
    """Weights, gradients and AdamW state (two moments) in fp32 and in bf16 mixed precision.

    bf16 mixed follows the usual accounting: bf16 weights and gradients plus fp32 master
    weights and fp32 moments (2 + 2 + 4 + 8 = 16 bytes a parameter).
    """
    fp32 = {"weights": 4 * total, "gradients": 4 * total, "optimizer": 8 * total}
    fp32["total"] = sum(fp32.values())
    bf16 = {"weights": 2 * total, "gradients": 2 * total, "master_weights": 4 * total, "optimizer": 8 * total}
    bf16["total"] = sum(bf16.values())
    return {"fp32": fp32, "bf16_mixed": bf16, "bf16_weights_only": 2 * total}


def _check(measured: dict, formula: dict | None) -> dict:
    if formula is None:
        return {"agree": None, "mismatches": [], "note": "a component has no formula; counted on the meta device only"}
    mismatches = []
    for g in sorted(set(measured) | set(formula)):
        for part in ("weight", "bias"):
            a, b = measured.get(g, _zero())[part], formula.get(g, _zero())[part]
            if a != b:
                mismatches.append({"group": g, "part": part, "meta": a, "formula": b})
    return {"agree": not mismatches, "mismatches": mismatches}


# Deeper models are counted on the meta device from a one- and a two-block build, scaled to n_layers (every block
# is built from the same specs, so each adds the same parameters): a config of a billion blocks is counted in
# milliseconds, not built a block at a time (about 1 ms a block, and memory for each module).
META_BLOCKS = 256
# torch sizes a tensor's storage in bytes as a signed 64-bit integer: a model of this many parameters may hold a
# tensor it cannot size even on the meta device, so its formula alone counts it.
META_PARAMS = 1 << 59


def _meta_count(mc: ModelConfig, blocks: int) -> tuple[dict, int, nn.Module]:
    """Groups and total of the model ``mc`` describes with ``blocks`` blocks, built on the meta device."""
    try:
        with torch.device("meta"):
            model = build_model(replace(mc, n_layers=blocks))
    except RuntimeError as err:  # "Storage size calculation overflowed": a tensor beyond 64-bit sizes
        if "overflow" not in str(err):
            raise
        raise ConfigError("model", f"d_model={mc.d_model}, vocab_size={mc.vocab_size}", "a model whose tensors torch "
                          f"can size (under 2^63 bytes each; a component without a formula is counted by building "
                          f"it on the meta device): {err}") from None
    return measured_groups(model), sum(p.numel() for p in model.parameters()), model


def _scaled(one: dict, two: dict, blocks: int) -> dict:
    """Per group and part: the one-block count plus (blocks - 1) times what the second block added."""
    out = {}
    for g in two:
        a, b = one.get(g, _zero()), two[g]
        out[g] = _zero()
        _add(out[g], a["weight"] + (blocks - 1) * (b["weight"] - a["weight"]),
             a["bias"] + (blocks - 1) * (b["bias"] - a["bias"]))
        if "tied" in b:
            out[g]["tied"] = b["tied"]
    return out


def parameter_budget(cfg_model, name: str | None = None) -> dict:
    """Where the parameters of the model a ``model`` config describes go. No memory is used: the model is built on
    the meta device (one and two blocks, scaled, past META_BLOCKS blocks), and counted by its components' formulas
    alone when it is too large for torch to size (META_PARAMS)."""
    mc = model_config(cfg_model)
    m, specs = resolve(mc)
    layers = m["n_layers"]
    formula = formula_groups(m, specs)
    formula_sum = None if formula is None else sum(g["total"] for g in formula.values())
    attention = specs["attention"]
    n_kv = attention.kwargs.get("n_kv_heads", m["n_heads"])
    if formula_sum is not None and formula_sum >= META_PARAMS:
        groups, total = formula, formula_sum
        layer = attention.formula() if hasattr(attention.cls, "breakdown") else None
        check = {"agree": None, "mismatches": [], "note": f"counted by the closed-form formula only ({total:,} "
                 f"parameters: beyond what torch can size, even on the meta device)"}
    else:
        if layers <= META_BLOCKS:
            groups, total, model = _meta_count(mc, layers)
            note = None
        else:
            # the last span's layers are alike: count the ones before it and one and two of it
            skip = layers - layer_spans(specs["mlp"], layers)[-1][1]
            one, total_one, _ = _meta_count(mc, skip + 1)
            two, total_two, model = _meta_count(mc, skip + 2)
            groups = _scaled(one, two, layers - skip)
            total = total_one + (layers - skip - 1) * (total_two - total_one)
            note = f"{layers:,} blocks: 1 and 2 built on the meta device, scaled"
        built = model.blocks[0].attention
        layer = built.breakdown() if hasattr(built, "breakdown") else None
        n_kv = getattr(built, "n_kv_heads", m["n_heads"])
        check = _check(groups, formula)
        check["meta_total"] = total
        check["formula_total"] = formula_sum
        if note:
            check["note"] = note if formula is not None else f"{check['note']}; {note}"
        if check["agree"] is not False and sum(g["total"] for g in groups.values()) != total:
            check["agree"] = False
            check["mismatches"].append({"group": "all", "part": "total", "meta": total,
                                        "formula": sum(g["total"] for g in groups.values())})
    active = active_params(m, specs, total, groups)
    return {
        "model": name,
        "config": {
            **{k: m[k] for k in ("d_model", "n_layers", "n_heads", "d_head", "vocab_size", "context_length",
                                 "bias", "tie_embeddings")},
            "components": {kind: spec.name for kind, spec in specs.items()},
            "norm_layout": m["norm_layout"],
        },
        "model_config": asdict(mc),  # the checked config: what builder/activations.py traces
        "total_params": total,
        "groups": groups,
        "attention_share": groups["attention"]["total"] / total,
        "per_head": _per_head(m, layer, n_kv),
        "active_params": active,
        "flops_per_token": flops_per_token(m, active["groups"], _head_widths(attention)),
        "kv_cache": kv_cache(m, attention),
        "memory_bytes": memory_bytes(total),
        "check": check,
    }


def formula_total(cfg_model) -> dict:
    """Totals and attention share from the formulas alone (fast; no module built)."""
    m, specs = resolve(cfg_model)
    groups = formula_groups(m, specs)
    if groups is None:
        b = parameter_budget(cfg_model)
        return {**b, "active_params": b["active_params"]["total"],
                "active_attention_share": b["active_params"]["attention_share"]}
    total = sum(g["total"] for g in groups.values())
    active = sum(g["total"] for g in formula_groups(m, specs, active=True).values())
    return {"total_params": total, "attention_share": groups["attention"]["total"] / total, "groups": groups,
            "active_params": active, "active_attention_share": groups["attention"]["total"] / active,
            "config": {**{k: m[k] for k in ("d_model", "n_layers", "n_heads", "d_head")},
                       "n_kv_heads": specs["attention"].kwargs.get("n_kv_heads", m["n_heads"])}}
