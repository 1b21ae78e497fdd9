"""Training end to end through run.py: real Lightning Trainer, real processes, real wandb offline files."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train_env
from omegaconf.errors import ValidationError
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from wandb_offline import find_runs, metric, read_run

import builder
from builder.config.schema import CALLBACK_SCHEMAS, LECTURE_PHRASE
from builder.data.tokenizers import CharTokenizer
from builder.errors import ConfigError
from builder.tasks.train import find_checkpoint
from builder.training.callbacks import BUILDERS, AttentionProbe, RunContext, SampleText, make_callbacks
from builder.training.throughput import ThroughputMonitor

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
         "train.warmup_steps=5", "callbacks.throughput.window=2", "callbacks.text_samples.prompt=the ",
         "callbacks.attention_probe.text=the cat sat on the mat"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return train_env(root, HOME=str(root), WANDB_API_KEY="")


def train(env, name, *overrides, data=True, fresh=False):
    out = env["root"] / name
    args = [*SMALL, f"hydra.run.dir={out}", *overrides]
    if data:
        args = ["data=text", f"data.path={env['corpus']}", *args]
    proc = run_cli(*args, env=env["env"], fresh=fresh)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    rows = csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv"))))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


@pytest.fixture(scope="module")
def main_run(env):
    return train(env, "main", "logger=[wandb,csv]", "trainer.max_steps=60", "trainer.val_check_interval=30",
                 "train.lr=3e-3", "callbacks.model_checkpoint.every_n_train_steps=30", "callbacks.text_samples.max_new_tokens=40")


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
    f = run_cli(*args, "compile=true", f"hydra.run.dir={env['root'] / 's5'}", env=env["env"])
    assert f.returncode == 0, f.stderr
    assert f.stdout == a.stdout  # the compiled decoding step samples the same tokens
    assert "compile=true: compiling the decoding step first" in f.stderr and "compiling" not in a.stderr


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


def test_a_short_run_validates_at_its_end_once(env):
    """A run whose last step is not a validation step validates after it (val/loss, best checkpoint, a sample); one
    whose last step is validates once; the summary printed names no bare None."""
    short = ["logger=csv", "train.warmup_steps=0", "callbacks.attention_probe=null"]
    out, proc = train(env, "short", *short, "trainer.max_steps=3", "trainer.val_check_interval=1000")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] is not None and summary["best_val_loss"] == summary["val_loss"]
    assert list(losses(out, "val/loss")) == [2]  # after the third (last) step
    assert Path(summary["best_checkpoint"]).name == "best-3.ckpt"
    assert (out / "samples.txt").read_text().startswith("--- step 3 ---")
    assert f"(best: {summary['best_checkpoint']})" in proc.stdout and "None" not in proc.stdout.split("Done:")[1]
    out, _ = train(env, "short_on_a_validation_step", *short, "trainer.max_steps=2", "trainer.val_check_interval=2")
    assert list(losses(out, "val/loss")) == [1]  # the last step's own validation, not a second
    assert (out / "samples.txt").read_text().count("--- step ") == 1
    out, proc = train(env, "short_without_samples", "logger=csv", "callbacks.text_samples=null", "trainer.max_steps=2")
    done = proc.stdout.split("Done:")[1]
    assert "samples       : none (callbacks.text_samples is off)" in done and "None" not in done
    # trainer.enable_checkpointing=false: no checkpoint written (the callback that writes them is left out)
    out, proc = train(env, "short_without_checkpoints", "logger=csv", "trainer.enable_checkpointing=false",
                      "trainer.max_steps=2")
    assert not (out / "checkpoints").exists() and json.loads((out / "summary.json").read_text())["val_loss"]
    assert "checkpoint    : none" in proc.stdout.split("Done:")[1]


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
    ddp, proc = train(env, "ddp", *STEP2, "trainer=ddp_cpu", "data.batch_size=4", fresh=True)  # two real processes
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


def test_compile_without_a_working_compiler_names_the_key(env, main_run):
    """torch.compile that cannot build its kernels (CXX names no compiler; an empty compile cache, so nothing is
    reused) is refused with the key that asked for it, in training and in sampling: one line, exit 2, no traceback."""
    bad = {**env["env"], "CXX": str(env["root"] / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(env["root"] / "inductor")}
    ckpt = main_run[0] / "checkpoints" / "last.ckpt"
    runs = {
        "train.compile": run_cli("data=text", f"data.path={env['corpus']}", *SMALL, "train.compile=true",
                                 "trainer.fast_dev_run=true", "logger=csv", f"hydra.run.dir={env['root'] / 'nocc_train'}",
                                 env=bad),
        "compile": run_cli("task=sample", f"checkpoint={ckpt}", "prompt=the ", "max_new_tokens=5", "compile=true",
                           f"hydra.run.dir={env['root'] / 'nocc_sample'}", env=bad),
    }
    for key, proc in runs.items():
        text = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, proc.stderr[-3000:]
        assert errors[0].startswith(f"Error: {key}=True is not accepted: false on this machine: torch.compile could "
                                    "not build"), errors[0]
        assert "C++ compiler" in errors[0], errors[0]


def test_ckpt_path_last_resumes_the_newest(env, main_run):
    out, proc = train(env, "main", "logger=csv", "trainer.max_steps=62", "trainer.val_check_interval=31", "ckpt_path=last")
    assert f"Restoring states from the checkpoint path at {out / 'checkpoints' / 'last.ckpt'}" in proc.stdout + proc.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 62


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_fast_dev_run_on_the_embedded_corpus(env, trainer):
    out, proc = train(env, f"fdr_{trainer}", f"trainer={trainer}", "trainer.fast_dev_run=true", "logger=csv", data=False,
                      fresh=trainer == "ddp_cpu")  # two real processes
    assert "Done: 1 steps" in proc.stdout
    logged = (out / "csv" / "hparams.yaml").read_text()  # the run's config, logged once the Trainer exists
    assert "\ntrainer:\n" in logged and "\nmodel:\n" in logged, logged[:500]


# ------------------------------------------------------------------------------------------ the callbacks group


def _callbacks(*overrides, has_logger=True, progress_bar=True, tmp=Path("/nonexistent")):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,T")
    run = RunContext(tokenizer=tok, out_dir=tmp, seed=0, flops_per_token=1e6, precision="32-true",
                     has_logger=has_logger, progress_bar=progress_bar)
    return make_callbacks(builder.compose(list(overrides)).callbacks, run)


def test_callbacks_group_builds_each_entry_from_the_allow_list():
    assert set(BUILDERS) == set(CALLBACK_SCHEMAS)
    built = _callbacks("callbacks.throughput.peak_flops=1e12", "callbacks.model_checkpoint.every_n_train_steps=7")
    assert list(built) == ["model_checkpoint", "text_samples", "attention_probe", "throughput", "lr_monitor",
                           "rich_progress_bar"]
    best, periodic = built["model_checkpoint"]
    assert isinstance(best, ModelCheckpoint) and best.filename == "best-{step}" and best.monitor == "val/loss"
    assert best.save_last and periodic.filename == "step-{step}" and periodic._every_n_train_steps == 7
    (sampler,) = built["text_samples"]
    assert isinstance(sampler, SampleText) and (sampler.prompt, sampler.max_new_tokens, sampler.top_k) == ("The ", 200, 40)
    (probe,) = built["attention_probe"]
    assert isinstance(probe, AttentionProbe) and probe.text == LECTURE_PHRASE
    (monitor,) = built["throughput"]
    assert isinstance(monitor, ThroughputMonitor) and monitor.peak == 1e12 and monitor.window == 10
    assert isinstance(built["lr_monitor"][0], LearningRateMonitor)
    assert isinstance(built["rich_progress_bar"][0], RichProgressBar)
    quiet = _callbacks("callbacks.throughput.peak_flops=1e12", has_logger=False, progress_bar=False)
    assert quiet["lr_monitor"] == [] and quiet["rich_progress_bar"] == []


@pytest.mark.parametrize("overrides", [["~callbacks.attention_probe"], ["callbacks.attention_probe=null"]])
def test_a_callback_is_switched_off(overrides):
    assert "attention_probe" not in _callbacks("callbacks.throughput.peak_flops=1e12", *overrides)


def test_callbacks_none_keeps_only_the_checkpoints():
    assert list(_callbacks("callbacks=none")) == ["model_checkpoint"]


def test_callbacks_refuse_unknown_names_targets_and_wrong_types():
    with pytest.raises(ConfigError) as err:
        _callbacks("+callbacks.text_sample.prompt=x")
    assert "callbacks.text_sample" in str(err.value) and "did you mean 'text_samples'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _callbacks("+callbacks.mine._target_=os.system")
    assert "callbacks.mine._target_" in str(err.value) and "never names code to run" in str(err.value)
    with pytest.raises(ConfigError) as err:  # an entry written without its schema (a YAML of one's own) is checked too
        make_callbacks({"text_samples": {"promt": "x"}}, None)
    assert "callbacks.text_samples.promt" in str(err.value) and "did you mean 'prompt'" in str(err.value)
    with pytest.raises(Exception) as err:
        builder.compose(["callbacks.model_checkpoint.every_n_train_steps=abc"])
    assert isinstance(err.value, ValidationError) or isinstance(err.value.__cause__, ValidationError)


# ------------------------------------------------------------------------------------------ the paths group


def test_paths_place_the_token_cache(monkeypatch):
    monkeypatch.setenv("HYDRAFORMER_CACHE", "/somewhere/tokens")
    assert builder.compose([]).data.cache_dir == "/somewhere/tokens"
    assert builder.compose(["paths.cache_dir=/elsewhere"]).data.cache_dir == "/elsewhere"
    monkeypatch.delenv("HYDRAFORMER_CACHE")
    assert builder.compose([]).data.cache_dir == "~/.cache/hydraformer/tokens"


def test_ckpt_path_last_is_this_runs_own_newest_checkpoint(tmp_path):
    runs, sweeps, here = tmp_path / "runs", tmp_path / "sweeps", tmp_path / "here"
    for i, path in enumerate([sweeps / "d" / "t" / "0" / "checkpoints" / "last.ckpt",
                              runs / "d" / "t_train" / "checkpoints" / "step-4.ckpt"]):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    paths = {"runs_dir": str(runs), "sweeps_dir": str(sweeps)}
    def anything(path):  # the selection alone: the run's check of a candidate is tested with real checkpoints
        pass

    assert find_checkpoint("last", here, paths, anything) is None  # other runs' checkpoints are never this run's
    own = here / "checkpoints"
    own.mkdir(parents=True)
    for i, name in enumerate(["step-8.ckpt", "last.ckpt", ".last.ckpt.x1.tmp"]):
        (own / name).write_bytes(b"x")
        os.utime(own / name, (2000 + i, 2000 + i))
    assert find_checkpoint("last", here, paths, anything) == str(own / "last.ckpt")  # newest; a temp file aside
    assert find_checkpoint(None, here, paths, anything) is None
    with pytest.raises(builder.ConfigError, match="could not be loaded safely"):  # the default check reads it
        find_checkpoint("last", here, paths)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_the_finite_check_finds_every_nan_and_infinity_and_names_the_first(dtype):
    """builder.checkpoint.nonfinite_tensor (run before every save) agrees with torch.isfinite, whatever the shape,
    the layout or where the bad value sits; integer tensors, empty ones and steps are not weights."""
    from builder.checkpoint import nonfinite_tensor

    gen = torch.Generator().manual_seed(0)
    shapes = [(1,), (7,), (33, 5), (128, 96), (4, 3, 17), (50_003,)]
    for trial in range(40):
        state = {f"w{i}": torch.randn(shape, generator=gen).to(dtype) for i, shape in enumerate(shapes)}
        state["w3"] = state["w3"].t()  # not contiguous
        state.update(step=torch.tensor(7), ids=torch.arange(5), empty=torch.empty(0, dtype=dtype))
        assert nonfinite_tensor(state) is None
        bad = sorted(torch.randperm(len(shapes), generator=gen)[: 1 + trial % 3].tolist())
        for i in bad:
            t = state[f"w{i}"]
            t[tuple(int(torch.randint(n, (1,), generator=gen)) for n in t.shape)] = (
                float("nan"), float("inf"), -float("inf"))[trial % 3]
        expected = next(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
        assert nonfinite_tensor(state) == expected == f"w{bad[0]}"
        assert nonfinite_tensor(list(state.items())) == expected  # pairs, as read one at a time from shards


def test_runs_go_to_paths_runs_dir_and_resume_from_there(env):
    runs = env["root"] / "elsewhere"
    small = [a for a in SMALL if not a.startswith("callbacks.")]  # (entries that callbacks=none leaves out)
    args = ["data=text", f"data.path={env['corpus']}", *small, "logger=csv", "callbacks=none", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "train.warmup_steps=0", f"paths.runs_dir={runs}"]
    first = run_cli(*args, env=env["env"])
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = runs.glob("*/*_train")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "summary.json").is_file()
    assert not (run_dir / "samples.txt").exists() and not (run_dir / "attention").exists()  # callbacks=none
    assert json.loads((run_dir / "summary.json").read_text())["samples"] is None
    resumed = run_cli(*args, "trainer.max_steps=4", f"hydra.run.dir={run_dir}", "ckpt_path=last", env=env["env"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in (
        resumed.stdout + resumed.stderr)
    assert "Done: 4 steps" in resumed.stdout
