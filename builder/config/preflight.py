"""The checks of the composed config, made once per command before Hydra writes anything: the preflight.

``hydra.main`` composes the config, then calls its callbacks' ``on_run_start`` / ``on_multirun_start`` before it
makes the run (or sweep) directory. :class:`Preflight`, the first of ``conf/config.yaml``'s ``hydra.callbacks``,
checks the composed config there, with nothing written yet:

* nothing Hydra would build names code to run (launcher, sweeper, job logging; ``_target_`` in the job's part);
* the run (or sweep) directory and the token cache can be written, and the run directory holds no earlier run
  (unless ``task=train`` resumes from it);
* every value against its declaration (:func:`builder.config.checks.check_job`) — in a multirun, every job the
  basic sweeper will run, each composed and checked before the first starts (a sweeper that picks its jobs as it
  goes, Optuna, gets its master config checked here and each job when it starts).

What it checked is handed to the job (:func:`take_checked`), so no value is checked twice. A refusal leaves Hydra
as :class:`Refused`, a SystemExit: Hydra's callback runner turns an Exception into a warning and goes on, and
``builder.tasks.main`` prints the paragraph with exit status 2. What runs before the preflight (Hydra's logging
set-up while composing, the callbacks' construction) is checked on the command line and in the config files
before ``hydra.main`` (builder/config/cli.py).

:func:`check_command` makes the same checks without running anything (tests, editors).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import ConfigError
from .checks import check_job
from .cli import (
    FILE_SYSTEM_ERRORS,
    HYDRA_TARGETS,
    LOGGING_ACCEPTED,
    NO_CODE,
    check_command_line,
    composition_error,
    logging_names_code,
    overrides_as_typed,
    public_composer,
    target_accepted,
    walk,
)
from .hydra_adapter import BASIC_SWEEPER, plan_basic_sweep
from .printing import is_rank_zero

# what Hydra itself writes in a run or sweep directory before a task starts
HYDRA_OWN = (".hydra", "multirun.yaml")

# job overrides -> the checked Config the preflight made for that job (taken by builder.tasks.run_task)
_checked: dict[tuple[str, ...], object] = {}
_passed = [False]  # whether the preflight of this process's command passed (reset when the next one starts)
_passed_config: list = [None]  # the composed config (hydra node included) it passed


class Refused(SystemExit):
    """The preflight refused the config: ``error`` is the paragraph (exit status 2)."""

    def __init__(self, error: ConfigError):
        super().__init__(2)
        self.error = error


def preflight_passed() -> bool:
    """Whether the preflight of the command running in this process passed: Hydra has composed, and an error
    from here on is a job's."""
    return _passed[0]


def passed_config() -> DictConfig | None:
    """The composed config (with its ``hydra`` node) the preflight of the running command passed, else None."""
    return _passed_config[0] if _passed[0] else None


def reset() -> None:
    """A new command starts in this process: nothing checked, nothing passed yet."""
    _checked.clear()
    _passed[0] = False
    _passed_config[0] = None


def take_checked(overrides) -> object | None:
    """The checked Config the preflight made for the job with these overrides (once), else None."""
    return _checked.pop(tuple(overrides), None)


# --------------------------------------------------------------------------------------------------
# what Hydra would build
# --------------------------------------------------------------------------------------------------


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node


def check_job_config(cfg) -> None:
    """The job's config (no ``hydra`` node needed) names no code to run: no ``_target_`` anywhere. Raises
    ConfigError."""
    plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    for key, value in walk(plain):
        if key.rsplit(".", 1)[-1] == "_target_":
            raise ConfigError(key, value, target_accepted(key))


def check_hydra_node(cfg: DictConfig) -> None:
    """What Hydra builds after the preflight — the sweeper, the launcher, the job's logging handlers — is Hydra's
    own, an installed Hydra plugin's or the standard library's. Raises ConfigError."""
    hydra_cfg = cfg.get("hydra")
    if not isinstance(hydra_cfg, DictConfig):
        return
    for section in ("launcher", "sweeper"):
        for key, value in walk(_plain(hydra_cfg.get(section)) or {}, f"hydra.{section}"):
            if key.endswith("._target_") and not str(value).startswith(HYDRA_TARGETS):
                raise ConfigError(key, value, f"{NO_CODE}: a launcher or sweeper of Hydra or an installed Hydra "
                                  "plugin (hydra/launcher=..., hydra/sweeper=...)")
    for key, value in walk(_plain(hydra_cfg.get("job_logging")) or {}, "hydra.job_logging"):
        if logging_names_code(key.rsplit(".", 1)[-1], value):
            raise ConfigError(key, value, LOGGING_ACCEPTED)


# --------------------------------------------------------------------------------------------------
# the folders a run writes
# --------------------------------------------------------------------------------------------------


def check_writable(key: str, value) -> None:
    """``value`` (a folder a run will write into, maybe not there yet) can be created and written: a folder is made
    and removed in its nearest existing parent. ConfigError naming ``key`` when the file system refuses."""
    folder = Path(str(value)).expanduser().absolute()
    parent = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise ConfigError(key, str(value), f"a folder to write into; {parent} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hydraformer-probe-", dir=parent))
    except OSError as err:
        reason = FILE_SYSTEM_ERRORS.get(err.errno, err.strerror or type(err).__name__)
        raise ConfigError(key, str(value), f"a folder this user can write into, with free space; {parent}: {reason}") \
            from None


def _check_output_folders(cfg: DictConfig, multirun: bool) -> None:
    """The run (or sweep) directory Hydra is about to create and, for task=train, the token cache."""
    def run_dir():  # named after paths.runs_dir / paths.sweeps_dir when the directory is below it
        folder = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
        root = cfg.get("paths", {}).get("sweeps_dir" if multirun else "runs_dir")
        if root and Path(str(root)).expanduser().absolute() in Path(str(folder)).expanduser().absolute().parents:
            return f"paths.{'sweeps_dir' if multirun else 'runs_dir'}", root
        return ("hydra.sweep.dir" if multirun else "hydra.run.dir"), folder

    folders = [run_dir]
    env = os.environ.get("HYDRAFORMER_CACHE")
    if cfg.get("task") == "train":
        folders.append(lambda: ("data.cache_dir", cfg.data.cache_dir))
    for folder in folders:
        try:
            key, value = folder()
        except Exception:  # an interpolation only Hydra's run can resolve: Hydra reports it
            continue
        if value in (None, ""):
            continue
        if key == "data.cache_dir" and env and str(value) == env:
            key = "HYDRAFORMER_CACHE"
        check_writable(key, value)


def earlier_results(folder) -> list[str]:
    """The entries of ``folder`` an earlier run left (anything but Hydra's own files and logs), sorted."""
    folder = Path(str(folder)).expanduser()
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.name not in HYDRA_OWN and not p.name.endswith(".log")]
    first = ("summary.json", "checkpoints", "sweep.md")  # what says most about the earlier run, named first
    return sorted(names, key=lambda n: (first.index(n) if n in first else len(first), n))


def check_unused_run_dir(folder, *, resuming: bool, key: str = "hydra.run.dir") -> None:
    """A run directory describes one run: ``folder`` must be new or empty, unless this training run resumes from it
    (``ckpt_path=last``). ConfigError naming ``key`` otherwise."""
    if resuming or not is_rank_zero():  # the other processes of a distributed run join the directory rank 0 checked
        return
    found = earlier_results(folder)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise ConfigError(key, str(folder), f"a new or empty directory: it holds an earlier run's results ({shown}). "
                          "To continue that training run, add ckpt_path=last (it resumes from the newest checkpoint in "
                          f"that directory); to keep both, choose another {key} (left out, every run gets a new "
                          "timestamped directory)")


def resumes_in(folder, task, ckpt_path) -> bool:
    """Whether this run continues the training run in ``folder``: task=train with ``ckpt_path=last`` or a
    checkpoint inside ``folder``."""
    if task != "train" or not ckpt_path:
        return False
    return ckpt_path == "last" or Path(str(folder)).expanduser().absolute() in \
        Path(str(ckpt_path)).expanduser().absolute().parents


def _check_run_dir_unused(cfg: DictConfig, multirun: bool) -> None:
    """Before Hydra writes into it: the run (or sweep) directory holds no earlier run, unless task=train resumes."""
    try:
        folder = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
    except Exception:  # an interpolation only Hydra's run can resolve
        return
    check_unused_run_dir(folder, resuming=resumes_in(folder, cfg.get("task"), cfg.get("ckpt_path")),
                         key="hydra.sweep.dir" if multirun else "hydra.run.dir")


# --------------------------------------------------------------------------------------------------
# the preflight
# --------------------------------------------------------------------------------------------------


def plan_jobs(config, overrides: list[str] | None = None) -> list[dict] | None:
    """The jobs a multirun will run, ``[{"num", "overrides"}]`` in order, as Hydra's basic sweeper expands them (its
    ``hydra.sweeper.params``, then the command line's overrides — ``overrides``, else the config's
    ``hydra.overrides.task`` — each comma list a sweep; ``glob(...)`` over a config group through the running app's
    config loader, when there is one); None for any other sweeper (Optuna picks each trial from the ones before:
    nothing is known up front)."""
    config_loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = OmegaConf.to_container(sweeper.params, resolve=True) if sweeper.get("params") else {}
    arguments = [f"{k}={v}" for k, v in params.items()]  # as BasicSweeper.sweep: its params, then the arguments
    arguments += overrides_as_typed(config.hydra.overrides.task) if overrides is None else overrides
    return [{"num": num, "overrides": job} for num, job in enumerate(plan_basic_sweep(arguments, config_loader))]


def check_run(cfg: DictConfig) -> object:
    """A single run's composed config (with its ``hydra`` node): the preflight's checks; returns the checked
    Config. Raises ConfigError."""
    check_hydra_node(cfg)
    check_job_config(cfg)
    _check_output_folders(cfg, multirun=False)
    _check_run_dir_unused(cfg, multirun=False)
    return check_job(cfg)


def check_sweep(cfg: DictConfig, compose_job, overrides: list[str] | None = None) -> dict[tuple[str, ...], object]:
    """A multirun's master config (with its ``hydra`` node): the preflight's checks, then every planned job composed
    by ``compose_job(overrides)`` (the job's config) and checked. Returns job overrides -> checked Config (empty
    when the sweeper plans nothing up front). Raises ConfigError (a job Hydra cannot compose too)."""
    check_hydra_node(cfg)
    check_job_config(cfg)
    _check_output_folders(cfg, multirun=True)
    _check_run_dir_unused(cfg, multirun=True)
    try:
        jobs = plan_jobs(cfg, overrides)
    except Exception as err:  # a sweep the basic sweeper cannot expand (interval(...)): Hydra's words, one paragraph
        raise composition_error(err, overrides_as_typed(cfg.hydra.overrides.task) if overrides is None else overrides) \
            from err
    if jobs is None:
        check_job(cfg)
        return {}
    checked = {}
    for job in jobs:
        key = tuple(job["overrides"])
        if key not in checked:
            try:
                job_cfg = compose_job(list(key))
            except Exception as err:  # Hydra's composition error: the paragraph of the override at fault
                raise composition_error(err, list(key), compose_job) from err
            check_job_config(job_cfg)
            checked[key] = check_job(job_cfg)
    return checked


class Preflight(Callback):
    """Hydra callback (the first of ``conf/config.yaml``'s ``hydra.callbacks``): the module doc's checks, after
    Hydra composes and before it writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        reset()
        try:
            _checked[tuple(overrides_as_typed(config.hydra.overrides.task))] = check_run(config)
        except ConfigError as err:
            raise Refused(err) from None
        _passed[0], _passed_config[0] = True, config

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        reset()
        try:
            _checked.update(check_sweep(config, lambda overrides: compose(config_name, overrides)))
        except ConfigError as err:
            raise Refused(err) from None
        _passed[0], _passed_config[0] = True, config


def check_command(args: list[str], tasks=None) -> int:
    """What ``hydraformer ARGS`` refuses before it writes anything, found without running it (tests, editors): the
    command line's checks, the composition (Hydra's public API: our config tree and ``--config-dir``) and the
    preflight's, every planned job of a multirun. Returns the number of configs checked; raises ConfigError."""
    ns = check_command_line(args, tasks)
    compose = public_composer(ns)
    parsed = OverridesParser.create().parse_overrides(ns.overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        cfg = compose(fixed, with_hydra=True)  # a multirun's master config, as Hydra's: every sweep left out
    except Exception as err:
        raise composition_error(err, ns.overrides, compose) from err
    if not (ns.multirun or sweeps):
        check_run(cfg)
        return 1
    return max(1, len(check_sweep(cfg, compose, ns.overrides)))
