"""Training end to end through run.py: real Lightning Trainer, real processes, real wandb offline files."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import train_env
from wandb_offline import find_runs, metric, read_run

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
         "train.warmup_steps=5", "train.throughput_window=2", "train.sample_prompt=the ",
         "train.probe_text=the cat sat on the mat"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return train_env(root, HOME=str(root), WANDB_API_KEY="")


def train(env, name, *overrides, data=True):
    from conftest import run_cli

    out = env["root"] / name
    args = [*SMALL, f"hydra.run.dir={out}", *overrides]
    if data:
        args = ["data=text", f"data.path={env['corpus']}", *args]
    proc = run_cli(*args, env=env["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    rows = csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv"))))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


@pytest.fixture(scope="module")
def main_run(env):
    return train(env, "main", "logger=[wandb,csv]", "trainer.max_steps=60", "trainer.val_check_interval=30",
                 "train.lr=3e-3", "train.checkpoint_every_n_steps=30", "train.sample_tokens=40")


def test_loss_falls_and_run_leaves_everything(main_run):
    out, proc = main_run
    loss = losses(out)
    first, last = loss[min(loss)], loss[max(loss)]
    assert last < 0.5 * first, (first, last)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["val_loss"] < 2.0
    assert math.isclose(summary["val_ppl"], math.exp(summary["val_loss"]), rel_tol=1e-4)
    for name in ("budget.json", "budget.md", "budget.png", "samples.txt", "checkpoints/last.ckpt",
                 "checkpoints/step-30.ckpt", "checkpoints/step-60.ckpt"):
        assert (out / name).exists(), name
    assert list((out / "checkpoints").glob("best-*.ckpt"))
    assert "--- step 30 ---" in (out / "samples.txt").read_text()
    assert (out / "attention" / "patterns_step30.png").exists() and (out / "attention" / "patterns_step60.png").exists()
    assert "checkpoint" in proc.stdout and "wandb sync" in proc.stdout


def test_checkpoint_loads_with_weights_only(main_run):
    out, _ = main_run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["d_model"] == 32 and hp["tokenizer"]["kind"] == "char"
    assert ckpt["global_step"] == 60
    import builder

    model, tokenizer, _ = builder.load_model(out / "checkpoints" / "last.ckpt")
    assert tokenizer.decode(tokenizer.encode("the cat")) == "the cat"
    assert model(torch.tensor([tokenizer.encode("the cat")])).shape[-1] == tokenizer.vocab_size


def test_wandb_offline_run_holds_the_metrics(main_run):
    out, _ = main_run
    runs = find_runs(out)
    assert len(runs) == 1 and out in runs[0].parents
    run = read_run(runs[0])
    train_loss = metric(run, "train/loss")
    assert len(train_loss) >= 50 and train_loss[-1] < train_loss[0]
    assert len(metric(run, "val/loss")) == 2 and metric(run, "val/ppl")
    assert metric(run, "perf/tokens_per_s") and metric(run, "perf/mfu")
    assert any(k.startswith("lr-") for row in run["history"] for k in row)
    assert run["config"]["model"]["d_model"] == 32
    keys = {k for row in run["history"] for k in row}
    assert {"budget/groups", "budget/chart", "samples", "attention/patterns"} <= keys


def test_sampling_is_reproducible_and_export_round_trips(main_run, env):
    from conftest import run_cli

    ckpt = main_run[0] / "checkpoints" / "last.ckpt"
    args = ["task=sample", f"checkpoint={ckpt}", "prompt=the ", "max_new_tokens=30"]
    a = run_cli(*args, f"hydra.run.dir={env['root'] / 's1'}", env=env["env"])
    b = run_cli(*args, f"hydra.run.dir={env['root'] / 's2'}", env=env["env"])
    c = run_cli(*args, "seed=7", f"hydra.run.dir={env['root'] / 's3'}", env=env["env"])
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("the ") and len(a.stdout.strip()) >= 30
    assert (env["root"] / "s1" / "sample.txt").read_text().strip() == a.stdout.strip()
    e = run_cli("task=export", f"checkpoint={ckpt}", f"hydra.run.dir={env['root'] / 'exp'}", env=env["env"])
    assert e.returncode == 0, e.stderr
    export = env["root"] / "exp" / "export"
    assert (export / "model.safetensors").exists() and (export / "hydraformer.json").exists()
    d = run_cli("task=sample", f"checkpoint={export}", "prompt=the ", "max_new_tokens=30",
                f"hydra.run.dir={env['root'] / 's4'}", env=env["env"])
    assert d.stdout == a.stdout
    assert c.stdout != a.stdout


def test_resume_matches_uninterrupted_run_and_seed_is_deterministic(env):
    common = ["logger=csv", "train.total_steps=16", "trainer.val_check_interval=8"]
    full, _ = train(env, "full", *common, "trainer.max_steps=16")
    half, _ = train(env, "half", *common, "trainer.max_steps=8")
    resumed, _ = train(env, "resumed", *common, "trainer.max_steps=16", f"ckpt_path={half / 'checkpoints' / 'last.ckpt'}")
    a, b, r = losses(full), losses(half), losses(resumed)
    assert max(b) >= 7 and max(a) >= 15
    for step in b:  # same seed, same config: the same losses
        assert a[step] == pytest.approx(b[step], abs=1e-6), step
    later = [s for s in r if s > max(b)]
    assert len(later) >= 7
    for step in later:  # resumed: same step count, optimizer, scheduler and data order
        assert r[step] == pytest.approx(a[step], abs=1e-5), (step, r[step], a[step])
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16


STEP2 = ["logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=2", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def big_batch(env):
    """One process, batch 8, two optimizer steps: the reference for DDP and accumulation."""
    out, _ = train(env, "single", *STEP2, "trainer=cpu", "data.batch_size=8")
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=k)


def test_ddp_two_cpu_processes_equal_one_process_with_double_batch(env, big_batch):
    ddp, proc = train(env, "ddp", *STEP2, "trainer=ddp_cpu", "data.batch_size=4")
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert_same_params(torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"], big_batch)


def test_gradient_accumulation_equals_double_batch(env, big_batch):
    steps = [s for s in STEP2 if "val_check_interval" not in s]
    acc, _ = train(env, "accumulate", *steps, "trainer.val_check_interval=4", "data.batch_size=4",
                   "trainer.accumulate_grad_batches=2")
    ckpt = torch.load(acc / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert_same_params(ckpt["state_dict"], big_batch)


@pytest.mark.parametrize("option", ["trainer.precision=bf16-mixed", "trainer.precision=16-mixed", "train.compile=true"])
def test_precision_and_compile_train(env, option):
    out, proc = train(env, option.split("=")[1], option, "trainer.fast_dev_run=true", "logger=csv")
    assert "Done: 1 steps" in proc.stdout


def test_ckpt_path_last_resumes_the_newest(env, main_run):
    out, proc = train(env, "main", "logger=csv", "trainer.max_steps=62", "trainer.val_check_interval=31", "ckpt_path=last")
    assert f"Restoring states from the checkpoint path at {out / 'checkpoints' / 'last.ckpt'}" in proc.stdout + proc.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 62


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_fast_dev_run_on_the_embedded_corpus(env, trainer):
    out, proc = train(env, f"fdr_{trainer}", f"trainer={trainer}", "trainer.fast_dev_run=true", "logger=csv", data=False)
    assert "Done: 1 steps" in proc.stdout
