"""Hydra multirun jobs and Lightning's process launcher: each job's processes run that job only.

Lightning starts the extra DDP/FSDP processes of one machine by running the script again
(``_SubprocessScriptLauncher``). Under Hydra it rebuilds that command from ``sys.argv`` — which,
in a multirun, is ``-m`` and the whole sweep: every child would start the sweep again
(Lightning issue 11300, Hydra issue 2070). Besides, the launcher leaves ``LOCAL_RANK``,
``MASTER_PORT``, ``WORLD_SIZE`` ... in ``os.environ``, so the next job of the same sweep process
would think its processes were started externally and wait forever for peers that never come.

Here, inside a multirun job:

* :func:`for_this_job` swaps the trainer's launcher for :class:`JobScriptLauncher`, whose children
  run a *single run* of exactly this job's overrides (``HydraConfig.get().overrides.task``) in this
  job's directory (``hydra.run.dir=<job dir> hydra.output_subdir=null hydra.mode=RUN``);
* a child that fails ends the job's other children but not the sweep process (Lightning's own
  observer SIGKILLs the launching process, which would end the whole sweep); the job then fails
  when its collectives lose their peers;
* :func:`job_scope` (used by ``builder.tasks.run_task`` in a multirun) puts the distributed environment back as
  it found it when the job ends, reaps the job's children and destroys its process group.

Single runs keep Lightning's own launcher.

Kept here because no library does it: Lightning and Hydra each assume they own the process (the two
issues above are open). Lightning's private API, and why: it subclasses Lightning's private script launcher and
child-process observer (no public hook chooses the children's command), so pyproject pins Lightning's minor version.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd, to_absolute_path
from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning_fabric.utilities.distributed import _set_num_threads_if_needed
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

import __main__

from ..config.cli import overrides_as_typed

log = logging.getLogger(__name__)

# what a DDP launch writes into os.environ (Lightning's launcher, torch.distributed, _set_num_threads_if_needed)
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "OMP_NUM_THREADS")
# hydra overrides a child must not inherit: it is a single run in the job's directory
_HYDRA_NOT_INHERITED = ("hydra.run", "hydra.sweep", "hydra.mode", "hydra.output_subdir", "hydra.job.name",
                        "hydra/sweeper", "hydra.sweeper", "hydra/launcher", "hydra.launcher", "hydra.callbacks")
# command-line options that say which config to compose (kept for the children)
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")

_children: list[subprocess.Popen] = []  # the current job's child processes


def in_multirun() -> bool:
    """True inside a Hydra multirun job (``-m``, or ``hydra.mode=MULTIRUN`` in a config)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _quote(value: str) -> str:
    """A Hydra override value that is taken literally (quoted; quotes and backslashes escaped)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _config_flags(argv: list[str]) -> list[str]:
    """``--config-name X`` / ``-cd DIR`` ... from the command line, in order."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            kept += [arg, argv[i + 1]]
            i += 2
            continue
        if arg.split("=", 1)[0] in _CONFIG_FLAGS and "=" in arg:
            kept.append(arg)
        i += 1
    return kept


def job_command(local_rank: int) -> tuple[list[str], str]:
    """The command (and working directory) that runs this multirun job alone, as process ``local_rank``."""
    hc = HydraConfig.get()
    spec = getattr(__main__, "__spec__", None)
    command = [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, to_absolute_path(sys.argv[0])]
    command += _config_flags(sys.argv[1:])
    command += [o for o in overrides_as_typed(hc.overrides.hydra) if not o.lstrip("+~").startswith(
        _HYDRA_NOT_INHERITED)]
    command += overrides_as_typed(hc.overrides.task)
    command += [f"hydra.run.dir={_quote(hc.runtime.output_dir)}", "hydra.output_subdir=null", "hydra.mode=RUN",
                f"hydra.job.name={hc.job.name}_ddp_process_{local_rank}"]
    return command, get_original_cwd()


class JobScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, but the children run this multirun job only (see the module doc)."""

    def launch(self, function, *args, trainer=None, **kwargs):
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            _JobObserver(main_pid=os.getpid(), child_processes=self.procs).start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            command, cwd = job_command(local_rank)
            log.info("job process %d: %s", local_rank, " ".join(command))
            proc = subprocess.Popen(command, env=child_env, cwd=cwd)
            self.procs.append(proc)
            _children.append(proc)


class _JobObserver(_ChildProcessObserver):
    """Lightning's child observer, except that a failed child ends the other children, not the sweep process."""

    def _terminate_all(self) -> None:
        log.error("a process of this job failed: ending the job's other processes (the sweep goes on)")
        for p in self._child_processes:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)


def for_this_job(trainer) -> None:
    """In a multirun job, make the trainer's script launcher (DDP, FSDP) start children that run this job only."""
    if not in_multirun():
        return
    strategy = trainer.strategy
    launcher = getattr(strategy, "_launcher", None)
    if type(launcher) is _SubprocessScriptLauncher:
        strategy._launcher = JobScriptLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)


def _reap(failed: bool, timeout: float = 60.0) -> None:
    while _children:
        proc = _children.pop()
        if failed and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("job process %d did not end within %.0f s: killed", proc.pid, timeout)
            proc.kill()
            proc.wait()


@contextmanager
def job_scope(active: bool = True) -> Iterator[None]:
    """Run one multirun job so that the next job of the same process starts clean (see the module doc)."""
    if not active:
        yield
        return
    saved = {k: os.environ.get(k) for k in DDP_ENV}
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    failed = True
    try:
        yield
        failed = False
    finally:
        _reap(failed)
        torch = sys.modules.get("torch")
        if torch is not None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            if threads is not None:
                torch.set_num_threads(threads)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
