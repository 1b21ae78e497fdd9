"""One run per run directory, `ckpt_path=last` meaning this run's own, resuming only into the same model, interrupted
runs and sweeps exiting non-zero and re-running cleanly, and failures that keep the steps trained (issue 15)."""

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, train_env

SMALL = ["data=text", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.context_length=16",
         "logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.text_samples.prompt=the ", "callbacks.attention_probe=null", "train.warmup_steps=0"]


@pytest.fixture
def env(tmp_path):
    return train_env(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-step run the tests below only read (resume from, or try to reuse and find refused): trained once."""
    env = train_env(tmp_path_factory.mktemp("trained"))
    out = env["tmp"] / "first"
    train(env, out, "trainer.max_steps=2")
    return out


def train(env, out: Path, *overrides: str, expect: int = 0, small=SMALL) -> subprocess.CompletedProcess:
    proc = run_cli(*small, f"data.path={env['corpus']}", f"hydra.run.dir={out}", *overrides, env=env["env"])
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def error_of(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr[proc.stderr.index("Error: "):].split("\n")[0]


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` with its size and mtime: what a refused run must leave as it was."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def steps_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# ------------------------------------------------------------------------------- 1. a run directory: one run


def test_a_reused_run_directory_is_refused_and_left_as_it_was(env, trained):
    out = trained
    before = snapshot(out)
    for overrides in (["trainer.max_steps=4"], ["task=report"], ["task=train", "train.lr=3e-3"]):
        proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", *overrides, env=env["env"])
        assert proc.returncode == 2
        paragraph = error_of(proc)
        assert f"hydra.run.dir='{out}' is not accepted" in paragraph and "earlier run" in paragraph
        assert "ckpt_path=last" in paragraph and "summary.json" in paragraph
    assert snapshot(out) == before  # Hydra's .hydra/ and log included: refused before Hydra wrote anything
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_a_sweep_directory_with_earlier_jobs_is_refused(env):
    sweep = env["tmp"] / "sweep"
    args = ["-m", *SMALL, f"data.path={env['corpus']}", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}",
            "train.lr=1e-3,2e-3"]
    assert run_cli(*args, env=env["env"]).returncode == 0
    before = snapshot(sweep)
    proc = run_cli(*args, env=env["env"])
    assert proc.returncode == 2 and f"hydra.sweep.dir='{sweep}' is not accepted" in error_of(proc)
    assert snapshot(sweep) == before


# ---------------------------------------------------------- 2. ckpt_path=last: this run's own, never another's


def test_last_is_this_run_directorys_own_checkpoint(env):
    other = env["tmp"] / "outputs" / "other"
    train(env, other, "trainer.max_steps=4", "model.n_heads=4")  # a same-shape model with another head count
    fresh = env["tmp"] / "outputs" / "fresh"
    proc = train(env, fresh, "ckpt_path=last", "trainer.max_steps=2", f"paths.runs_dir={env['tmp'] / 'outputs'}")
    assert "Done: 2 steps" in proc.stdout  # started from the beginning: not step 4 of the other run
    note = proc.stdout + proc.stderr
    assert "no checkpoint of this run" in note and str(other / "checkpoints") in note  # the other run, named
    assert steps_of(fresh / "checkpoints" / "last.ckpt") == 2
    resumed = train(env, fresh, "ckpt_path=last", "trainer.max_steps=5")
    assert "Done: 5 steps" in resumed.stdout


# -------------------------------------------------------------- 3. resuming continues the same model, only


@pytest.mark.parametrize("change,key", [
    ("model.n_heads=4", "model.n_heads: 2 in the checkpoint, 4 now"),
    ("model/mask=sliding_window", "model.mask.name: 'causal' in the checkpoint, 'sliding_window' now"),
    ("model.dropout=0.1", "model.dropout: 0.0 in the checkpoint, 0.1 now"),
], ids=["n_heads", "mask", "dropout"])
def test_resuming_into_another_model_config_is_refused_listing_the_keys(env, trained, change, key):
    ckpt = trained / "checkpoints" / "last.ckpt"
    out = env["tmp"] / "second"
    proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", f"ckpt_path={ckpt}", change,
                   "trainer.max_steps=4", env=env["env"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    paragraph = error_of(proc)
    assert f"ckpt_path='{ckpt}' is not accepted" in paragraph and key in paragraph
    assert not out.exists()


def test_training_settings_may_change_on_resume(env, trained):
    proc = train(env, env["tmp"] / "second", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=4",
                 "train.lr=5e-4", "data.batch_size=4")
    assert "Done: 4 steps" in proc.stdout


# ------------------------------------------------- 5. what killed writes left is removed, and nothing else

# what a write killed mid-way leaves in a run's folders (builder/files.py's temp files, fsdp.py's staging folders)
STALE = ["checkpoints/.step-4.ckpt.k3_x9a0q.tmp", "checkpoints/.last.ckpt.abcd1234.tmp", ".summary.json.zz99yy88.tmp",
         ".budget.png.0a1b2c3d.tmp", "attention/.patterns_step4.png.qwertyui.tmp"]
STALE_DIRS = ["checkpoints/.last.ckpt.tmp", "checkpoints/.step-6.ckpt.old"]
# near misses: never ours to remove
OTHERS = ["checkpoints/notes.tmp", "checkpoints/.keep.tmp", "checkpoints/.step-4.ckpt.k3_x9a0q.tmp.bak",
          ".summary.json.ABCDEFGH.tmp", ".summary.json.abc.tmp", "csv/.metrics.csv.ab12cd34.tmp",
          "attention/deeper/.patterns.png.ab12cd34.tmp", "checkpoints/.last.ckpt.tmp.keep", "checkpoints/.x.old"]
OTHER_DIRS = ["checkpoints/.step-8.ckpt.ab12cd34.tmp", "checkpoints/.logs.tmp", ".last.ckpt.tmp"]


def plant(out: Path) -> None:
    for name in STALE + OTHERS:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"{name}\n")
    for name in STALE_DIRS + OTHER_DIRS:
        (out / name).mkdir(parents=True)
        (out / name / "shard.distcp").write_text(name)


@pytest.mark.parametrize("first", [True, False], ids=["before-any-checkpoint", "after-two-steps"])
def test_a_run_removes_what_killed_writes_left_in_its_folders_and_nothing_else(env, first):
    """A SIGKILL during a save leaves ``.step-N.ckpt.XXXXXXXX.tmp`` (or a sharded save's ``.NAME.tmp``/``.old``
    folder) forever: the run that starts (ckpt_path=last, no checkpoint yet: killed before its first one finished)
    or resumes in that folder removes them before it writes — only those names, only in the folders it writes."""
    out = env["tmp"] / "killed"
    if not first:
        train(env, out, "trainer.max_steps=2")
    plant(out)
    others = {name: (out / name).read_text() for name in OTHERS}
    proc = train(env, out, "ckpt_path=last", "trainer.max_steps=4")
    assert "Done: 4 steps" in proc.stdout
    assert [name for name in STALE + STALE_DIRS if (out / name).exists()] == []
    assert {name: (out / name).read_text() for name in OTHERS} == others
    assert all((out / name / "shard.distcp").read_text() == name for name in OTHER_DIRS)
    assert "removed what killed writes left in" in proc.stdout + proc.stderr


# ------------------------------------------------ 6. interrupted: saved, non-zero, and a re-run picks it up


def _start(args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO, text=True,
                            env={**os.environ, **env["env"], "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc, timeout=180):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_an_interrupted_sweep_exits_non_zero_and_its_rerun_resumes_each_job_from_its_own_directory(env):
    sweep = env["tmp"] / "sweep"
    args = ["-m", *SMALL, f"data.path={env['corpus']}", "callbacks.model_checkpoint.every_n_train_steps=2",
            f"hydra.sweep.dir={sweep}", "trainer.max_steps=4,400,6"]
    proc = _start(args, env)
    _wait_for(sweep / "1" / "checkpoints" / "step-4.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert f"hydra.sweep.dir={sweep} ckpt_path=last" in output  # how to resume
    assert not (sweep / "2").exists()
    interrupted_at = steps_of(sweep / "1" / "checkpoints" / "last.ckpt")
    job0 = snapshot(sweep / "0")

    # the re-run: job 0 is kept as it was, job 1 resumes from its own last.ckpt, job 2 starts (from nothing)
    more = interrupted_at + 3  # job 1 now asks for fewer steps than the interrupted 400, more than it trained
    args[-1] = f"trainer.max_steps=4,{more},6"
    rerun = run_cli(*args, "ckpt_path=last", env=env["env"])
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "already trained 4 steps" in rerun.stdout
    kept = lambda files: {k: v for k, v in files.items() if not k.startswith((".hydra", "config")) and  # noqa: E731
                          not k.endswith(".log")}  # Hydra rewrites .hydra/ and appends to the log; the results stay
    assert kept(snapshot(sweep / "0")) == kept(job0)
    assert json.loads((sweep / "1" / "summary.json").read_text())["steps"] == more
    assert json.loads((sweep / "2" / "summary.json").read_text())["steps"] == 6
    assert "no checkpoint of this run" in rerun.stdout + rerun.stderr  # job 2: from the beginning, said so


# ---------------------------------------------------- 7. nothing raised in training loses the steps trained


def test_context_length_one_trains_validates_and_samples(env):
    out = env["tmp"] / "c1"
    with_probe = [a for a in SMALL if a != "callbacks.attention_probe=null"]
    proc = train(env, out, "model.context_length=1", "trainer.max_steps=4", "trainer.val_check_interval=2",
                 "callbacks.attention_probe.text=the cat", "callbacks.text_samples.max_new_tokens=5", small=with_probe)
    assert "Done: 4 steps" in proc.stdout
    assert (out / "samples.txt").read_text().count("--- step") == 2
    assert len(list((out / "attention").glob("patterns_step*.png"))) == 2


def test_a_failure_during_training_saves_last_ckpt_before_it_is_raised(env):
    out = env["tmp"] / "fails"
    (out / "samples.txt").mkdir(parents=True)  # the first validation's text sample cannot be written: a real fault
    proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", "ckpt_path=last",
                   "trainer.max_steps=10", "trainer.val_check_interval=3", env=env["env"])
    assert proc.returncode not in (0, 2)
    assert "IsADirectoryError" in proc.stderr
    assert re.search(r"failed \(IsADirectoryError\) at step 3: saved .*last\.ckpt", proc.stdout), proc.stdout[-2000:]
    assert steps_of(out / "checkpoints" / "last.ckpt") == 3
    (out / "samples.txt").rmdir()
    resumed = train(env, out, "ckpt_path=last", "trainer.max_steps=5", "trainer.val_check_interval=3")
    assert "Done: 5 steps" in resumed.stdout


# ----------------------------------------------------------------------------- the progress bar on a terminal


def _on_a_terminal(args, env, timeout=300) -> str:
    """The run's output as a terminal shows it (Rich draws its bar only there)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env={**os.environ, **env["env"], "COLUMNS": "160"})
    os.close(follower)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_the_progress_bar_counts_the_runs_steps(env):
    out = env["tmp"] / "bar"
    args = [a for a in SMALL if a != "trainer.enable_progress_bar=false"] + [
        f"data.path={env['corpus']}", f"hydra.run.dir={out}", "trainer.max_steps=6"]
    shown = _on_a_terminal(args, env)
    assert "/-2" not in shown and re.search(r"Epoch 0 · step\W+6/6", shown), shown[-2000:]
    resumed = _on_a_terminal([*args[:-1], "trainer.max_steps=9", "ckpt_path=last"], env)
    counts = [int(n) for n in re.findall(r"step\W+(\d+)/9", resumed)]
    assert counts and min(counts) >= 6 and max(counts) == 9, resumed[-2000:]
