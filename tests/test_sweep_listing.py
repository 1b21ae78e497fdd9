"""A sweep's comparison lists every job it planned (issue 15): ``jobs.json`` is written when a basic-sweeper
multirun starts, and ``sweep.md`` / ``sweep.csv`` give each planned job a status — ok, failed, interrupted (started,
no result), not run — also after a SIGTERM stops the sweep in the middle of a job; ``task=compare`` reads the plan
too. ``sweep.png`` calls jobs without a val/loss what they are, not failed.

Real ``python run.py -m`` processes with a tiny model; the plan itself is checked in process.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, home_env, run_cli
from omegaconf import OmegaConf

from builder.config.hydra_adapter import BASIC_SWEEPER
from builder.config.preflight import plan_jobs
from builder.tasks.compare import PLAN_FILE, compare_sweep, read_plan, write_plan

TINY = ["model.d_model=32", "model.n_layers=2", "model.context_length=32", "logger=csv",
        "callbacks.attention_probe=null", "callbacks.text_samples.prompt='the '", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "train.warmup_steps=0", "data.batch_size=4", "data.val_batches=1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "sweep_listing", WANDB_SILENT="true")


def data(env) -> list[str]:
    return ["data=text", f"data.path={env['corpus']}"]


def statuses(sweep: Path) -> list[tuple[str, str]]:
    return [(r["job"], r["status"]) for r in csv.DictReader(open(sweep / "sweep.csv"))]


# --------------------------------------------------------------------------------------------------
# the plan (in process)
# --------------------------------------------------------------------------------------------------


def _hydra_cfg(tmp_path: Path, task: list[str], params: dict | None = None, target: str = BASIC_SWEEPER):
    return OmegaConf.create({"hydra": {"sweeper": {"_target_": target, "max_batch_size": None, "params": params},
                                       "overrides": {"task": task}, "sweep": {"dir": str(tmp_path / "sweep")},
                                       "runtime": {"cwd": str(tmp_path)}}})


def test_plan_expands_the_sweepers_params_then_the_command_line(tmp_path):
    cfg = _hydra_cfg(tmp_path, ["model.n_heads=1,2", "seed=3"], params={"model/mask": "causal,sliding_window"})
    jobs = plan_jobs(cfg)
    assert [j["num"] for j in jobs] == [0, 1, 2, 3]
    assert [j["overrides"] for j in jobs] == [[f"model/mask={m}", f"model.n_heads={h}", "seed=3"]
                                              for m in ("causal", "sliding_window") for h in (1, 2)]
    path = write_plan(cfg)
    assert path == tmp_path / "sweep" / PLAN_FILE and read_plan(path.parent) == jobs
    # Optuna (any other sweeper) decides each trial as it goes: no plan, and a stale one is removed
    assert plan_jobs(_hydra_cfg(tmp_path, ["seed=3"], target="hydra_plugins.x.OptunaSweeper")) is None
    assert write_plan(_hydra_cfg(tmp_path, ["seed=3"], target="hydra_plugins.x.OptunaSweeper")) is None
    assert not path.exists()


def test_an_experiments_own_sweep_is_planned():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals

    from builder.config.compose import CONF_DIR
    from builder.config.schema import register_schemas

    register_schemas()
    setup_globals()  # ${now:...} in hydra.sweep.dir
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=mask_ablation"], return_hydra_config=True)
    assert [j["overrides"] for j in plan_jobs(cfg)] == [[f"model/mask={m}", "experiment=mask_ablation"]
                                                        for m in ("causal", "sliding_window", "alternating")]


def test_planned_jobs_without_a_directory_are_listed_as_not_run(tmp_path):
    import yaml

    plan = [{"num": n, "overrides": [f"lr={lr}"]} for n, lr in enumerate((0.1, 0.2, 0.3))]
    (tmp_path / PLAN_FILE).write_text(json.dumps({"jobs": plan}))
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["lr=0.1"]))
    (tmp_path / "0" / "summary.json").write_text(json.dumps({"best_val_loss": 2.0, "steps": 3}))
    (tmp_path / "0" / "budget.json").write_text(json.dumps({"total_params": 100}))
    result = compare_sweep(tmp_path, plot=False)
    assert [(r["job"], r["status"], r["label"]) for r in result["rows"]] == [
        ("0", "ok", "lr=0.1"), ("1", "not run", "lr=0.2"), ("2", "not run", "lr=0.3")]
    assert "3 jobs: 1 ok, 0 failed, 2 not run." in result["markdown"]
    assert result["plot"]["title"].endswith("(2 not run, not shown)")


# --------------------------------------------------------------------------------------------------
# real sweeps
# --------------------------------------------------------------------------------------------------


def test_a_short_sweep_validates_every_job_at_its_end(env):
    """trainer.val_check_interval beyond trainer.max_steps: each job validates once at its end, so each has a
    val/loss, a best checkpoint and a sample, sweep.md names the best job, and nothing printed is a bare None."""
    sweep = env["root"] / "short"
    proc = run_cli("-m", "seed=1,2", *data(env), *TINY, "trainer.max_steps=3", "trainer.val_check_interval=1000",
                   f"hydra.sweep.dir={sweep}", cwd=env["root"], env=env["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["val_loss"] is not None, summary
        assert summary["best_val_loss"] == summary["val_loss"]
        assert Path(summary["best_checkpoint"]).name == "best-3.ckpt" and Path(summary["samples"]).is_file()
        metrics = list(csv.DictReader(open(next((sweep / job).glob("csv/**/metrics.csv")))))
        assert [r["step"] for r in metrics if r["val/loss"]] == ["2"]  # one validation, after the last step
    md = (sweep / "sweep.md").read_text()
    assert "2 jobs: 2 ok, 0 failed." in md and "Best: job " in md and "No val/loss" not in md
    assert "(best: none" not in proc.stdout and "samples       : none" not in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if "None" in line and ("best" in line or ": None" in line)]


def test_a_sweep_without_validation_shows_its_jobs_as_ok_not_failed(env):
    """trainer.limit_val_batches=0: no val/loss in summary.json, nothing failed, and the summary says why there is no
    best checkpoint or sample (never a bare None)."""
    sweep = env["root"] / "no_val"
    proc = run_cli("-m", "model.n_heads=1,2", *data(env), *TINY, "trainer.max_steps=2", "trainer.limit_val_batches=0",
                   f"hydra.sweep.dir={sweep}", cwd=env["root"], env=env["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [j["overrides"][0] for j in read_plan(sweep)] == ["model.n_heads=1", "model.n_heads=2"]
    md = (sweep / "sweep.md").read_text()  # what the sweep's own callback wrote
    assert "2 jobs: 2 ok, 0 failed." in md and "No val/loss in 2 ok jobs" in md and "Failed jobs" not in md
    assert statuses(sweep) == [("0", "ok"), ("1", "ok")]
    assert (sweep / "sweep.png").stat().st_size > 1000
    drawn = compare_sweep(sweep)["plot"]  # the texts sweep.png carries besides its points
    assert drawn["title"].endswith(" (2 no val/loss, not shown)") and "failed" not in drawn["title"]
    assert drawn["empty"] == "no job with a val/loss"
    assert proc.stdout.count("(best: none (no validation ran))") == 2
    assert proc.stdout.count("samples       : none (no validation ran)") == 2 and ": None" not in proc.stdout


def test_a_sweep_stopped_during_job_1_lists_job_2_as_not_run(env):
    """SIGTERM during job 1 of 3: job 0 ok, job 1 interrupted (its last.ckpt saved), job 2 not run — in the comparison
    the sweep leaves and in the one ``task=compare`` writes again from jobs.json."""
    sweep, cwd = env["root"] / "stopped", env["root"] / "stopped_cwd"
    cwd.mkdir()
    # one sweep, three lengths: job 1 runs until it is stopped
    args = [sys.executable, str(REPO / "run.py"), "-m", "trainer.max_steps=2,100000,2", *data(env), *TINY,
            "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=1",
            f"hydra.sweep.dir={sweep}"]
    with open(cwd / "output.txt", "w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **env["env"], "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not (sweep / "1" / "checkpoints" / "step-2.ckpt").exists():
            assert proc.poll() is None, (cwd / "output.txt").read_text()[-4000:]
            assert time.time() < deadline, "job 1 never wrote step-2.ckpt"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (cwd / "output.txt").read_text()
    assert proc.returncode != 0, output[-3000:]  # stopped, not finished (143 for SIGTERM)
    assert "interrupted at step" in output and (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep / "2").exists()

    expected = [("0", "ok"), ("1", "interrupted"), ("2", "not run")]
    assert statuses(sweep) == expected
    md = (sweep / "sweep.md").read_text()
    assert "3 jobs: 1 ok, 0 failed, 1 interrupted, 1 not run." in md
    assert "| 2 | not run | `trainer.max_steps=2` |" in md and "Best: job 0 " in md

    for name in ("sweep.md", "sweep.csv", "sweep.png"):
        (sweep / name).unlink()
    again = run_cli("task=compare", f"sweep_dir={sweep}", f"hydra.run.dir={env['root'] / 'compare'}", cwd=cwd,
                    env=env["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(sweep) == expected and "| 1 | interrupted |" in again.stdout and "| 2 | not run |" in again.stdout
    assert (sweep / "sweep.png").is_file()
