from __future__ import annotations

import atexit
import contextlib
import json
import locale
import logging
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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


# Variables read when the interpreter or a library tests/cli_server.py preloads starts (the locale and stream
# encoding, threads, torch's and Hugging Face's settings, where matplotlib and the caches live): a run_cli whose
# environment differs from the server's in one of these gets a fresh interpreter.
STARTUP_VARIABLES = re.compile(r"^(PYTHON|LC_|LANG|OMP_|MKL_|KMP_|GOMP_|TORCH|PYTORCH|CUDA|NVIDIA|LD_|MPL|HF_|"
                               r"TRANSFORMERS|TOKENIZERS|XDG_|MATPLOTLIB|SCIPY|NUMPY)")


class CliServer:
    """tests/cli_server.py, started on first use (one per pytest process): ``python run.py`` processes forked
    from an interpreter that has already imported torch, Lightning and Hydra. Off with HYDRAFORMER_TEST_FRESH=1:
    every run_cli then starts a new interpreter."""

    _instance: CliServer | None = None

    def __init__(self, env: dict) -> None:
        self.env = env
        # unbuffered bytes: a reply waiting in a reader's buffer would be invisible to select()
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_server.py")], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.replies = b""
        assert self._read(None) == {"ready": True}, "tests/cli_server.py did not start"
        self.files = Path(tempfile.mkdtemp(prefix="hydraformer-cli-"))
        atexit.register(shutil.rmtree, self.files, True)

    @classmethod
    def get(cls, env: dict) -> CliServer | None:
        """The server, if it can run a process with environment ``env``; started (with this pytest process's
        environment) on first use."""
        if os.environ.get("HYDRAFORMER_TEST_FRESH") == "1" or threading.current_thread() is not threading.main_thread():
            return None  # (one request at a time: a run_cli from another thread starts its own interpreter)
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls(_cli_env())
        server = cls._instance
        changed = {k for k in set(env) | set(server.env) if env.get(k) != server.env.get(k)}
        return None if any(STARTUP_VARIABLES.match(k) for k in changed) else server

    def _read(self, deadline: float | None) -> dict | None:
        """The server's next reply; None if none came by ``deadline`` (time.monotonic; None: wait)."""
        while b"\n" not in self.replies:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], wait)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError(f"tests/cli_server.py exited (status {self.proc.wait()})")
            self.replies += chunk
        line, self.replies = self.replies.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float | None,
            address_space: int | None = None) -> subprocess.CompletedProcess:
        out, err = self.files / "stdout", self.files / "stderr"
        request = {"argv": argv[1:], "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
                   "address_space": address_space}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        pid = self._read(None)["pid"]
        done = self._read(None if timeout is None else time.monotonic() + timeout)
        if done is None:  # as subprocess.run: the process is killed, its output so far goes with the error
            with contextlib.suppress(ProcessLookupError):  # (it may have ended since)
                os.kill(pid, signal.SIGKILL)
            self._read(None)
            raise subprocess.TimeoutExpired(argv, timeout, output=_text(out), stderr=_text(err))
        return subprocess.CompletedProcess(argv, done["returncode"], _text(out), _text(err))


def _cli_env() -> dict:
    """This process's environment as run_cli passes it on: unbuffered output, no HYDRA_FULL_ERROR."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONUNBUFFERED": "1"}


def _text(path: Path) -> str:
    """A file the process wrote, read as ``subprocess.run(text=True)`` reads a pipe (universal newlines)."""
    return path.read_bytes().decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300,
            address_space: int | None = None) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` as a real process; returns the completed process (text output). The process is
    forked from tests/cli_server.py (the libraries imported once) unless its environment asks for a fresh
    interpreter (STARTUP_VARIABLES). ``address_space``: a cap on the process's (RLIMIT_AS), in bytes."""
    full_env = {k: v for k, v in (_cli_env() | (env or {})).items() if v is not None}  # None: unset that variable
    argv = [sys.executable, str(REPO / "run.py"), *args]
    server = CliServer.get(full_env)
    if server is not None:
        return server.run(argv, Path(cwd), full_env, timeout, address_space)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap if address_space else None)


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
