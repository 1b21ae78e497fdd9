"""Experiments, debug configs, sweeps (basic, Optuna, with DDP), their comparison, and two nodes over torchrun.

Real processes throughout (``python run.py``, ``torchrun``), tiny models, a few steps. Independent runs start
together (the machine has 2 cores and most of a run is importing torch), each in its own working directory.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, home_env, run_cli
from wandb_offline import find_runs, read_run

TINY = ["model.d_model=32", "model.n_layers=2", "model.context_length=32", "logger=csv",
        "callbacks.attention_probe=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
STEP2 = ["trainer.max_steps=2", "trainer.val_check_interval=2", "train.warmup_steps=0", "data.batch_size=4",
         "data.val_batches=1"]
CPU_EXPERIMENTS = ["heads_vs_width", "mask_ablation", "norm_ablation"]
DEBUG = ["fast_dev_run", "limit", "overfit", "profile"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def start(*args: str, cwd: Path, env: dict, program: list[str] | None = None) -> subprocess.Popen:
    """Start ``python run.py ARGS`` (or ``program ARGS``) in ``cwd``; stdout and stderr go to files there."""
    cwd.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **env})
    cmd = (program or [sys.executable, str(REPO / "run.py")]) + list(args)
    n = len(list(cwd.glob("stdout*.txt")))
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=open(cwd / f"stdout{n}.txt", "w"),
                            stderr=open(cwd / f"stderr{n}.txt", "w"), text=True)
    proc.logs = (cwd / f"stdout{n}.txt", cwd / f"stderr{n}.txt")
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out, err = (p.read_text() for p in proc.logs)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def sweep_dirs(cwd: Path) -> list[Path]:
    """Sweep directories Hydra created below ``cwd`` (each has a multirun.yaml)."""
    return sorted(p.parent for p in cwd.glob("multirun/**/multirun.yaml"))


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")), key=lambda p: int(p.name))


def rows(sweep: Path) -> list[dict]:
    return list(csv.DictReader(open(sweep / "sweep.csv")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=True)["state_dict"]


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=k)


# --------------------------------------------------------------------------------------------------
# runs, started together
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "sweeps", WANDB_SILENT="true")


@pytest.fixture(scope="module")
def batch(env):
    """The CPU experiments, the debug configs, GPT-2 small shrunk to CPU size and an Optuna study: at once.

    The two basic sweeps share one working directory and start at the same moment: their sweep
    directories (``multirun/<date>/<time with microseconds>``) must differ."""
    root, e = env["root"], env["env"]
    shared = root / "shared_cwd"
    procs = {
        "experiments": start("-m", f"experiment={','.join(CPU_EXPERIMENTS)}", *TINY, "model.n_heads=2",
                             "trainer.fast_dev_run=true", cwd=shared, env=e),
        "debug": start("-m", f"debug={','.join(DEBUG)}", *TINY, "model.n_heads=2", "trainer.log_every_n_steps=10",
                       cwd=shared, env=e),
    }
    procs["gpt2"] = start("experiment=gpt2_small_repro", f"data.path={env['corpus']}", "trainer=cpu",
                          "trainer.precision=32-true", "train.compile=false", "data.bpe_vocab_size=300",
                          "data.batch_size=2", "data.val_batches=1", "trainer.accumulate_grad_batches=1", *TINY,
                          "model.n_heads=2", "trainer.fast_dev_run=true", f"hydra.run.dir={root / 'gpt2'}",
                          cwd=root / "gpt2_cwd", env=e)
    # seed 0: the sampler draws n_heads 2, 3, 3 -- one trial that works, two that the model refuses
    procs["optuna"] = start("hparams_search=optuna", "hydra.sweeper.n_trials=3", "model.n_heads=choice(2,3)",
                            *TINY, "trainer.max_steps=4", "trainer.val_check_interval=2", "train.warmup_steps=0",
                            "data.batch_size=4", "data.val_batches=1", f"hydra.sweep.dir={root / 'optuna'}",
                            cwd=root / "optuna_cwd", env=e)
    # submitit's local executor runs each job in a process of its own, as on a SLURM cluster; job 1 fails when it
    # reads its corpus (not UTF-8: a value no check before the run can refuse)
    (root / "latin1.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 200)
    procs["submitit"] = start("-m", "hydra/launcher=submitit_local", "data=text",
                              f"data.path={env['corpus']},{root / 'latin1.txt'}", *TINY, "model.n_heads=2", *STEP2,
                              "callbacks.text_samples.prompt=the", "callbacks.attention_probe=null",
                              cwd=root / "submitit_cwd", env={**e, "PYTHONPATH": str(REPO)})
    done = {name: finish(p) for name, p in procs.items()}
    dirs = sweep_dirs(shared)
    by_first_job = {yaml.safe_load((d / "0" / ".hydra" / "overrides.yaml").read_text())[0].split("=")[0]: d
                    for d in dirs if (d / "0").is_dir()}
    return {"procs": done, "sweeps": dirs, "experiments": by_first_job.get("experiment"),
            "debug": by_first_job.get("debug"), "root": root}


@pytest.fixture(scope="module")
def ddp_sweep(env):
    """``-m model.n_heads=1,2 trainer=ddp_cpu``: 2 jobs of 2 processes each, logged to wandb (offline) and csv."""
    cwd = env["root"] / "ddp_cwd"
    proc = ok(finish(start("-m", "model.n_heads=1,2", "trainer=ddp_cpu", *TINY, "logger=[wandb,csv]", *STEP2,
                           cwd=cwd, env=env["env"])))
    return {"cwd": cwd, "proc": proc, "sweeps": sweep_dirs(cwd)}


# --------------------------------------------------------------------------------------------------
# composition (in process, fast)
# --------------------------------------------------------------------------------------------------


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals

    import builder  # noqa: F401  (registers the schema)
    from builder.config.compose import CONF_DIR
    from builder.config.schema import register_schemas

    register_schemas()
    setup_globals()  # the ${now:...} resolver
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", ["heads_vs_width", "mask_ablation", "norm_ablation", "gpt2_small_repro",
                                  "adjective_head"])
def test_every_experiment_composes(name):
    from omegaconf import OmegaConf

    import builder
    from builder.config.compose import CONF_DIR

    extra = ["data.path=/data/corpus"] if name == "gpt2_small_repro" else []
    cfg = builder.compose([f"experiment={name}", *extra])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    first = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
    assert first == "# @package _global_"


def test_gpt2_small_repro_needs_a_corpus_and_is_gpt2_small_on_a_gpu():
    from omegaconf import OmegaConf

    import builder

    cfg = builder.compose(["experiment=gpt2_small_repro"])
    assert OmegaConf.is_missing(cfg.data, "path")
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.context_length) == (768, 12, 12, 1024)
    assert cfg.data.source == "text" and cfg.data.tokenizer in ("byte_bpe", "gpt2_bpe")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    tokens_per_step = cfg.data.batch_size * cfg.model.context_length * cfg.trainer.accumulate_grad_batches
    assert tokens_per_step == 524_288 and cfg.train.lr == 6e-4 and cfg.train.warmup_steps > 0
    assert builder.parameter_budget(cfg.model)["total_params"] == pytest.approx(124.4e6, rel=0.01)


def test_heads_vs_width_keeps_one_parameter_budget():
    import builder

    totals = {h: builder.parameter_budget(builder.compose(["experiment=heads_vs_width", f"model.n_heads={h}"]).model)
              for h in (1, 2, 4, 8)}
    assert len({b["total_params"] for b in totals.values()}) == 1
    assert len({b["attention_share"] for b in totals.values()}) == 1


@pytest.mark.parametrize("name,key,values", [("mask_ablation", "model/mask", "causal,sliding_window,alternating"),
                                             ("norm_ablation", "model/norm", "layernorm,rmsnorm"),
                                             ("heads_vs_width", "model.n_heads", "1,2,4,8")])
def test_ablations_carry_their_sweep(name, key, values):
    cfg = _compose_with_hydra([f"experiment={name}"])
    assert cfg.hydra.sweeper.params[key] == values


def test_debug_configs_compose():
    import builder

    expect = {"fast_dev_run": {"fast_dev_run": True}, "overfit": {"overfit_batches": 1},
              "limit": {"limit_train_batches": 20, "limit_val_batches": 2, "max_steps": 20},
              "profile": {"profiler": "simple"}}
    for name, keys in expect.items():
        trainer = builder.compose([f"debug={name}"]).trainer
        assert {k: trainer[k] for k in keys} == keys, name


def test_optuna_and_slurm_configs_compose():
    cfg = _compose_with_hydra(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_ and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert set(sweeper.params) >= {"train.lr", "model.n_heads"} and sweeper.max_failure_rate == 1.0
    slurm = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.nodes=4"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.nodes == 4 and slurm.tasks_per_node == slurm.gpus_per_node


def test_sweep_dirs_have_microseconds():
    a = _compose_with_hydra([]).hydra.sweep.dir
    time.sleep(0.001)
    b = _compose_with_hydra([]).hydra.sweep.dir
    assert a != b and len(Path(a).name.split("-")) == 4  # HH-MM-SS-ffffff


def test_show_config_writes_the_resolved_config(tmp_path, monkeypatch):
    import builder
    from builder.config.printing import show_config

    cfg = builder.compose(["model.context_length=64"])
    show_config(cfg, tmp_path, ["model.context_length=64"], print_tree=False)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["context_length"] == 64  # ${model.context_length}, resolved
    assert "model.context_length=64" in (tmp_path / "config.yaml").read_text().splitlines()[1]
    tree = (tmp_path / "config_tree.txt").read_text()
    assert "├── model" in tree and "context_length: 64" in tree
    monkeypatch.setenv("RANK", "1")
    show_config(cfg, tmp_path / "rank1", [], print_tree=False)
    assert not (tmp_path / "rank1").exists()


def test_compare_lists_failed_and_unfinished_jobs(tmp_path):
    from builder.tasks.compare import compare_sweep

    def job(num, overrides, summary=None, failure=None, params=1000):
        d = tmp_path / str(num)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (d / "budget.json").write_text(json.dumps({"total_params": params, "attention_share": 0.25}))
        if summary:
            (d / "summary.json").write_text(json.dumps(summary))
        if failure:
            (d / "failure.json").write_text(json.dumps({"status": "failed", "error": failure}))

    job(0, ["a=1", "lr=0.1"], {"best_val_loss": 2.0, "val_loss": 2.1, "tokens_per_s": 10.0, "steps": 5, "wall_time_s": 1.5})
    job(1, ["a=1", "lr=0.2"], {"best_val_loss": None, "val_loss": 1.5, "steps": 5}, params=2000)
    job(2, ["a=1", "lr=0.3"], failure="boom")
    job(10, ["a=1", "lr=0.4"])
    result = compare_sweep(tmp_path)
    got = {r["job"]: r for r in rows(tmp_path)}
    assert list(got) == ["0", "1", "2", "10"]
    assert [got[j]["status"] for j in got] == ["ok", "ok", "failed", "interrupted"]
    assert got["2"]["error"] == "boom" and "summary.json" in got["10"]["error"]
    assert got["1"]["best_val_loss"] == "1.5" and got["0"]["label"] == "lr=0.1" and got["0"]["wall_time_s"] == "1.5"
    assert result["best"]["job"] == "1"
    md = (tmp_path / "sweep.md").read_text()
    assert "Best: job 1 (`lr=0.2`)" in md and "Every job: `a=1`" in md and "boom" in md
    assert (tmp_path / "sweep.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


def test_two_sweeps_started_together_get_their_own_directories(batch):
    ok(batch["procs"]["experiments"])
    ok(batch["procs"]["debug"])
    assert len(batch["sweeps"]) == 2 and batch["experiments"] and batch["debug"]
    assert len(job_dirs(batch["experiments"])) == len(CPU_EXPERIMENTS)
    assert len(job_dirs(batch["debug"])) == len(DEBUG)


def test_cpu_experiments_run_fast_dev_run_and_are_compared(batch):
    sweep = batch["experiments"]
    out = ok(batch["procs"]["experiments"]).stdout
    assert out.count("Done: 1 steps") == len(CPU_EXPERIMENTS)
    table = rows(sweep)
    assert [r["label"] for r in table] == [f"experiment={n}" for n in CPU_EXPERIMENTS]
    assert all(r["status"] == "ok" and float(r["best_val_loss"]) > 0 and int(r["params"]) > 0 for r in table)
    assert (sweep / "sweep.md").is_file() and (sweep / "sweep.png").is_file()
    for job in job_dirs(sweep):  # the resolved config, kept with the run
        saved = yaml.safe_load((job / "config.yaml").read_text())
        assert saved["data"]["context_length"] == 32 and (job / "config_tree.txt").is_file()
        assert (job / ".hydra" / "overrides.yaml").is_file()
    assert "├── model" in batch["procs"]["experiments"].stderr  # the tree, printed at the start


def test_gpt2_small_repro_shrunk_to_cpu_runs(batch):
    ok(batch["procs"]["gpt2"])
    summary = json.loads((batch["root"] / "gpt2" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["wall_time_s"] > 0
    saved = yaml.safe_load((batch["root"] / "gpt2" / "config.yaml").read_text())
    assert saved["data"]["tokenizer"] == "byte_bpe" and saved["train"]["lr"] == 6e-4


def test_debug_configs_run(batch):
    sweep = batch["debug"]
    proc = ok(batch["procs"]["debug"])
    jobs = dict(zip(DEBUG, job_dirs(sweep)))
    steps = {name: json.loads((d / "summary.json").read_text())["steps"] for name, d in jobs.items()}
    assert steps == {"fast_dev_run": 1, "limit": 20, "overfit": 300, "profile": 20}
    assert sorted(p.name for p in (jobs["limit"] / "checkpoints").glob("step-*.ckpt")) == ["step-10.ckpt", "step-20.ckpt"]
    assert "FIT Profiler Report" in proc.stdout + proc.stderr
    train = [float(r["train/loss"]) for r in csv.DictReader(open(jobs["overfit"] / "csv" / "metrics.csv"))
             if r.get("train/loss")]
    assert train[-1] < 0.5 * train[0], (train[0], train[-1])  # one batch, memorised


def test_optuna_study_records_failed_trials_and_names_the_best(batch, env):
    ok(batch["procs"]["optuna"])
    sweep = env["root"] / "optuna"
    table = rows(sweep)
    assert len(table) == 3
    heads = [dict(o.split("=", 1) for o in r["overrides"].split())["model.n_heads"] for r in table]
    assert [r["status"] for r in table] == ["failed" if h == "3" else "ok" for h in heads]
    assert "3" in heads and "2" in heads  # at least one failed trial, and the study went on
    assert all("divisor of model.d_model" in r["error"] for r in table if r["status"] == "failed")
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min((r for r in table if r["status"] == "ok"), key=lambda r: float(r["best_val_loss"]))
    assert result["best_params"]["model.n_heads"] == 2
    assert result["best_value"] == pytest.approx(float(best["best_val_loss"]))
    assert f"Best: job {best['job']}" in (sweep / "sweep.md").read_text()
    assert (sweep / str(heads.index("3")) / "failure.json").is_file()


def test_submitit_launcher_runs_the_jobs_and_a_failed_job_does_not_stop_the_sweep(batch):
    proc = batch["procs"]["submitit"]
    (sweep,) = sweep_dirs(batch["root"] / "submitit_cwd")
    assert proc.returncode == 1, proc.stderr[-3000:]  # Hydra's basic sweeper reports the failed job at the end
    assert "JobFailed: " in proc.stderr and "latin1.txt" in proc.stderr and "TypeError" not in proc.stderr
    assert [r["status"] for r in rows(sweep)] == ["ok", "failed"] and "latin1.txt" in rows(sweep)[1]["label"]
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file() and (sweep / ".submitit").is_dir()
    assert (sweep / "1" / "failure.json").is_file() and not (sweep / "1" / "checkpoints").exists()


def test_multirun_with_ddp_launches_each_job_exactly_once(ddp_sweep):
    cwd, out = ddp_sweep["cwd"], ddp_sweep["proc"].stdout + ddp_sweep["proc"].stderr
    assert len(ddp_sweep["sweeps"]) == 1  # the children started no sweep of their own
    assert not (cwd / "outputs").exists()  # ... and no single run outside the job's directory
    sweep = ddp_sweep["sweeps"][0]
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"] and len(list(sweep.glob("*/.hydra"))) == 2
    assert out.count("Starting with 2 processes") == 2 and out.count("Launching 2 jobs locally") == 1
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "hydraformer_ddp_process_1.log").is_file()  # the child ran in this job's directory
        assert json.loads((job / "summary.json").read_text())["steps"] == 2
    assert [r["status"] for r in rows(sweep)] == ["ok", "ok"]


def test_each_job_is_its_own_wandb_run_grouped_by_sweep(ddp_sweep):
    sweep = ddp_sweep["sweeps"][0]
    files = find_runs(sweep)
    assert len(files) == 2 and [f.relative_to(sweep).parts[0] for f in files] == ["0", "1"]
    runs = [read_run(f) for f in files]
    assert runs[0]["run"]["id"] != runs[1]["run"]["id"]
    groups = {r["run"]["group"] for r in runs}
    assert len(groups) == 1 and sweep.name in groups.pop()
    assert [r["run"]["name"] for r in runs] == ["0: model.n_heads=1", "1: model.n_heads=2"]
    assert all(r["exit_code"] == 0 and r["config"]["model"]["n_heads"] == i + 1 for i, r in enumerate(runs))


def test_task_compare_rewrites_the_comparison(ddp_sweep, env):
    sweep = ddp_sweep["sweeps"][0]
    for name in ("sweep.md", "sweep.csv", "sweep.png"):
        (sweep / name).unlink()
    proc = ok(run_cli("task=compare", f"sweep_dir={sweep}", f"hydra.run.dir={env['root'] / 'compare'}", env=env["env"]))
    assert "| 1 | ok" in proc.stdout and "model.n_heads=2" in proc.stdout
    assert all((sweep / name).is_file() for name in ("sweep.md", "sweep.csv", "sweep.png"))
    assert [r["label"] for r in rows(sweep)] == ["model.n_heads=1", "model.n_heads=2"]
    bad = run_cli("task=compare", f"sweep_dir={env['root'] / 'nowhere'}", f"hydra.run.dir={env['root'] / 'c2'}",
                  env=env["env"])
    assert bad.returncode == 2 and "sweep_dir" in bad.stderr and "Traceback" not in bad.stderr


def test_two_nodes_over_torchrun_train_together(ddp_sweep, env):
    """Two node processes on loopback train as one job: the same parameters as 2 processes on one node."""
    out = env["root"] / "two_nodes"
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    args = ["--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
    run = [str(REPO / "run.py"), "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2", "model.n_heads=2",
           *TINY, *STEP2, f"hydra.run.dir={out}"]
    nodes = [start(*args, f"--node-rank={rank}", *run, cwd=env["root"] / f"node{rank}", env=env["env"], program=torchrun)
             for rank in (0, 1)]
    done = [ok(finish(p, timeout=240)) for p in nodes]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done[1].stdout + done[1].stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    one_node = ddp_sweep["sweeps"][0] / "1" / "checkpoints" / "last.ckpt"  # n_heads=2, 2 processes on one node
    assert_same_params(params(out / "checkpoints" / "last.ckpt"), params(one_node))
