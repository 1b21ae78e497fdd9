"""conftest.run_cli, the tests' ``python run.py ARGS``: in this process (``builder.tasks.main()``) it gives the output
and exit status a new interpreter gives, and leaves this process as it found it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

import pytest
import torch
from conftest import REPO, needs_new_interpreter, run_cli

import builder.tasks


def same_run(inproc, fresh, here: str, there: str) -> None:
    assert inproc.returncode == fresh.returncode, (inproc.stderr[-3000:], fresh.stderr[-3000:])
    assert inproc.stdout.replace(here, there) == fresh.stdout
    assert inproc.stderr.replace(here, there) == fresh.stderr


@pytest.mark.parametrize("args", [["task=report", "model.n_heads=5"], ["task=report", "model=tiny"],
                                  ["task=reprot"]], ids=["refused", "report", "typo"])
def test_in_process_gives_what_a_new_interpreter_gives(tmp_path, args):
    inproc = run_cli(*args, f"hydra.run.dir={tmp_path / 'inproc'}", cwd=tmp_path)
    fresh = run_cli(*args, f"hydra.run.dir={tmp_path / 'fresh'}", cwd=tmp_path, fresh=True)
    assert fresh.args == inproc.args[:-1] + [f"hydra.run.dir={tmp_path / 'fresh'}"]
    same_run(inproc, fresh, "inproc", "fresh")
    assert inproc.returncode == (0 if args[1:] == ["model=tiny"] else 2)
    if inproc.returncode == 0:
        assert "Total parameters" in inproc.stdout or inproc.stdout.strip(), inproc.stdout
        assert sorted(p.name for p in (tmp_path / "inproc").iterdir()) == sorted(
            p.name for p in (tmp_path / "fresh").iterdir())


def test_the_call_gets_its_environment_folder_and_argv_and_this_process_gets_its_own_back(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRAFORMER_PROBE_UNSET", "here")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # never passed on: a run shows its errors as a person sees them
    before = (dict(os.environ), os.getcwd(), list(sys.argv), list(sys.path), sys.stdout, sys.stderr, sys.stdin,
              list(logging.root.handlers), logging.root.level, list(warnings.filters), torch.get_num_threads(),
              torch.get_rng_state(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    seen = {}

    def spy(*args, **kwargs):  # what the command sees, then the real check
        seen.update(argv=list(sys.argv), cwd=os.getcwd(), env=dict(os.environ), stdin=sys.stdin.read())
        return precheck(*args, **kwargs)

    precheck = builder.tasks.check_command_line
    monkeypatch.setattr(builder.tasks, "check_command_line", spy)
    proc = run_cli("task=report", "model=tiny", "hydra.run.dir=${oc.env:PROBE_DIR}", cwd=tmp_path,
                   env={"PROBE_DIR": "relative/run", "HYDRAFORMER_PROBE_UNSET": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "relative" / "run" / "config.yaml").is_file()  # the variable, relative to the call's folder
    assert seen["argv"] == [str(REPO / "run.py"), "task=report", "model=tiny", "hydra.run.dir=${oc.env:PROBE_DIR}"]
    assert seen["cwd"] == str(tmp_path) and seen["stdin"] == ""
    assert seen["env"]["PROBE_DIR"] == "relative/run" and seen["env"]["PYTHONUNBUFFERED"] == "1"
    assert "HYDRAFORMER_PROBE_UNSET" not in seen["env"] and "HYDRA_FULL_ERROR" not in seen["env"]
    after = (dict(os.environ), os.getcwd(), list(sys.argv), list(sys.path), sys.stdout, sys.stderr, sys.stdin,
             list(logging.root.handlers), logging.root.level, list(warnings.filters), torch.get_num_threads(),
             torch.get_rng_state(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    for was, now in zip(before, after):
        assert torch.equal(was, now) if isinstance(was, torch.Tensor) else was == now


@pytest.mark.parametrize("raised,code,last", [
    (RuntimeError("it broke"), 1, "RuntimeError: it broke"),
    (KeyboardInterrupt(), -signal.SIGINT, "KeyboardInterrupt"),
    (SystemExit("a message"), 1, "a message"),
    (SystemExit(None), 0, None),
    (SystemExit(258), 2, None),
], ids=["exception", "ctrl-c", "exit-text", "exit-none", "exit-258"])
def test_an_ending_gets_the_status_and_output_the_interpreter_gives(monkeypatch, raised, code, last):
    def fail(*args, **kwargs):
        print("on stdout")
        os.write(2, b"on fd 2\n")  # as native code and child processes write
        warnings.warn("a warning is printed, as by a new interpreter", UserWarning, stacklevel=1)
        raise raised

    monkeypatch.setattr(builder.tasks, "check_command_line", fail)
    proc = run_cli("task=report")
    assert proc.returncode == code and proc.stdout == "on stdout\n"
    lines = proc.stderr.splitlines()
    assert lines[0] == "on fd 2" and "UserWarning: a warning is printed, as by a new interpreter" in lines[1]
    if last is None:
        assert len(lines) == 3  # the warning and its source line
    else:
        assert lines[-1] == last
        assert ("Traceback (most recent call last):" in proc.stderr) == (not isinstance(raised, SystemExit))


def test_what_needs_a_new_interpreter(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONUNBUFFERED": "1"}
    assert needs_new_interpreter(env) is None
    assert needs_new_interpreter({**env, "WANDB_MODE": "offline", "HOME": "/tmp"}) is None
    assert "OMP_NUM_THREADS" in needs_new_interpreter({**env, "OMP_NUM_THREADS": "7"})
    assert "PYTHONHASHSEED" in needs_new_interpreter({**env, "PYTHONHASHSEED": "0"})
    assert "RLIMIT_AS" in needs_new_interpreter(env, address_space=1 << 30)
    monkeypatch.setenv("HYDRAFORMER_TEST_FRESH", "1")
    assert needs_new_interpreter(env | {"HYDRAFORMER_TEST_FRESH": "1"}) == "HYDRAFORMER_TEST_FRESH=1"
