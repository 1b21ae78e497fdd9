"""A disk that refuses a write, named: the token cache or the run folder on a full (or capped) file system ends in one
paragraph naming the setting, the folder and the file being written — never standard output, never torch's
"basic_ios::clear: iostream error" tracebacks — with a non-zero exit, earlier checkpoints intact and no partial file.

Two real limits, no mocks:
- a small tmpfs mounted for the test (root's ``mount``; skipped where mounting is impossible): a real ENOSPC,
  "no space left on device", part-way through a run;
- RLIMIT_FSIZE on a new interpreter (any user, any machine): every write past the cap fails with EFBIG, "file too
  large" — the same path through the writers (a write that names no file, torch.save's), the same paragraph.
"""

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, run_cli, train_env

from builder.files import atomic_write, file_being_written, named_errors

SMALL = ["data=text", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32",
         "logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.text_samples.prompt=the ", "callbacks.attention_probe=null", "train.warmup_steps=0",
         "trainer.val_check_interval=1000"]
# a checkpoint of SMALL is about 366 KB; its corpus's token cache about 42 KB; BIG's cache about 420 KB
BIG = CORPUS * 11


@pytest.fixture
def env(tmp_path):
    return train_env(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A function mounting a tmpfs of ``size`` (``"1m"``) on a new folder and returning it; unmounted afterwards.
    Skips the test where this machine cannot mount one (not root, no mount privilege in this container)."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): the RLIMIT_FSIZE "
                        "tests cover the same path")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders below ``folder``: what a failed write must not leave."""
    return sorted(str(p) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def refused(proc, key: str, folder: Path, reason: str, writing: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "iostream" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr[proc.stderr.index("Error: "):].split("\n")[0]
    assert error.startswith(f"Error: {key}='{folder}' is not accepted: a writable location with free space; {reason} "
                            f"(writing {folder}"), error
    assert writing in error and "stdout" not in error, error


# ---------------------------------------------------------------------------------------------- a full tmpfs


def test_a_run_folder_on_a_disk_that_fills_up_names_it_and_keeps_the_earlier_checkpoints(env, small_disk):
    """1 MB: the run's small files and two checkpoints fit, the third does not."""
    out = small_disk("disk", "1m") / "run"
    proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", "trainer.max_steps=12",
                   "callbacks.model_checkpoint.every_n_train_steps=2", env=env["env"])
    refused(proc, "hydra.run.dir", out, "no space left on device", f"{out / 'checkpoints'}/step-")
    kept = sorted(out.glob("checkpoints/*.ckpt"))
    assert kept, "the checkpoints written before the disk filled up"
    failed = proc.stderr.split(f"(writing {out / 'checkpoints'}/")[1].split(")")[0]
    assert failed not in [p.name for p in kept]
    for path in kept:  # whole, and loadable
        assert torch.load(path, weights_only=True)["global_step"] == int(path.stem.split("-")[1])
    assert leftovers(out) == []


def test_a_token_cache_on_a_full_disk_names_the_cache_not_standard_output(env, small_disk):
    cache = small_disk("cache", "64k")
    corpus = env["tmp"] / "big.txt"
    corpus.write_text(BIG)
    out = env["tmp"] / "run"
    proc = run_cli(*SMALL, f"data.path={corpus}", f"hydra.run.dir={out}", "trainer.max_steps=2",
                   env={**env["env"], "HYDRAFORMER_CACHE": str(cache)})
    refused(proc, "HYDRAFORMER_CACHE", cache, "no space left on device", f"{cache}/tokens-")
    assert leftovers(cache) == [] and not out.exists()


# ------------------------------------------------------------------------------------ RLIMIT_FSIZE, anywhere


def test_a_checkpoint_past_the_file_size_limit_is_one_paragraph(env):
    """torch.save's C++ writer would raise RuntimeError("basic_ios::clear: iostream error") with no errno; the
    checkpoint is written through a Python file, whose error says what the file system said."""
    out = env["tmp"] / "run"
    proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", "trainer.max_steps=2",
                   "callbacks.model_checkpoint.every_n_train_steps=2", env=env["env"], file_size=250_000)
    refused(proc, "hydra.run.dir", out, "file too large", f"{out / 'checkpoints' / 'step-2.ckpt'})")
    assert not list(out.glob("checkpoints/*.ckpt")) and leftovers(out) == []


def test_a_token_cache_past_the_file_size_limit_names_the_cache(env):
    corpus = env["tmp"] / "big.txt"
    corpus.write_text(BIG)
    cache = Path(env["env"]["HYDRAFORMER_CACHE"])
    proc = run_cli(*SMALL, f"data.path={corpus}", f"hydra.run.dir={env['tmp'] / 'run'}", "trainer.max_steps=2",
                   env=env["env"], file_size=250_000)
    refused(proc, "HYDRAFORMER_CACHE", cache, "file too large", f"{cache}/tokens-")
    assert leftovers(cache) == []


def test_another_librarys_write_past_the_limit_names_its_file(env):
    """Lightning's CSV logger writes metrics.csv through its own file object: the failed write names no file, and
    was taken for standard output's. The file is found among the frames of the traceback."""
    out, quiet = env["tmp"] / "run", [*SMALL, f"data.path={env['corpus']}", "callbacks.model_checkpoint=null",
                                      "trainer.log_every_n_steps=1", "model.d_model=16", "model.n_layers=1"]
    warm = env["tmp"] / "warm"
    assert run_cli(*quiet, f"hydra.run.dir={warm}", "trainer.max_steps=1", env=env["env"]).returncode == 0
    # a cap above every file a run writes before training (budget.png the largest), that metrics.csv passes first
    cap = max(f.stat().st_size for f in warm.rglob("*") if f.is_file() and f.suffix != ".ckpt") + 8192
    proc = run_cli(*quiet, f"hydra.run.dir={out}", f"trainer.max_steps={cap // 40}", env=env["env"], file_size=cap)
    refused(proc, "hydra.run.dir", out, "file too large", f"{out / 'csv' / 'metrics.csv'})")


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_hydras_own_write_past_the_limit_names_the_folder_and_removes_it(env, multirun):
    """Hydra writes .hydra/config.yaml (a sweep: multirun.yaml) after the preflight and before the job: a write it
    cannot finish is the same paragraph, and the folder that holds nothing of the user's goes."""
    folder = env["tmp"] / ("sweep" if multirun else "run")
    args = ["-m", f"hydra.sweep.dir={folder}", "model.n_layers=1,2"] if multirun else [f"hydra.run.dir={folder}"]
    proc = run_cli(*args, "task=report", env=env["env"], file_size=2_000)
    key, written = ("hydra.sweep.dir", "multirun.yaml") if multirun else ("hydra.run.dir", ".hydra/config.yaml")
    refused(proc, key, folder, "file too large", f"{folder / written})")
    assert not folder.exists()


def test_a_sharded_checkpoint_past_the_file_size_limit_is_one_paragraph(env):
    """trainer=fsdp_cpu, two processes: torch's CheckpointException gathers each process's failure (one the zip
    writer's RuntimeError, one the OSError of its shard file); the paragraph names the checkpoint, and no staging
    folder is left."""
    out = env["tmp"] / "run"
    proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", "trainer=fsdp_cpu",
                   "model.d_model=64", "trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=2",
                   env=env["env"], file_size=250_000)
    refused(proc, "hydra.run.dir", out, "file too large", f"{out / 'checkpoints'}/")
    assert list((out / "checkpoints").iterdir()) == [] and leftovers(out) == []


@pytest.mark.parametrize("fmt", ["hydraformer", "hf"])
def test_an_export_past_the_file_size_limit_is_one_paragraph(env, fmt):
    """safetensors' Rust writer says "I/O error: File too large (os error 27)" in a SafetensorError: raised as the
    OSError it was, naming the file; the run folder that holds nothing else goes."""
    run = env["tmp"] / "trained"
    assert run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={run}", "trainer.max_steps=1",
                   env=env["env"]).returncode == 0
    out = env["tmp"] / "export"
    proc = run_cli("task=export", f"checkpoint={run / 'checkpoints' / 'last.ckpt'}", f"format={fmt}",
                   f"hydra.run.dir={out}", env=env["env"], file_size=60_000)
    refused(proc, "hydra.run.dir", out, "file too large", f"{out / 'export' / 'model.safetensors'})")
    assert not out.exists()


# ----------------------------------------------------------------------------------- the writers, one by one


def test_the_file_a_failed_write_was_writing_is_found_in_the_traceback(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")

    def write_log():
        with open("/dev/full", "a") as log:
            log.write("x" * 100_000)

    with pytest.raises(OSError) as raised:
        write_log()
    assert raised.value.filename is None and file_being_written(raised.value.__traceback__) == "/dev/full"
    with open(os.devnull) as reading, pytest.raises(OSError) as raised:  # a file open for reading is not taken
        reading.write("x")
    assert file_being_written(raised.value.__traceback__) is None


def test_a_write_that_names_no_file_is_named_by_its_writer(tmp_path):
    """A real ENOSPC (/dev/full): Python names no file for a failed write or flush; the writer names its own."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    target = tmp_path / "notes.txt"
    with pytest.raises(OSError) as raised, named_errors(target), open("/dev/full", "wb") as full:
        full.write(b"x" * 100_000)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    with pytest.raises(OSError) as raised, named_errors(target):
        raise OSError(errno.ENOSPC, "No space left on device", "/elsewhere")  # named already: kept
    assert raised.value.filename == "/elsewhere"
    atomic_write(target, "kept")
    assert target.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_log_file_that_cannot_be_written_is_said_once_and_the_run_goes_on(env, tmp_path):
    """hydraformer.log on a full disk (here /dev/full, every write "no space left on device"): one line naming the
    file and the reason, the log lines on the console still, the run done; not logging's '--- Logging error ---'
    traceback after every line."""
    out = tmp_path / "run"
    proc = run_cli(*SMALL, f"data.path={env['corpus']}", f"hydra.run.dir={out}", "trainer.max_steps=2",
                   "hydra.job_logging.handlers.file.filename=/dev/full", env=env["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("cannot write the log file /dev/full (no space left on device)") == 1
    assert "Done: 2 steps" in proc.stdout and (out / "checkpoints" / "last.ckpt").is_file()
