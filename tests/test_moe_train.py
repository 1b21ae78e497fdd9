"""tiny_moe through run.py: the loss falls, the router losses reach the loggers, a resume is exact, and FSDP shards
the experts (two real CPU processes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import home_env, run_cli, train_run
from torch.distributed.checkpoint import FileSystemReader

import builder

SMALL = ["model=tiny_moe", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32",
         "model.mlp.hidden=32", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "trainer.log_every_n_steps=1", "callbacks.throughput.window=2", "callbacks.text_samples.prompt=the ",
         "callbacks.text_samples.max_new_tokens=8", "callbacks.attention_probe.text=the cat sat", "logger=csv",
         "train.warmup_steps=2", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "moe")


def metrics(run_dir: Path, key: str) -> dict[int, float]:
    """One column of the CSV logger's metrics.csv, by step."""
    rows = csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv"))))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_tiny_moe_trains_logs_its_router_losses_and_resumes_exactly(env):
    common = [*SMALL, "train.total_steps=16", "trainer.val_check_interval=8"]
    full, proc = train_run(env, "full", *common, "trainer.max_steps=16")
    # the load per expert over each validation's batches, drawn beside the patterns by the attention probe
    assert sorted(p.name for p in (full / "attention").glob("expert_load_step*.png")) == [
        "expert_load_step16.png", "expert_load_step8.png"]
    assert "CrowdedText" not in proc.stderr, proc.stderr[-3000:]
    half, _ = train_run(env, "half", *common, "trainer.max_steps=8")
    resumed, _ = train_run(env, "resumed", *common, "trainer.max_steps=16",
                           f"ckpt_path={half / 'checkpoints' / 'last.ckpt'}")
    loss = metrics(full, "train/loss")
    assert loss[max(loss)] < loss[min(loss)] - 0.3, loss
    aux, balance, z = (metrics(full, f"train/{k}") for k in ("aux_loss", "load_balance", "router_z"))
    assert sorted(aux) == sorted(loss) == sorted(balance) == sorted(z)  # every logged step has all three
    for step in aux:  # summed over the 2 layers, with tiny_moe.yaml's weights (the logged terms: layer means)
        assert aux[step] == pytest.approx(2 * (0.01 * balance[step] + 0.001 * z[step]), rel=1e-4)
        assert balance[step] >= 0.99  # 1 when the load is even, above when not
    busiest, idlest = metrics(full, "val/expert_load_max"), metrics(full, "val/expert_load_min")
    assert sorted(busiest) == sorted(idlest) == sorted(metrics(full, "val/loss")) and len(busiest) == 2
    assert all(busiest[s] >= 1 >= idlest[s] >= 0 for s in busiest)  # multiples of an even load, per validation
    a, r = loss, metrics(resumed, "train/loss")
    later = [s for s in r if s > 8]
    assert len(later) >= 7
    for step in later:  # resumed: the same losses as the uninterrupted run
        assert r[step] == pytest.approx(a[step], abs=1e-5), (step, r[step], a[step])
    ra = metrics(resumed, "train/aux_loss")
    for step in later:
        assert ra[step] == pytest.approx(aux[step], abs=1e-6)
    model, _, cfg = builder.load_model(full / "checkpoints" / "last.ckpt")
    assert cfg["mlp"]["name"] == "moe" and model.blocks[0].mlp.w_in.shape == (4, 64, 32)
    # routing made visible: task=attend draws which experts each token of the phrase goes to, per layer
    out = env["root"] / "attend"
    proc = run_cli("task=attend", f"checkpoint={full / 'checkpoints' / 'last.ckpt'}", "text=the cat sat",
                   f"hydra.run.dir={out}", env=env["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "routing of 2 mixture-of-experts layers" in proc.stdout
    assert (out / "routing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    routes = json.loads((out / "routing.json").read_text())
    assert len(routes["tokens"]) == 11 and sorted(routes["layers"]) == ["0", "1"]
    for layer in routes["layers"].values():  # 2 of 4 experts per token; the load counts every choice
        assert all(len(set(e)) == 2 and set(e) <= {0, 1, 2, 3} for e in layer["experts"])
        assert all(abs(sum(w) - 1) < 1e-5 for w in layer["weights"]) and sum(layer["load"]) == 2 * 11


def test_selection_biases_balance_the_experts_while_training_and_resume(env):
    """DeepSeek-V3's routing on tiny_moe (sigmoid scores, a selection bias moved by bias_update_rate after every
    optimizer step, no auxiliary loss): the overload is logged at every step, the biases are whole steps of the rate
    (2 micro-batches a step), saved with the checkpoint, and a resumed run ends with the same biases."""
    deepseek = [*SMALL, "model.mlp.scoring=sigmoid", "model.mlp.selection_bias=true", "model.mlp.aux_loss=0",
                "model.mlp.z_loss=0", "model.mlp.bias_update_rate=0.01", "trainer.accumulate_grad_batches=2",
                "train.total_steps=6", "trainer.val_check_interval=6"]
    full, _ = train_run(env, "balance", *deepseek, "trainer.max_steps=6")
    overload = metrics(full, "train/expert_overload")
    assert len(overload) == 6 and all(v >= 0 for v in overload.values()), overload
    model, _, cfg = builder.load_model(full / "checkpoints" / "last.ckpt")
    assert cfg["mlp"]["bias_update_rate"] == 0.01
    biases = torch.stack([b.mlp.selection_bias for b in model.blocks])
    steps = biases / 0.01  # each step moves each bias one rate up or down (or not at all at an even load)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 6 and biases.abs().sum() > 0
    half, _ = train_run(env, "balance_half", *deepseek, "trainer.max_steps=3")
    resumed, _ = train_run(env, "balance_resumed", *deepseek, "trainer.max_steps=6",
                           f"ckpt_path={half / 'checkpoints' / 'last.ckpt'}")
    again, _, _ = builder.load_model(resumed / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(torch.stack([b.mlp.selection_bias for b in again.blocks]), biases, rtol=0, atol=1e-6)


def test_tiny_moe_under_fsdp_shards_the_experts(env):
    out, proc = train_run(env, "fsdp", *SMALL, "trainer=fsdp_cpu", "data.batch_size=4", "trainer.max_steps=4",
                          "train.total_steps=4", "trainer.val_check_interval=2",
                          "callbacks.model_checkpoint.every_n_train_steps=2", fresh=True)
    assert "Starting with 2 processes" in proc.stdout + proc.stderr and "Done: 4 steps" in proc.stdout
    assert len(metrics(out, "train/aux_loss")) == 4
    meta = FileSystemReader(str(out / "checkpoints" / "last.ckpt")).read_metadata().state_dict_metadata
    for name in ("w_in", "w_out"):
        chunks = meta[f"state_dict.model.blocks.1.mlp.{name}"].chunks
        # two processes, each holding two of the four experts whole
        assert sorted((c.offsets[0], c.sizes[0]) for c in chunks) == [(0, 2), (2, 2)]
    model, _, _ = builder.load_model(out / "checkpoints" / "last.ckpt")  # read back in one process
    assert model.blocks[1].mlp.w_out.shape == (4, 32, 32)
