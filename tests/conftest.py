import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` as a real process; returns the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset that variable
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


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
