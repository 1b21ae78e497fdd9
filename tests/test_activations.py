"""What a window keeps for the backward pass (builder/activations.py), measured on fake tensors, against the same
count on a real forward pass on the CPU; and the memory estimate (task=plan, the refusal before training) using it."""

import pytest
import torch
from conftest import run_cli

import builder
from builder.activations import saved_activations
from builder.budget import parameter_budget
from builder.config.plain import to_plain
from builder.memory import check_training_memory, training_memory
from builder.model import build_model

S = 21  # tokens a window: a multiple of 7, which no width here has, so no activation is a weight's size
BASE = ["model=tiny", "model.d_model=32", "model.n_heads=4", "model.context_length=64"]  # a table of 64 x 32
MODELS = {
    "gelu": [],
    "swiglu_gqa_rms": ["model/mlp=swiglu", "model/attention=grouped_query", "model.attention.n_kv_heads=2",
                       "model/norm=rmsnorm", "model/embedding=rotary", "model.bias=false"],
    "geglu": ["model/mlp=geglu"],
    "moe": ["model/mlp=moe", "model.mlp.n_experts=4", "model.mlp.top_k=2", "model.mlp.hidden=40"],
    "latent": ["model/attention=latent", "model.attention.kv_lora_rank=16", "model.attention.qk_nope_head_dim=8",
               "model.attention.qk_rope_head_dim=8", "model.attention.v_head_dim=8", "model/embedding=rotary"],
    "dropout": ["model.dropout=0.1"],
    "sliding": ["model/mask=sliding_window", "model.mask.window=8"],
}


def real_block_bytes(overrides: list[str], precision: str) -> int:
    """One block's saved bytes on real CPU tensors, counted independently of builder/activations.py: what a
    two-block model keeps less what a one-block model keeps (distinct storages by address; parameters, buffers and
    autocast's 16-bit weight copies left out)."""
    kept = []
    for layers in (1, 2):
        cfg = builder.compose([*BASE, *overrides, f"model.n_layers={layers}"])
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        if precision == "bf16-true":
            model.to(torch.bfloat16)  # as Lightning's bf16-true casts it
        fixed = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        casts = {2 * n for p in model.parameters() if p.dim() >= 2 for n in (p.numel(), p[0].numel())}  # (an expert's)
        seen = {}

        def pack(t, fixed=fixed, casts=casts, seen=seen):
            storage = t.untyped_storage()
            cast = precision == "bf16-mixed" and t.dtype == torch.bfloat16 and storage.nbytes() in casts
            if storage.data_ptr() not in fixed and not cast:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, cfg.model.vocab_size, (1, S))
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids)
        kept.append(sum(seen.values()))
    return kept[1] - kept[0]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_fake_trace_counts_what_a_real_cpu_forward_keeps(name, precision):
    """Exact, block for block, for each component kind and precision (the CPU's attention: kernel='cpu')."""
    cfg = builder.compose([*BASE, *MODELS[name], "model.n_layers=2"])
    measured = saved_activations(to_plain(cfg.model), S, precision, kernel="cpu")
    assert measured["blocks"] == 2 * real_block_bytes(MODELS[name], precision)  # (what blocks share: once in both)
    assert measured["blocks"] > 0 and measured["largest"] == measured["blocks"] // 2
    assert measured["inputs"] == 2 * S * 32 * (2 if precision == "bf16-true" else 4)  # the residual stream


def test_gpt_blocks_keep_korthikantis_count_and_a_gpus_kernel_keeps_no_scores():
    """GPT-2's block at fp32 keeps 64·s·h bytes: Korthikanti et al.'s 34·s·h at 16 bits without the two dropout
    masks (2·s·h), doubled; the explicit path (the pattern hooked) adds the s x s pattern. With dropout the
    CPU takes the math path (s x s kept), a GPU's fused kernel does not: its count grows as s, the CPU's faster."""
    cfg = to_plain(builder.compose(["model=gpt2_small"]).model)
    h, layers = cfg["d_model"], cfg["n_layers"]
    for s in (256, 1024):
        fused = saved_activations(cfg, s, "32-true", "fused")
        assert fused["blocks"] == saved_activations(cfg, s, "32-true", "cpu")["blocks"]
        assert fused["blocks"] == pytest.approx(64 * s * h * layers, rel=0.002)  # (+ the log-sum-exp, 4·a·s)
        assert fused["inputs"] == 4 * s * h * layers
        assert fused["scores"] >= 4 * cfg["n_heads"] * s * s * layers  # the pattern at least, fp32
    dropped = {**cfg, "dropout": 0.1}
    fused = [saved_activations(dropped, s, "32-true", "fused")["blocks"] for s in (256, 512)]
    cpu = [saved_activations(dropped, s, "32-true", "cpu")["blocks"] for s in (256, 512)]
    assert fused[1] == 2 * fused[0] and cpu[1] > 2.5 * cpu[0] and cpu[0] > fused[0]


def test_the_plan_and_the_refusal_use_the_measurement(tmp_path):
    """training_memory's activations are the measurement times the batch: all blocks without checkpointing, each
    block's input and the largest block with it; the refusal on the CPU traces the CPU's attention."""
    cfg = builder.compose(["model=llama3_8b"])
    budget = parameter_budget(to_plain(cfg.model), "llama3_8b")
    saved = saved_activations(budget["model_config"], 8192, "bf16-mixed", "fused")
    est = training_memory(budget, 2, 8192, "bf16-mixed", shards=8)
    assert est["activations"] == 2 * (saved["blocks"] + saved["shared"])
    assert est["activations_source"] == "measured (fused attention)"
    ckpt = training_memory(budget, 2, 8192, "bf16-mixed", shards=8, checkpointing=True)
    assert ckpt["activations"] == 2 * (saved["inputs"] + saved["largest"] + saved["shared"])
    assert saved["blocks"] > 1.5 * 34 * 8192 * 4096 * 32  # a SwiGLU block with GQA keeps more than GPT-3's 34·s·h
    small = builder.compose(["model=tiny", "model.dropout=0.1", "data.batch_size=2"])
    checked = check_training_memory(parameter_budget(to_plain(small.model), "tiny"), small)
    assert checked["activations_source"] == "measured (cpu attention)"
    cpu = saved_activations(to_plain(small.model), 128, "32-true", "cpu")
    assert checked["activations"] == 2 * (cpu["blocks"] + cpu["shared"])
    assert cpu["blocks"] > saved_activations(to_plain(small.model), 128, "32-true", "fused")["blocks"]  # dropout


def test_task_plan_reports_the_measured_activations(tmp_path):
    out = tmp_path / "plan"
    proc = run_cli("task=plan", "model=gpt2_small", "plan.gpus=1", "data.batch_size=4", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "measured on the model's own blocks" in (out / "plan.md").read_text()
