"""Faults with real processes: SIGTERM and Ctrl-C save a checkpoint, SIGKILL loses at most the steps since
the last periodic checkpoint, NaN losses stop the run (or are skipped), unsafe files are refused."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, train_env

import builder

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "callbacks.text_samples.prompt=the ",
         "callbacks.attention_probe=null", "train.warmup_steps=0"]


@pytest.fixture
def env(tmp_path):
    return train_env(tmp_path)


def start(env, out, *overrides):
    args = [sys.executable, str(REPO / "run.py"), "data=text", f"data.path={env['corpus']}", *SMALL,
            f"hydra.run.dir={out}", *overrides]
    # PYTHONFAULTHANDLER: a SIGABRT makes the child print every thread's stack (see finish()).
    # SIGINT back to its default: a shell without job control starts background jobs (`cmd &`) with
    # SIGINT ignored, the ignoring is inherited, and Python then never raises KeyboardInterrupt.
    return subprocess.Popen(args, cwd=REPO, env={**os.environ, **env["env"], "PYTHONUNBUFFERED": "1",
                                                 "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc, timeout=120) -> str:
    """The child's output once it exits; if it does not, its stacks, so a hang says where it hangs."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        output = proc.communicate(timeout=60)[0]
        stacks = output.split("\nExtension modules:")[0]
        pytest.fail(f"the run did not exit within {timeout} s; its stacks and output:\n{stacks[-6000:]}")


def wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def resume_for(env, out: Path, max_steps: int) -> None:
    """``ckpt_path=last`` in the same run directory continues to ``max_steps``."""
    resumed = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "ckpt_path=last",
                      f"trainer.max_steps={max_steps}", "trainer.val_check_interval=1000", env=env["env"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Done: {max_steps} steps" in resumed.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_checkpoint_and_resume_continues(env, sig):
    out = env["tmp"] / "run"
    proc = start(env, out, "trainer.max_steps=100000", "trainer.val_check_interval=100000",
                 "callbacks.model_checkpoint.every_n_train_steps=5")
    wait_for(out / "checkpoints" / "step-5.ckpt", proc)
    time.sleep(0.5)
    proc.send_signal(sig)
    output = finish(proc)
    assert "interrupted at step" in output, output[-3000:]
    assert proc.returncode == 128 + sig, output[-3000:]  # not finished: SLURM's requeue and `a && b` must see it
    assert f"hydra.run.dir={out} ckpt_path=last" in output  # how to resume
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    step = ckpt["global_step"]
    assert step >= 5
    resume_for(env, out, step + 3)


def test_sigkill_loses_only_steps_since_the_periodic_checkpoint(env):
    out = env["tmp"] / "run"
    proc = start(env, out, "trainer.max_steps=100000", "trainer.val_check_interval=100000",
                 "callbacks.model_checkpoint.every_n_train_steps=4")
    wait_for(out / "checkpoints" / "step-8.ckpt", proc)
    proc.kill()
    proc.communicate(timeout=60)
    saved = sorted(out.glob("checkpoints/step-*.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
    step = torch.load(saved, weights_only=True)["global_step"]  # complete: writes are atomic
    resume_for(env, out, step + 2)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(env):
    out = env["tmp"] / "nan"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "train.lr=1e6",
                   "trainer.max_steps=50", "trainer.val_check_interval=1000", "callbacks.model_checkpoint.every_n_train_steps=1",
                   env=env["env"])
    assert proc.returncode == 2
    assert "train/loss is nan at step" in proc.stderr and "train.skip_nonfinite=true" in proc.stderr
    assert "Traceback" not in proc.stderr
    failed_at = int(proc.stderr.split("at step ")[1].split()[0])
    kept = list(out.glob("checkpoints/*.ckpt"))
    assert kept, "the checkpoints written before the failure stay"
    for path in kept:
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["global_step"] <= failed_at
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_a_deferred_nan_check_names_the_first_bad_step_and_keeps_no_stepped_checkpoint(env):
    """train.finite_check_every=4 (what a GPU does by default, every trainer.log_every_n_steps: no host sync per
    step): the first NaN is still named with its own step, and no checkpoint holds weights it stepped."""
    out = env["tmp"] / "nan_deferred"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "train.lr=1e6",
                   "trainer.max_steps=50", "trainer.val_check_interval=1000", "train.finite_check_every=4",
                   "callbacks.model_checkpoint.every_n_train_steps=1", env=env["env"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr.split("train/loss is ")[1]
    assert message.startswith(("nan at step", "inf at step")) and "checked every 4 steps" in message
    failed_at = int(message.split("at step ")[1].split()[0])
    seen_at = int(message.split("seen at step ")[1].split(":")[0])
    assert failed_at <= seen_at < failed_at + 4
    kept = list(out.glob("checkpoints/*.ckpt"))
    for path in kept:
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["global_step"] <= failed_at
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def finite(path: Path) -> bool:
    """Whether every weight of the checkpoint file ``path`` is finite (read with plain torch)."""
    return all(bool(torch.isfinite(v).all()) for v in torch.load(path, weights_only=True)["state_dict"].values())


# train.lr=1e5 on the SMALL model: the losses of steps 0 and 1 are finite, the update of step 1 makes every weight
# NaN (its gradients overflow) — what the loss check alone never sees before the save of step 2
OVERFLOW = ["train.lr=1e5", "trainer.max_steps=20"]


@pytest.mark.parametrize("every,kept", [(2, None), (1, "step-1.ckpt")], ids=["none-kept", "step-1-kept"])
def test_weights_an_update_made_nonfinite_are_never_saved(env, every, kept):
    """The issue's example: the periodic save of step 2 would have written NaN weights and the run would have called
    it its last good checkpoint. It is refused; the message names the last checkpoint whose weights are finite
    (read from disk), or says that there is none."""
    out = env["tmp"] / f"overflow{every}"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", *OVERFLOW,
                   f"callbacks.model_checkpoint.every_n_train_steps={every}", "trainer.val_check_interval=2",
                   env=env["env"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "Error: the weights are no longer finite at step 2 (model." in proc.stderr, proc.stderr[-3000:]
    if kept:
        assert f"The last checkpoint with finite weights: {out / 'checkpoints' / kept}." in proc.stderr
    else:
        assert f"No checkpoint with finite weights is kept: {out / 'checkpoints'} holds none." in proc.stderr
    written = sorted(p.name for p in out.glob("checkpoints/*"))
    assert written == ([kept] if kept else []), written
    assert all(finite(p) for p in out.glob("checkpoints/*.ckpt"))


def test_last_ckpt_is_never_written_with_nonfinite_weights(env):
    """train.skip_nonfinite=true skips every NaN loss, but weights that are NaN stay NaN: at the end of training
    Lightning saves last.ckpt. Not of these weights: the run stops, saying so."""
    out = env["tmp"] / "skip_overflow"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "train.lr=1e5",
                   "trainer.max_steps=4", "train.skip_nonfinite=true", "trainer.val_check_interval=1000",
                   "callbacks.model_checkpoint.every_n_train_steps=1000", env=env["env"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Error: the weights are no longer finite at step 4" in proc.stderr, proc.stderr[-3000:]
    assert f"{out / 'checkpoints'} holds none" in proc.stderr
    assert not (out / "checkpoints" / "last.ckpt").exists()


def test_an_interrupt_never_saves_nonfinite_weights(env):
    """SIGTERM while training on NaN weights (train.skip_nonfinite=true keeps the run going): last.ckpt is not
    written, the output says why and that no checkpoint with finite weights is kept, and the run still exits as
    interrupted (143)."""
    out = env["tmp"] / "term_overflow"
    proc = start(env, out, "train.lr=1e5", "trainer.max_steps=100000", "trainer.val_check_interval=100000",
                 "train.skip_nonfinite=true", "trainer.log_every_n_steps=1",
                 "callbacks.model_checkpoint.every_n_train_steps=100000")
    deadline = time.time() + 120
    while not list(out.glob("csv/**/metrics.csv")):  # the csv logger's first flush: step 100
        assert proc.poll() is None and time.time() < deadline, finish(proc)[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert f"{out / 'checkpoints' / 'last.ckpt'} not saved: the weights are no longer finite at step" in output, \
        output[-3000:]
    assert f"No checkpoint with finite weights is kept: {out / 'checkpoints'} holds none." in output
    assert not (out / "checkpoints" / "last.ckpt").exists()


def poison(path: Path, dest: Path, optimizer: bool = False) -> str:
    """Write a copy of the checkpoint ``path`` to ``dest`` with one weight NaN, or (``optimizer``) one second moment
    of AdamW's inf (a checkpoint an earlier version could write), newer than every other file; returns its name."""
    ckpt = torch.load(path, weights_only=True)
    if optimizer:
        ckpt["optimizer_states"][0]["state"][3]["exp_avg_sq"][0] = float("inf")
    else:
        ckpt["state_dict"]["model.blocks.1.mlp.fc.weight"][0, 0] = float("nan")
    torch.save(ckpt, dest)
    os.utime(dest, (time.time() + 60, time.time() + 60))
    return "optimizer_states[0].state[3].exp_avg_sq" if optimizer else "model.blocks.1.mlp.fc.weight"


def test_resuming_never_starts_from_nonfinite_weights(env):
    """ckpt_path=last passes over this run's newest checkpoint when its weights are not finite (naming it) and
    resumes from the newest whose weights are; ckpt_path=THAT_FILE is refused, naming the tensor."""
    out = env["tmp"] / "resume_poisoned"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "trainer.max_steps=2",
                   "trainer.val_check_interval=1000", "callbacks.model_checkpoint.every_n_train_steps=1",
                   env=env["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = out / "checkpoints"
    poisoned = {"step-3.ckpt": poison(ckpts / "last.ckpt", ckpts / "step-3.ckpt", optimizer=True),
                "last.ckpt": poison(ckpts / "last.ckpt", ckpts / "last.ckpt")}  # newest of all now, and not finite
    resumed = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "ckpt_path=last",
                      "trainer.max_steps=4", "trainer.val_check_interval=1000", env=env["env"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    for bad, tensor in poisoned.items():
        assert f"passing over {ckpts / bad}: it is not finite ({tensor} holds NaN or inf)" in said, said[-3000:]
    # the newest finite one: step 2's state (step-2.ckpt, or best-2.ckpt, written at the run's final validation)
    restored = Path(re.search(r"Restoring states from the checkpoint path at (\S+\.ckpt)", said).group(1))
    assert restored.parent == ckpts and restored.name in ("step-2.ckpt", "best-2.ckpt"), restored
    assert torch.load(restored, weights_only=True)["global_step"] == 2
    assert "Done: 4 steps" in resumed.stdout
    refused = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}",
                      f"ckpt_path={ckpts / 'step-3.ckpt'}", "trainer.max_steps=6", env=env["env"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"ckpt_path='{ckpts / 'step-3.ckpt'}' is not accepted: a checkpoint whose weights and optimizer state " \
           "are finite: optimizer_states[0].state[3].exp_avg_sq holds NaN or inf" in refused.stderr


# process 1's loss at step 3 only becomes NaN: a fault on one process of two, put into the real run.py
ONE_RANK_NAN = """
import sys
sys.path.insert(0, {repo!r})
from builder.training import module

loss = module.LitGPT.loss


def poisoned(self, batch):
    out = loss(self, batch)
    return out * float("nan") if self.training and self.global_rank == 1 and self.global_step == 3 else out


module.LitGPT.loss = poisoned
from builder.tasks import main

sys.exit(main())
"""


def ddp_with_one_nan(env, tmp_path, out, *overrides):
    """run.py under trainer=ddp_cpu for 8 steps, process 1's loss NaN at step 3 (``ONE_RANK_NAN``)."""
    script = tmp_path / "one_rank_nan.py"
    script.write_text(ONE_RANK_NAN.format(repo=str(REPO)))
    return subprocess.run(
        [sys.executable, str(script), "data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}",
         "trainer=ddp_cpu", "trainer.max_steps=8", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
         "callbacks.model_checkpoint.every_n_train_steps=1", *overrides],
        cwd=tmp_path, env={**os.environ, **env["env"], "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
        timeout=240)


@pytest.mark.parametrize("every", [1, 2])
def test_a_nan_on_one_ddp_process_stops_both_at_that_step(env, tmp_path, every):
    """Each DDP process sees its own loss. One stopping alone would leave the other waiting in the gradients'
    all-reduce; both stop at the bad step instead, the other naming 'another process', and no checkpoint holds
    weights the bad loss stepped (every step checked, and every second step as on a GPU)."""
    out = env["tmp"] / "ddp_nan"
    proc = ddp_with_one_nan(env, tmp_path, out, f"train.finite_check_every={every}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert "train/loss of another process is not finite" in proc.stderr, proc.stderr[-3000:]  # process 0's message
    assert "train/loss is nan at step 3" in proc.stderr  # process 1's own
    kept = list(out.glob("checkpoints/*.ckpt"))
    assert kept and all(torch.load(p, weights_only=True)["global_step"] <= 3 for p in kept)


def test_skip_nonfinite_with_several_processes_is_refused_before_they_start(env):
    """Lightning cannot skip a batch in distributed training (it raises mid-run when training_step returns None):
    train.skip_nonfinite=true with two processes is refused before they are launched, naming the key."""
    out = env["tmp"] / "ddp_skip"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "trainer=ddp_cpu",
                   "trainer.max_steps=4", "train.skip_nonfinite=true", env=env["env"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Starting with 2 processes" not in proc.stdout + proc.stderr
    assert "train.skip_nonfinite=True is not accepted: false when training on 2 processes" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("train,words", [({"finite_check_every": 0}, "an integer > 0"),
                                         ({"finite_check_every": 4, "skip_nonfinite": True}, "checked at once")])
def test_bad_finite_check_every_is_refused(train, words):
    from builder.config.schema import TrainConfig
    from builder.config.spec import check

    with pytest.raises(builder.ConfigError, match=rf"train.finite_check_every=.*{words}"):
        check(TrainConfig, {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 0, **train}, "train")


def test_skip_nonfinite_counts_and_finishes(env):
    out = env["tmp"] / "skip"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "train.lr=1e6",
                   "trainer.max_steps=6", "trainer.val_check_interval=6", "train.skip_nonfinite=true",
                   "trainer.log_every_n_steps=1", env=env["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(next(out.glob("csv/**/metrics.csv")))))
    skipped = [float(r["train/skipped_nonfinite"]) for r in rows if r.get("train/skipped_nonfinite")]
    assert skipped and skipped[-1] >= 1


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ.get('EVIL_MARK', '/tmp/evil-mark'))}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    mark = tmp_path / "pwned"
    os.environ["EVIL_MARK"] = str(mark)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {}}, "x": _Evil()}, bad)
    proc = run_cli("task=sample", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode != 0 and not mark.exists()
    assert "weights_only" in proc.stderr and "Traceback" not in proc.stderr
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("hello")
    proc = run_cli("task=sample", f"checkpoint={not_ckpt}", f"hydra.run.dir={tmp_path / 'out2'}")
    assert proc.returncode != 0 and "checkpoint" in proc.stderr and "notes.txt" in proc.stderr


def test_checkpoint_of_another_shape_lists_mismatched_tensors(tmp_path):
    import builder
    from builder.errors import ConfigError
    from builder.model import load_state

    small = builder.build_model(builder.compose(["model.d_model=32", "model.n_heads=2"]).model)
    other = builder.build_model(builder.compose(["model.d_model=64", "model.n_heads=2"]).model)
    with pytest.raises(ConfigError) as err:
        load_state(small, other.state_dict(), "checkpoint", "x.ckpt")
    assert "token_embedding.weight: checkpoint (128, 64) vs model (128, 32)" in str(err.value)


@pytest.mark.parametrize("override,key", [("+model.attention._target_=os.system", "model.attention._target_"),
                                          ("+logger.csv._target_=os.system", "logger.csv._target_"),
                                          ("+callbacks.mine._target_=os.system", "callbacks.mine._target_")])
def test_target_in_user_config_is_refused(env, override, key):
    out = env["tmp"] / "t"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, override, f"hydra.run.dir={out}",
                   "trainer.max_steps=1", env=env["env"])
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_no_network_falls_back_to_offline_in_seconds(env):
    """Logged in (an API key) but the server is unreachable: the run goes offline and finishes."""
    out = env["tmp"] / "nonet"
    no_net = {**env["env"], "WANDB_MODE": None, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
              "HOME": str(env["tmp"])}
    start_time = time.time()
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, "logger=wandb", f"hydra.run.dir={out}",
                   "trainer.max_steps=2", "trainer.val_check_interval=2", env=no_net)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - start_time < 60
    assert list(out.glob("wandb/offline-run-*")), "the run was kept offline, to sync later"
    assert "wandb sync" in proc.stdout + proc.stderr


def test_checkpoint_write_killed_midway_leaves_the_old_file(tmp_path):
    """A process killed while writing last.ckpt leaves the previous complete file (temp file + rename)."""
    target = tmp_path / "last.ckpt"
    torch.save({"global_step": 1}, target)
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from builder.training.callbacks import AtomicCheckpointIO\n"
        "print('writing', flush=True)\n"
        f"AtomicCheckpointIO().save_checkpoint({{'global_step': 2, 'big': torch.zeros(400_000_000, dtype=torch.uint8)}},"
        f" {str(target)!r})\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    assert torch.load(target, weights_only=True)["global_step"] in (1, 2)  # never a truncated file
    if torch.load(target, weights_only=True)["global_step"] == 1:
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.")]
        assert all(p.suffix == ".tmp" for p in leftovers)  # at most a hidden temp file (builder/files.py), never the target


def test_bad_corpora_get_one_message(env):
    empty = env["tmp"] / "empty.txt"
    empty.write_text("")
    latin = env["tmp"] / "latin1.txt"
    latin.write_bytes("the caf\u00e9 sat on the mat. ".encode("utf-8") * 10 + "na\u00efve".encode("latin-1"))
    for path, words in ((empty, ["empty", "empty.txt"]), (latin, ["latin1.txt", "UTF-8", "byte"])):
        out = env["tmp"] / f"run_{path.stem}"
        proc = run_cli("data=text", f"data.path={path}", *SMALL, f"hydra.run.dir={out}", env=env["env"])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        for w in words:
            assert w in proc.stderr, (w, proc.stderr[-2000:])
        assert not out.exists()


def test_sample_refuses_overlong_and_unencodable_prompts(env):
    out = env["tmp"] / "train"
    proc = run_cli("data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", "trainer.max_steps=1",
                   "trainer.val_check_interval=1", env=env["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    long_prompt = "the cat sat on the mat " * 3  # 69 characters > model.context_length=32
    for prompt, words in ((long_prompt, ["prompt", "context_length=32"]), ("'the \u6f22'", ["prompt", "\u6f22"])):
        proc = run_cli("task=sample", f"checkpoint={ckpt}", f"prompt={prompt}", f"hydra.run.dir={env['tmp'] / 's'}",
                       env=env["env"])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        for w in words:
            assert w in proc.stderr, (w, proc.stderr[-2000:])
