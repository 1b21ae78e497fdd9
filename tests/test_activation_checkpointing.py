"""train.activation_checkpointing=true: each block recomputed in the backward pass (torch.utils.checkpoint,
non-reentrant) trains exactly as without, under the CPU trainer, DDP (two processes) and FSDP2 (two processes)."""

import csv
from pathlib import Path

import pytest
import torch
from conftest import home_env, train_run

import builder
from builder.model import build_model

SMALL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=2", "model.context_length=32", "model.dropout=0.1",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
         "callbacks=none", "logger=csv", "train.warmup_steps=0", "data.batch_size=4", "trainer.max_steps=4",
         "trainer.val_check_interval=1000", "trainer.limit_val_batches=0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "ac")


def losses(run_dir: Path) -> list[float]:
    rows = csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv"))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def pair(env, trainer: str, fresh: bool) -> tuple[list[float], list[float]]:
    """The losses of the same run without and with activation checkpointing."""
    runs = [train_run(env, f"{trainer}_{on}", *SMALL, f"trainer={trainer}", f"train.activation_checkpointing={on}",
                      fresh=fresh)[0] for on in ("false", "true")]
    return losses(runs[0]), losses(runs[1])


def test_the_checkpointed_model_gives_the_same_gradients_and_keeps_less():
    """One model, dropout on: the loss and every gradient the same to 1e-6, with the blocks recomputed."""
    cfg = builder.compose(["model=tiny", "model.dropout=0.1"])
    model = build_model(cfg.model).train()
    ids = torch.randint(0, cfg.model.vocab_size, (2, 64))
    results = []
    for on in (False, True):
        model.set_activation_checkpointing(on)
        model.zero_grad()
        torch.manual_seed(1)
        saved: list[int] = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()], sum(saved)))
    (loss_a, grads_a, kept_a), (loss_b, grads_b, kept_b) = results
    assert abs(loss_a - loss_b) < 1e-6
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert kept_b < kept_a / 2  # what the forward keeps for the backward
    with torch.no_grad():  # evaluation and generation never checkpoint
        torch.testing.assert_close(model.eval()(ids), model(ids))


@pytest.mark.parametrize("trainer,fresh", [("cpu", False), ("ddp_cpu", True), ("fsdp_cpu", True)])
def test_training_with_activation_checkpointing_gives_the_same_losses(env, trainer, fresh):
    """Four steps with dropout, each trainer twice (two real processes for ddp_cpu and fsdp_cpu: about 15 s a run)."""
    without, with_ac = pair(env, trainer, fresh)
    assert len(without) == len(with_ac) == 4
    for a, b in zip(without, with_ac):
        assert abs(a - b) < 1e-5, (trainer, without, with_ac)
