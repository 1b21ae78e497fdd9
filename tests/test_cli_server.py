"""tests/cli_server.py, the fork server run_cli uses: its children behave as ``python script args`` would."""

import json
import signal
import subprocess
import sys

import pytest
from conftest import CliServer, _cli_env, run_cli

PROBE = """\
import atexit, json, os, sys
import numpy
atexit.register(lambda: print("atexit ran"))
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "probe": os.environ.get("PROBE"),
                  "home": os.environ.get("HOME"), "builder": "builder" in sys.modules,
                  "draw": float(numpy.random.random())}))
if len(sys.argv) > 1 and sys.argv[1] == "fail":
    raise RuntimeError("the probe failed")
if len(sys.argv) > 1 and sys.argv[1] == "interrupt":
    raise KeyboardInterrupt
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


@pytest.fixture
def server():
    server = CliServer.get(_cli_env())
    if server is None:
        pytest.skip("HYDRAFORMER_TEST_FRESH=1: run_cli starts a new interpreter each time")
    return server


def test_a_child_runs_the_script_as_a_new_interpreter_would(server, tmp_path):
    script = tmp_path / "probe" / "probe.py"
    script.parent.mkdir()
    script.write_text(PROBE)
    env = {**_cli_env(), "PROBE": "yes", "HOME": str(tmp_path)}
    runs = [server.run([sys.executable, str(script), code], tmp_path, env, timeout=60) for code in ("0", "3")]
    for run, code in zip(runs, (0, 3)):
        assert run.returncode == code, run.stderr
        lines = run.stdout.splitlines()
        assert lines[-1] == "atexit ran"
        seen = json.loads(lines[0])
        assert seen["argv"] == [str(script), str(code)] and seen["cwd"] == str(tmp_path)
        assert seen["path0"] == str(script.parent) and seen["probe"] == "yes" and seen["home"] == str(tmp_path)
        assert seen["builder"] is False  # hydraformer's own modules are imported afresh by each child
    draws = [json.loads(r.stdout.splitlines()[0])["draw"] for r in runs]
    assert draws[0] != draws[1]  # each child draws its own numpy state, as a new interpreter does
    failed = server.run([sys.executable, str(script), "fail"], tmp_path, env, timeout=60)
    assert failed.returncode == 1 and "RuntimeError: the probe failed" in failed.stderr
    assert failed.stdout.splitlines()[-1] == "atexit ran"
    stopped = server.run([sys.executable, str(script), "interrupt"], tmp_path, env, timeout=60)
    assert stopped.returncode == -signal.SIGINT and stopped.stderr.splitlines()[-1] == "KeyboardInterrupt"
    assert stopped.stdout.splitlines()[-1] == "atexit ran"


def test_a_child_past_its_timeout_is_killed_and_the_server_goes_on(server, tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        server.run([sys.executable, str(script)], tmp_path, _cli_env(), timeout=3)
    assert "started" in stopped.value.output
    again = run_cli("task=reprot")
    assert again.returncode == 2 and "did you mean 'report'" in again.stderr


def test_run_cli_gives_what_a_new_interpreter_gives(tmp_path):
    """The same refusal and the same report, forked and from a new interpreter (a start-up variable differs)."""
    for args in (["task=reprot"], ["task=report", "model=tiny"]):
        forked = run_cli(*args, f"hydra.run.dir={tmp_path / 'forked'}")
        fresh = run_cli(*args, f"hydra.run.dir={tmp_path / 'fresh'}", env={"PYTHONHASHSEED": "0"})  # a start-up
        assert forked.returncode == fresh.returncode  # variable: a new interpreter
        assert forked.stdout.replace("forked", "fresh") == fresh.stdout
        assert forked.stderr.replace("forked", "fresh") == fresh.stderr
