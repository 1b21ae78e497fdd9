import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Under pytest-xdist (the README's test command: -n auto) the cores are shared out among the workers, each torch
# and each run.py it starts (OMP_NUM_THREADS) taking its part: two workers each spinning two threads on two cores
# wait a scheduler tick at every parallel region. Alone, up to 2 threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` as a real process; returns the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset that variable
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def home_env(tmp_path_factory, name: str, **extra_env: str) -> dict:
    """``train_env`` in a fresh folder that is also HOME, with no wandb key: nothing of this machine's user leaks in."""
    root = tmp_path_factory.mktemp(name)
    return train_env(root, HOME=str(root), WANDB_API_KEY="", **extra_env)


def train_run(env: dict, name: str, *overrides: str, timeout: float = 300):
    """``run.py`` training on ``train_env``'s corpus into ``env["root"] / name``; asserts it succeeded and returns
    (run directory, completed process)."""
    out = env["root"] / name
    proc = run_cli("data=text", f"data.path={env['corpus']}", *overrides, f"hydra.run.dir={out}", env=env["env"],
                   timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def jittered_model(overrides: list[str], seed: int = 0, std: float = 0.3):
    """The model ``overrides`` compose, every parameter redrawn from N(0, std): away from the init, so norms' gains,
    biases and the rest all take part (a check at the init could miss a term that is zero or one there)."""
    import builder  # (reason: conftest is imported before the tests' own imports)

    torch.manual_seed(seed)
    model = builder.build_model(builder.compose(overrides).model).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, std)
    return model


CORPUS = "the cat sat on the mat. the dog sat on the log. " * 400


def train_env(root: Path, **extra_env: str) -> dict:
    """A folder with a small learnable corpus, and an environment keeping the token cache and wandb offline."""
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return {"root": root, "tmp": root, "corpus": corpus,
            "env": {"HYDRAFORMER_CACHE": str(root / "cache"), "WANDB_MODE": "offline", **extra_env}}


@pytest.fixture(autouse=True)
def _loggers_left_as_found():
    """A test that configures logging (import-linter's ``lint_imports`` calls ``logging.config.dictConfig``, which
    disables every logger that exists) leaves the loggers as it found them: later tests see Lightning's messages."""
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.disabled, lg.propagate, lg.level) for lg in loggers]
    yield
    for lg, disabled, propagate, level in saved:
        lg.disabled, lg.propagate = disabled, propagate
        lg.setLevel(level)


@pytest.fixture
def cli():
    return run_cli
