"""A fork server for the tests' ``python run.py ...`` processes (``conftest.run_cli``).

Most of a short ``run.py`` process is interpreter start-up: importing torch, Lightning (which imports
torchmetrics, scipy, matplotlib and part of transformers) and Hydra takes seconds, and the tests start a few
hundred such processes. This server imports those libraries once, then forks one child per request. Each child
is a real process running ``run.py`` as ``__main__``, with the request's arguments, environment, working
directory, stdout and stderr, and exits with the status ``python run.py`` would.

What the fork shares is the third-party libraries' import, done before any request: none of hydraformer's own
modules is imported here, so each child imports ``builder`` and ``components`` afresh, as a new interpreter
would. A request whose environment differs from the server's in a variable read at interpreter or library
start-up (``conftest.STARTUP_VARIABLES``) is not sent here: conftest starts a fresh interpreter for it.

Protocol, one JSON object per line: the request ``{"argv", "env", "cwd", "stdout", "stderr", "address_space"}``
(``argv[0]`` the script; ``stdout``/``stderr`` files to write; ``address_space``: a cap on the child's, in bytes,
or null) on stdin; the replies ``{"pid"}`` and then ``{"returncode"}``
(negative: the signal that ended it, as ``subprocess`` reports it) on stdout.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import runpy
import signal
import sys
import threading
import traceback

PRELOAD = ("torch", "pytorch_lightning", "hydra", "hydra.core.override_parser.overrides_parser", "omegaconf")


def _exit_code(code) -> int:
    """What the interpreter makes of ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(request: dict) -> None:
    """Become ``python argv...``: run the script as ``__main__``, end as the interpreter would (threads joined,
    atexit handlers run, streams flushed). Never returns."""
    code = 1
    try:
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((stdin, 0), (out, 1), (err, 2)):  # the server's protocol pipes are closed here
            os.dup2(fd, target)
            os.close(fd)
        if request.get("address_space"):  # as a preexec_fn capping RLIMIT_AS would
            resource.setrlimit(resource.RLIMIT_AS, (request["address_space"], request["address_space"]))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        script = os.path.abspath(request["argv"][0])
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(script)  # as for ``python script``: the script's folder first
        if "numpy" in sys.modules:  # a new interpreter draws a new global numpy state; a fork would share one
            sys.modules["numpy"].random.seed()
        interrupted = False
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = _exit_code(stop.code)
        except BaseException as error:  # noqa: BLE001 - unhandled: its traceback and status 1, as the interpreter
            traceback.print_exc()
            interrupted = isinstance(error, KeyboardInterrupt)
            code = 1
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a full disk on flush: the interpreter exits 120
                code = 120
        if interrupted:  # as the interpreter ends on an unhandled Ctrl-C: killed by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code)


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
