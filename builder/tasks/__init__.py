"""The ``hydraformer`` command (``python run.py``): ``task=X`` runs ``builder/tasks/X.py``'s ``run``, with the
error handling all tasks share.

:func:`main` is ``@hydra.main`` plus one thin wrapper: argv in, exit status out. The command line is checked before
Hydra sees it (builder/config/cli.py), Hydra composes once, the preflight callback checks the composed config
before anything is written (builder/config/preflight.py), and a refusal — a ConfigError, or Hydra's own composition
error — is one paragraph on stderr with exit status 2.

Each task module is glue: it reads the config, calls the library one level down (``builder.report``,
``builder.training``, ``builder.interp``, ``builder.checkpoint``) and prints where things went.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from components.registry import RegistryError

from ..config.checks import check_job, hold, release, uses_composed_model
from ..config.cli import (
    FILE_SYSTEM_ERRORS,
    check_command_line,
    composition_error,
    file_reader,
    overrides_as_typed,
    public_composer,
    register_help_resolver,
)
from ..config.hydra_adapter import flags_first
from ..config.preflight import Refused, passed_config, preflight_passed, take_checked
from ..config.preflight import reset as reset_preflight
from ..config.printing import WRITTEN, ConfigDisplay, displaying
from ..config.schema import TASK_NAMES, register_schemas
from ..errors import ConfigError, DataError, NonFiniteLossError
from ..files import file_being_written, quiet_log_files
from .compare import OUTPUTS as SWEEP_OUTPUTS
from .compare import PLAN_FILE, record_failure

# errors whose message is the whole story: shown as one paragraph, no traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, RegistryError, DataError, NonFiniteLossError)


class JobFailed(RuntimeError):
    """A multirun job stopped by a user error (one of USER_ERRORS; the message is the whole story).

    Raised to Hydra instead of the error itself: it pickles (the submitit launcher sends a job's
    exception back from the cluster; ConfigError's constructor does not survive unpickling)."""


# task name -> the module whose ``run(cfg, out_dir[, model_name])`` does it. Imported when the task runs:
# start-up (task=report must not pay for Lightning or wandb).
TASKS = {name: f"{__name__}.{name}" for name in TASK_NAMES}
TAKES_MODEL_NAME = ("report", "train", "plan")
# tasks whose model is read from ``checkpoint=`` (through builder/tasks/reading.py's read_model)
READS_CHECKPOINT = ("sample", "export", "attend", "heads", "lens", "embed", "context", "tour", "ablate", "patch")
# The config is shown once a task has checked its inputs: these tasks call builder.config.printing.inputs_checked
# themselves when they are past their checks (read_model does, once the model has loaded); any other gets it shown
# just before it runs.
SHOW_THEIR_CONFIG = ("train", "plan", *READS_CHECKPOINT)


def discard_if_empty(out_dir: Path, root=None, also: tuple[str, ...] = ()) -> None:
    """A run that failed before writing anything leaves no directory behind (only Hydra's own files, the files
    named in ``also`` and empty folders), nor the empty folders above it up to ``root`` (``paths.runs_dir``)
    included: the ``<date>`` folder a first run of the day made, the ``outputs/`` folder a first run made."""
    if not out_dir.is_dir():
        return
    kept = (".hydra", *WRITTEN, *also)
    ours = [p for p in out_dir.iterdir() if p.name not in kept and not p.name.endswith(".log")
            and not (p.is_dir() and not any(p.iterdir()))]  # an empty folder (export/ before its first file) is none
    if ours:
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    if root is None:
        return
    root, folder = Path(str(root)).expanduser().absolute(), out_dir.absolute().parent
    while folder == root or root in folder.parents:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent


def _runs_dir(cfg):
    with contextlib.suppress(Exception):  # an interpolation that cannot be resolved here: no folder above is removed
        return cfg.paths.runs_dir
    return None


def _train_metric(out_dir: Path) -> float:
    """What a sweeper optimises: the run's best val/loss (else its last), NaN when there is none."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return math.nan
    value = summary.get("best_val_loss")
    value = summary.get("val_loss") if value is None else value
    return math.nan if value is None else float(value)


def _name_wandb_run(cfg, hc) -> None:
    """In a multirun, each job's wandb run joins the sweep's group (unless logger.wandb.group is set)."""
    wandb_cfg = cfg.get("logger", {}).get("wandb") if cfg.get("logger") else None
    if not wandb_cfg:
        return
    sweep = Path(hc.sweep.dir)
    with open_dict(wandb_cfg):
        if not wandb_cfg.get("group"):
            parts = [hc.runtime.choices.get("experiment"), sweep.parent.name, sweep.name]
            wandb_cfg.group = "_".join(p for p in parts if p and p not in (".", "null"))
        if not wandb_cfg.get("name"):  # the job number and what the sweeper chose for it
            fixed = _fixed_keys(sys.argv[1:])
            swept = [o for o in overrides_as_typed(hc.overrides.task) if o.split("=", 1)[0].lstrip("+~") not in fixed]
            wandb_cfg.name = f"{hc.job.num}: {' '.join(swept) or 'defaults'}"[:128]


def _fixed_keys(argv: list[str]) -> set[str]:
    """Keys the command line sets to one value (not a sweep): the same in every job of the sweep."""
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:
        return set()
    return {o.key_or_group for o in parsed if not o.is_sweep_override()}


def _stdout_target() -> str:
    try:
        return os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    except (OSError, ValueError, AttributeError):
        return "<stdout>"


def file_system_error(err: OSError, cfg, out_dir: Path, out_key: str = "hydra.run.dir") -> ConfigError | None:
    """A write the file system refused (full, read-only, not ours, a file where a folder goes) as a ConfigError
    naming the setting whose path it was (``hydra.run.dir``, ``data.cache_dir`` / ``$HYDRAFORMER_CACHE``, ...), the
    path and what is wrong; None for any other OSError."""
    reason = FILE_SYSTEM_ERRORS.get(err.errno)
    if reason is None:
        return None
    filename = err.filename if err.filename is not None else file_being_written(err.__traceback__)
    if filename is None:  # a write to stdout/stderr (a pipe or file on a full disk)
        return ConfigError("stdout", _stdout_target(), f"a file or terminal that takes the task's output: {reason}")
    path = Path(os.fsdecode(filename)).expanduser().absolute()
    settings = [(out_key, out_dir)]
    with contextlib.suppress(Exception):  # an interpolation that cannot be resolved here names nothing
        cache = cfg.data.get("cache_dir") if cfg.get("data") else None
        if cache:
            env = os.environ.get("HYDRAFORMER_CACHE")
            settings.append(("HYDRAFORMER_CACHE" if env and str(cache) == env else "data.cache_dir", cache))
    for key in ("runs_dir", "sweeps_dir", "cache_dir"):
        with contextlib.suppress(Exception):
            if cfg.get("paths") and cfg.paths.get(key):
                settings.append((f"paths.{key}", cfg.paths[key]))
    matches = []  # the deepest folder holding the path; between equal ones, the first named
    for rank, (key, value) in enumerate(settings):
        root = Path(str(value)).expanduser().absolute()
        if path == root or root in path.parents:
            matches.append((len(root.parts), -rank, key, str(value)))
    key, value = max(matches)[2:] if matches else ("path", str(path))
    where = "" if str(path) == str(Path(value).expanduser().absolute()) else f" (writing {path})"
    return ConfigError(key, value, f"a writable location with free space; {reason}{where}")


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")  # never imported here if the task did not
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else None)


def run_task(cfg):
    """Run ``cfg.task``. ``task=train`` returns its best val/loss (what a sweeper such as Optuna minimises).

    A user error (bad config, bad data, NaN loss) is one paragraph on stderr and exit status 2 — except in a
    multirun, where the job fails (``failure.json`` in its directory, the exception to Hydra) and the sweep
    goes on with the next job.
    """
    _front.task_started = True
    quiet_log_files()  # hydraformer.log on a full disk: one line saying so, not a traceback per log line
    with _front.users_environment():
        return _run_task(cfg)


def _run_task(cfg):
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _name_wandb_run(cfg, hc)
    # shown once the task has checked its inputs (builder.config.printing.inputs_checked), never before an error
    display = ConfigDisplay(cfg, out_dir, overrides_as_typed(hc.overrides.task), dict(hc.runtime.choices),
                            model_used=uses_composed_model(cfg))
    failed = True
    try:
        if multirun:  # start-up: the launcher module imports Lightning, which only a multirun job may need here
            from ..training.launch import job_scope

            scope = job_scope()
        else:
            scope = contextlib.nullcontext()
        with scope, displaying(display):
            try:
                try:
                    # every value checked once, before the task's imports (Lightning: seconds): by the preflight
                    # (builder/config/preflight.py), else (a job an Optuna sweeper chose) here
                    token = hold(cfg, take_checked(overrides_as_typed(hc.overrides.task)) or check_job(cfg))
                    task = importlib.import_module(TASKS[cfg.task])
                    if cfg.task not in SHOW_THEIR_CONFIG:
                        display.show()
                    extra = (hc.runtime.choices.get("model"),) if cfg.task in TAKES_MODEL_NAME else ()
                    try:
                        code = task.run(cfg, out_dir, *extra)
                    finally:
                        release(token)
                    display.show()  # a task that returned without saying its inputs were checked
                except OSError as err:  # a full disk, a read-only cache: the setting and the path, not a traceback
                    user_error = file_system_error(err, cfg, out_dir)
                    if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                        raise
                    raise user_error from err
                if code and multirun:
                    raise RuntimeError(f"task={cfg.task} ended with exit status {code}")
            except USER_ERRORS as err:
                full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
                if multirun:  # Hydra marks this job failed; the sweeper goes on with the next one
                    _record_failure(out_dir, err)
                if full_error:
                    raise
                print(f"Error: {err}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
                if multirun:
                    raise JobFailed(str(err)) from None
                discard_if_empty(out_dir, _runs_dir(cfg))
                sys.exit(2)
            except Exception as err:
                if multirun:
                    _record_failure(out_dir, err)
                display.show(print_tree=False)  # a crash keeps the config beside its traceback
                raise
        failed = False
    finally:
        _finish_wandb(failed)
    if code:
        sys.exit(code)
    return _train_metric(out_dir) if cfg.task == "train" else 0


def _record_failure(out_dir: Path, err: BaseException) -> None:
    try:
        record_failure(out_dir, err)
    except OSError:
        pass


class _Front:
    """The command's state between its wrapper (:func:`main`) and Hydra.

    While Hydra composes, ``HYDRA_FULL_ERROR=1`` is set, so that Hydra raises its errors to :func:`main` instead of
    printing them and exiting with status 1; the user's own value waits in ``HYDRAFORMER_USERS_FULL_ERROR`` ("" when
    unset), which the processes a launcher starts inherit with it. While a task runs (and in the processes it
    starts: DDP's) the user's value is back. ``started``: a task ran, or the preflight passed — an error after that
    is a job's, not a composition's."""

    MARK = "HYDRAFORMER_USERS_FULL_ERROR"

    def __init__(self) -> None:
        self.task_started = False

    def users_full_error(self) -> str | None:
        if self.MARK in os.environ:
            return os.environ[self.MARK] or None
        return os.environ.get("HYDRA_FULL_ERROR")

    @property
    def started(self) -> bool:
        return self.task_started or preflight_passed()

    @contextlib.contextmanager
    def hydra_raises(self):
        self.task_started = False
        reset_preflight()
        users = self.users_full_error()
        os.environ[self.MARK] = users or ""
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            yield
        finally:
            os.environ.pop(self.MARK, None)
            self._put(users)

    @contextlib.contextmanager
    def users_environment(self):
        saved = {k: os.environ.get(k) for k in (self.MARK, "HYDRA_FULL_ERROR")}
        self._put(self.users_full_error())
        os.environ.pop(self.MARK, None)
        try:
            yield
        finally:
            for key, value in saved.items():
                self._put(value, key)

    @staticmethod
    def _put(value: str | None, key: str = "HYDRA_FULL_ERROR") -> None:
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_front = _Front()
register_schemas()


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    return run_task(cfg)


def _refuse(err: ConfigError) -> int:
    if _front.users_full_error() == "1":
        raise err
    print(f"Error: {err}", file=sys.stderr)
    return 2


def _status(code) -> int:
    """What the interpreter makes of ``SystemExit(code)``: None 0, an int itself, anything else printed and 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _hydra_write_error(err: OSError) -> ConfigError | None:
    """A write of Hydra's own that the file system refused after the preflight passed and before the job started
    (``.hydra/config.yaml``, ``multirun.yaml``) as the paragraph :func:`file_system_error` makes for a job's, naming
    the run (or sweep) folder; that folder goes when it holds only Hydra's files. None for any other error."""
    cfg = passed_config()
    if cfg is None:
        return None
    multirun = cfg.hydra.mode == RunMode.MULTIRUN
    with contextlib.suppress(Exception):  # an interpolation only the job resolves: the path named plainly
        out_dir = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)).expanduser().absolute()
        refusal = file_system_error(err, cfg, out_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir")
        if refusal is not None:  # a sweep that never started a job: its plan and comparison go with its folder
            also = ("multirun.yaml", PLAN_FILE, *SWEEP_OUTPUTS) if multirun else ()
            discard_if_empty(out_dir, cfg.get("paths", {}).get("sweeps_dir") if multirun else _runs_dir(cfg), also)
        return refusal
    return file_system_error(err, cfg, Path(os.fsdecode(err.filename or ".")))


def main(argv: list[str] | None = None) -> int:
    """The ``hydraformer`` command (and ``python run.py``): ``argv`` (``sys.argv[1:]`` when None) in, the exit status
    out — 0 done, 2 refused (one paragraph on stderr, no folder left), 1 a crash (its traceback), a task's own.

    The command line is checked (builder/config/cli.py), ``hydra.main`` composes once and runs the task; the
    preflight (builder/config/preflight.py) checks the composed config before Hydra writes anything."""
    args = flags_first(sys.argv[1:] if argv is None else list(argv))
    try:
        ns = check_command_line(args, TASKS, Path(__file__).parent)
    except ConfigError as err:
        return _refuse(err)
    register_help_resolver()  # the help page lists each group's options (conf/hydra/help/hydraformer.yaml)
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "hydraformer", *args]  # what hydra.main reads
    try:
        with _front.hydra_raises():
            _hydra_main()
    except Refused as refused:
        return _refuse(refused.error)
    except SystemExit as stop:
        return _status(stop.code)
    except Exception as err:
        refusal = None if _front.task_started or not isinstance(err, OSError) else _hydra_write_error(err)
        if refusal is None and _front.started:  # a job's crash or failure (a user error it reported), not Hydra's
            if _front.users_full_error() == "1":
                raise
            traceback.print_exc()
            return 1
        if refusal is None:
            refusal = composition_error(err, ns.overrides, public_composer(ns), file_reader(ns))
        if _front.users_full_error() == "1":
            raise refusal from err
        return _refuse(refusal)
    finally:
        sys.argv = saved_argv
    return 0
