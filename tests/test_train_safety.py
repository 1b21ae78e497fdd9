"""Training that does what it was asked, or says in one paragraph why not: epoch-based schedules, every form of
trainer.precision, out-of-range optimisation settings, fractional validation intervals, resumes that are exact
from any checkpoint (periodic, mid-epoch, Ctrl-C), and progress lines when the output is a log file.

Real processes through run.py and a real Lightning Trainer; nothing is mocked."""

import csv
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, train_env

from builder.config.schema import TrainConfig
from builder.config.spec import check
from builder.data.windows import EpochSampler
from builder.errors import ConfigError
from builder.training.throughput import lightning_precision, peak_flops

# 64 windows of 8: 8 batches an epoch, so 40 steps cross 5 epochs and step 20 is in the middle of one
SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32", "logger=csv",
         "trainer.enable_model_summary=false", "callbacks.text_samples.prompt=the ",
         "callbacks.text_samples.max_new_tokens=20", "callbacks.attention_probe=null", "data.samples_per_epoch=64",
         "data.batch_size=8", "train.warmup_steps=3"]
QUIET = ["trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_env(tmp_path_factory.mktemp("safety"))


def args(env, out: Path, *overrides: str) -> list[str]:
    return ["data=text", f"data.path={env['corpus']}", *SMALL, f"hydra.run.dir={out}", *overrides]


def train(env, name: str, *overrides: str) -> tuple[Path, subprocess.CompletedProcess]:
    out = env["root"] / name
    proc = run_cli(*args(env, out, *QUIET, *overrides), env=env["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return out, proc


def checkpoint(out: Path, name: str | None = None) -> dict:
    """The named checkpoint of a run, else the one with the most steps."""
    paths = [out / "checkpoints" / name] if name else sorted(
        (out / "checkpoints").glob("*.ckpt"), key=lambda p: torch.load(p, weights_only=True)["global_step"])
    return torch.load(paths[-1], weights_only=True)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def metric_rows(out: Path, key: str) -> list[float]:
    rows = csv.DictReader(open(next(out.glob("csv/**/metrics.csv"))))
    return [float(r[key]) for r in rows if r.get(key)]


# ------------------------------------------------------------------------------------------------ 1. epochs


@pytest.mark.slow
@pytest.mark.parametrize("overrides,steps", [
    (["trainer.max_epochs=1", "trainer.max_steps=-1"], 8),
    (["trainer.max_epochs=2", "trainer.max_steps=null", "callbacks.throughput.window=10"], 16),
    (["trainer.max_epochs=1"], 8),  # trainer.max_steps stays 2000: the epoch ends first, and so does the schedule
], ids=["max_steps=-1", "max_steps=null", "max_steps=2000"])
def test_epoch_based_run_decays_the_lr_to_min_lr(env, overrides, steps):
    out, proc = train(env, f"epochs-{len(overrides)}-{steps}", "train.lr=2e-3", "train.min_lr=2e-4",
                      "trainer.log_every_n_steps=1", "trainer.val_check_interval=1000", *overrides)
    assert f"Done: {steps} steps" in proc.stdout
    ckpt = checkpoint(out)
    assert ckpt["global_step"] == steps
    assert [f["total_steps"] for f in ckpt["lr_schedulers"][0]["lr_lambdas"]] == [steps, steps]
    assert ckpt["lr_schedulers"][0]["_last_lr"] == pytest.approx([2e-4, 2e-4])
    assert [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == pytest.approx([2e-4, 2e-4])
    logged = metric_rows(out, "lr-AdamW/pg1")  # LearningRateMonitor: the lr each step ran with
    assert len(logged) == steps and logged[2] == pytest.approx(2e-3)  # warmup: 3 steps
    assert all(a > b for a, b in zip(logged[3:], logged[4:])) and logged[-1] < 0.2 * 2e-3  # cosine, all the way
    if steps == 16:  # a throughput window longer than an epoch is still measured (it counts its own batches)
        assert summary(out)["tokens_per_s"] is not None


# --------------------------------------------------------------------------------------------- 2. precision


@pytest.mark.parametrize("value,name", [(32, "32-true"), ("32", "32-true"), (16, "16-mixed"), ("bf16", "bf16-mixed"),
                                        (64, "64-true"), ("bf16-mixed", "bf16-mixed"), ("16-true", "16-true")])
def test_precision_is_read_in_every_form_lightning_accepts(value, name):
    assert lightning_precision(value) == name
    peak, source = peak_flops(value, override=5e12)
    assert peak == 5e12 and source == "callbacks.throughput.peak_flops"


@pytest.mark.parametrize("device,key,bf16,fp32,tf32", [
    ("NVIDIA H100 80GB HBM3", "h100_80gb", 989.4, 66.9, 494.7), ("NVIDIA H100 PCIe", "h100_pcie_80gb", 756.5, 51.2, 378),
    ("NVIDIA H200", "h200_141gb", 989.4, 66.9, 494.7), ("NVIDIA A100-SXM4-40GB", "a100_40gb", 312, 19.5, 156),
    ("NVIDIA A100-SXM4-80GB", "a100_80gb", 312, 19.5, 156), ("NVIDIA B200", "b200", 2250, 75, 1100),
    ("NVIDIA L40S", "l40s", 362.05, 91.6, 183), ("NVIDIA A10G", "a10", 125, 31.2, 62.5),
    ("Tesla V100-SXM2-32GB", "v100_32gb", 125, 15.7, None), ("NVIDIA GeForce RTX 4090", "rtx_4090", 165.2, 82.6, 82.6),
    ("NVIDIA GeForce RTX 3090", "rtx_3090", 71, 35.6, 35.6), ("Tesla T4", "t4", 65, 8.1, None)])
def test_the_mfu_peak_is_the_plans_data_sheet_for_the_gpu_torch_names(device, key, bf16, fp32, tf32):
    """One table of GPU peaks: conf/plan/default.yaml's, matched on torch.cuda.get_device_name() (the longest
    device_name the name contains: an A100 is not an A10, an H100 PCIe not an SXM5)."""
    from builder.config.compose import accelerators
    from builder.training.throughput import gpu_peak

    assert gpu_peak(device, "bf16-mixed") == (bf16 * 1e12, f"{device}: plan.accelerators.{key}.bf16_tflops")
    assert gpu_peak(device, 16)[0] == bf16 * 1e12 and accelerators()[key].bf16_tflops == bf16
    previous = torch.get_float32_matmul_precision()
    try:
        assert gpu_peak(device, "32-true")[0] == pytest.approx(fp32 * 1e12)
        torch.set_float32_matmul_precision("high")  # fp32 matmuls on TF32 tensor cores, where the GPU has them
        assert gpu_peak(device, "32-true")[0] == pytest.approx((tf32 or fp32) * 1e12)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert gpu_peak("Some Other GPU", "bf16-mixed") is None


@pytest.mark.parametrize("value", ["fp16", "bf32", 8, 32.0, True, None])
def test_an_unknown_precision_lists_what_is_accepted(value):
    with pytest.raises(ConfigError) as err:
        peak_flops(value)
    text = str(err.value)
    assert text.startswith(f"trainer.precision={value!r} is not accepted")
    for accepted in ("32-true", "bf16-mixed", "16-mixed", "16 = 16-mixed"):
        assert accepted in text


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32", "16"])
def test_integer_precision_trains(env, precision):
    out, proc = train(env, f"precision-{precision}", f"trainer.precision={precision}", "trainer.max_steps=2",
                      "trainer.val_check_interval=2", "callbacks.throughput.window=1")
    assert "Done: 2 steps" in proc.stdout
    assert summary(out)["tokens_per_s"] is not None  # the throughput callback measured, with its MFU peak


# ------------------------------------------------------------------------------- 3. optimisation settings


TRAIN = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": None, "weight_decay": 0.1,
         "betas": [0.9, 0.95], "eps": 1e-8}


@pytest.mark.parametrize("key,value", [
    ("lr", 0), ("lr", -1e-3), ("lr", float("nan")), ("lr", "fast"), ("min_lr", -1e-5), ("min_lr", 2e-3),
    ("warmup_steps", -1), ("warmup_steps", 2.5), ("total_steps", 0), ("total_steps", -5), ("weight_decay", -0.1),
    ("betas", [0.9, 1.0]), ("betas", [0.9]), ("eps", 0.0)])
def test_out_of_range_train_settings_are_refused_by_their_declaration(key, value):
    with pytest.raises(ConfigError) as err:
        check(TrainConfig, {**TRAIN, key: value}, "train")
    assert str(err.value).startswith(f"train.{key}={value!r} is not accepted: ") or \
        str(err.value).startswith(f"train.{key}[")


BAD = [
    ("train.lr=0", "train.lr=0.0", "a number > 0"),
    ("train.min_lr=0.01", "train.min_lr=0.01", "from 0 to train.lr (0.001)"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1", "an integer >= 0"),
    ("callbacks.throughput.window=0", "callbacks.throughput.window=0", "an integer > 0"),
    ("trainer.precision=fp16", "trainer.precision='fp16'", "bf16-mixed"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5", "fraction of each epoch"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override,shown,accepted", BAD, ids=[b[0] for b in BAD])
def test_bad_setting_is_one_paragraph_and_leaves_no_run_directory(env, override, shown, accepted):
    out = env["root"] / "bad"
    proc = run_cli(*args(env, out, *QUIET, "trainer.max_steps=2", override), env=env["env"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr[proc.stderr.index("Error: "):]
    paragraph = error.split("\n")[0]
    assert shown + " is not accepted" in paragraph and accepted in paragraph, error
    assert not out.exists()


# --------------------------------------------------------------------------- 4. fractional val_check_interval


@pytest.mark.slow
def test_val_check_interval_as_a_fraction_validates_within_each_epoch(env):
    out, proc = train(env, "fraction", "trainer.val_check_interval=0.5", "trainer.max_steps=16")
    assert "Done: 16 steps" in proc.stdout
    assert len(metric_rows(out, "val/loss")) == 4  # twice in each of 2 epochs of 8 batches
    assert (out / "samples.txt").read_text().count("--- step") == 4


# ---------------------------------------------------------------------------------------- 5. exact resume


def test_sampler_resumes_mid_epoch_and_keeps_the_epoch_length():
    s = EpochSampler(8, rank=1, world_size=2)
    s.resume(epoch=2, samples=4)
    assert len(s) == 4  # the epoch's share: Lightning counts a resumed epoch from where it stopped
    assert list(s) == [16 + 4 + 1, 16 + 6 + 1]
    s.set_epoch(3)
    assert list(s) == [25, 27, 29, 31]  # the next epoch is whole


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["steps", "epochs"])
def test_resume_from_a_checkpoint_between_validations_is_exact(env, mode):
    """Step 20 of 40 (12 of 24) is in the middle of an epoch and of a validation interval; dropout on, so the random
    state must be restored as well as the data position."""
    if mode == "steps":
        common = ["trainer.max_steps=40", "trainer.val_check_interval=30", "model.dropout=0.1",
                  "callbacks.model_checkpoint.every_n_train_steps=20"]
        middle, end, position = "step-20.ckpt", 40, {"epoch": 2, "samples": 32}
    else:
        common = ["trainer.max_epochs=3", "trainer.max_steps=-1", "trainer.val_check_interval=20",
                  "callbacks.model_checkpoint.every_n_train_steps=12"]
        middle, end, position = "step-12.ckpt", 24, {"epoch": 1, "samples": 32}
    full, _ = train(env, f"full-{mode}", *common)
    saved = checkpoint(full, middle)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [position]
    resumed, proc = train(env, f"resumed-{mode}", *common, f"ckpt_path={full / 'checkpoints' / middle}")
    assert "not resumable" not in proc.stdout + proc.stderr
    assert f"Done: {end} steps" in proc.stdout
    assert summary(resumed)["val_loss"] == pytest.approx(summary(full)["val_loss"], abs=1e-6)
    a, b = checkpoint(full, f"step-{end}.ckpt"), checkpoint(resumed, f"step-{end}.ckpt")
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def start(env, out: Path, *overrides: str) -> subprocess.Popen:
    # SIGINT back to its default: a shell without job control starts background jobs with SIGINT ignored
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args(env, out, *QUIET, *overrides)], cwd=REPO,
                            env={**os.environ, **env["env"], "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
def test_resume_from_the_checkpoint_ctrl_c_wrote_is_exact(env):
    schedule = ["train.total_steps=300", "callbacks.model_checkpoint.every_n_train_steps=1000"]
    out = env["root"] / "interrupted"
    proc = start(env, out, *schedule, "trainer.max_steps=100000", "trainer.val_check_interval=100000",
                 "trainer.log_every_n_steps=1")
    for line in proc.stdout:  # the progress lines (output is a pipe) say how far it got
        if line.startswith("step 12"):
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        output = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the run did not stop on SIGINT: {proc.communicate()[0][-3000:]}")
    assert "interrupted at step" in output, output[-3000:]
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 12 <= step < 100000
    end = step + 11  # past the next epoch boundary (8 batches an epoch)
    check = [f"trainer.max_steps={end}", f"trainer.val_check_interval={end}"]
    resumed, _ = train(env, "interrupted", *schedule, *check, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    reference, _ = train(env, "uninterrupted", *schedule, *check)
    assert summary(resumed)["steps"] == summary(reference)["steps"] == end
    assert summary(resumed)["val_loss"] == pytest.approx(summary(reference)["val_loss"], abs=1e-6)
    assert_same_weights(checkpoint(resumed)["state_dict"], checkpoint(reference)["state_dict"])


# -------------------------------------------------------------------------------------- 6. progress lines


LINE = re.compile(r"^step (\d+)/12  train/loss \d+\.\d{4}  [\d,]+ tokens/s  ETA \d+:\d\d:\d\d$", re.M)


@pytest.mark.slow
def test_progress_lines_when_the_output_is_not_a_terminal(env):
    """stdout is a pipe (a log file, SLURM, CI): a line every trainer.log_every_n_steps steps, the bar on or off."""
    out = env["root"] / "piped"
    proc = run_cli(*args(env, out, "trainer.max_steps=12", "trainer.val_check_interval=6",
                         "trainer.log_every_n_steps=4"), env=env["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(s) for s in LINE.findall(proc.stdout)] == [4, 8, 12], proc.stdout[-3000:]


@pytest.mark.slow
def test_no_progress_lines_on_a_terminal_where_the_bar_shows_progress(env):
    out = env["root"] / "terminal"
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"),
                             *args(env, out, "trainer.max_steps=10", "trainer.val_check_interval=10",
                                   "trainer.log_every_n_steps=5")],
                            cwd=REPO, env={**os.environ, **env["env"], "PYTHONUNBUFFERED": "1"},
                            stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    chunks: list[bytes] = []

    def drain():  # a full terminal buffer would block the run
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stderr = proc.communicate(timeout=300)[1].decode(errors="replace")
    reader.join(timeout=10)
    os.close(controller)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, stderr[-3000:]
    assert "Done: 10 steps" in shown
    assert not re.search(r"^step \d+/10  train/loss", shown, re.M), shown[-3000:]
