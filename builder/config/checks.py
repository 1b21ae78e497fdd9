"""The check of a job's composed config: the one place a value is refused for what it is.

:func:`check_job` runs once per job, in the preflight (builder/config/preflight.py: after Hydra composes, before it
writes anything or the task's module is imported, so a bad value is refused in the time composing takes, without
Lightning; for a trial an Optuna sweeper chose, in ``builder.tasks.run_task``): every declared key against its declaration
(builder/config/spec.py), each callback's settings against its dataclass, the rules between sections, and the
wandb mode. It returns the checked :class:`~builder.config.schema.Config` the tasks read.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

import components
from components.registry import Settings, closest

from ..errors import ConfigError, first_line
from . import parallel
from .plain import to_plain
from .schema import CALLBACK_SCHEMAS, Config
from .spec import check, unknown_key

# WANDB_MODE / logger.wandb.mode: builder/training/loggers.py WANDB_MODES, and wandb's legacy names for two of them
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
# tasks whose model is the composed ``model`` section (the others read theirs from ``checkpoint=``)
COMPOSED_MODEL_TASKS = ("train", "report", "plan")
# the running job's checked config (builder.tasks.run_task sets it; a task reads it with checked(cfg))
_CHECKED: ContextVar[tuple[int, Config] | None] = ContextVar("hydraformer_checked", default=None)


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def uses_composed_model(cfg) -> bool:
    """Whether the task of ``cfg`` (a DictConfig or a plain dict) builds ``model`` (not a checkpoint's model, not a
    list of presets)."""
    return cfg.get("task") in COMPOSED_MODEL_TASKS and not (cfg.get("task") == "report" and cfg.get("models")) \
        and not (cfg.get("task") == "plan" and cfg.get("checkpoint"))


def check_callbacks(entries: Any) -> dict:
    """``callbacks`` (name -> settings; null switches one off) -> name -> its checked settings object."""
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        raise ConfigError("callbacks", entries, "a mapping of callback name -> settings")
    out = {}
    for name, value in entries.items():
        if name not in CALLBACK_SCHEMAS:
            target = next((k for k in value if str(k).startswith("_")), None) if isinstance(value, dict) else None
            if target is not None or str(name).startswith("_"):
                raise ConfigError(f"callbacks.{name}" + (f".{target}" if target else ""), value,
                                  f"a callback hydraformer builds: one of {', '.join(CALLBACK_SCHEMAS)}"
                                  f"{closest(str(name), CALLBACK_SCHEMAS)}; a config never names code to run (_target_)")
            raise unknown_key("callbacks", name, value, list(CALLBACK_SCHEMAS))
        if value is None or value is False:
            continue
        out[name] = check(CALLBACK_SCHEMAS[name], value, f"callbacks.{name}")
    return out


def check_wandb_mode(logger: Any) -> None:
    wandb_cfg = logger.get("wandb") if isinstance(logger, dict) else None
    if wandb_cfg is None:
        return
    candidates = [("logger.wandb.mode", wandb_cfg.get("mode")), ("WANDB_MODE", os.environ.get("WANDB_MODE"))]
    for key, raw in candidates:
        if raw is None or str(raw).strip() == "":
            continue
        if str(raw).strip().lower() not in WANDB_MODES:
            default = "unset" if key == "WANDB_MODE" else "null"
            raise ConfigError(key, raw, f"one of online, offline, disabled, shared{closest(str(raw).lower(), WANDB_MODES)}"
                              f", or {default} for the default (online with a wandb API key, else offline)")
        return  # the first one set decides (logger.wandb.mode beats $WANDB_MODE)


def check_component_names(cfg) -> None:
    """A composed component node keeps the name of the option that made it: ``model.attention.name=X`` would build
    another component from this one's settings, so the choice is made with ``model/attention=X``."""
    model = cfg.get("model") if isinstance(cfg, DictConfig) else None
    if not isinstance(model, DictConfig):
        return
    for kind in components.KINDS:
        node = model.get(kind)
        declared_as = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if isinstance(declared_as, type) and issubclass(declared_as, Settings) and node.get("name") != declared_as().name:
            name = node.get("name")
            raise ConfigError(f"model.{kind}.name", name, f"{declared_as().name}: a component is chosen with "
                              f"model/{kind}=NAME{closest(str(name), components.names(kind))}, one of "
                              f"{', '.join(components.names(kind))} (it brings its own settings)")


def check_job(cfg) -> Config:
    """The job's config (a DictConfig or plain dict, with or without its ``hydra`` node) checked against the
    declarations; returns the checked Config (its ``callbacks`` name -> settings object). ConfigError otherwise.
    The ``model`` section is checked only when the task builds it."""
    # the job's part only: the hydra node holds interpolations only Hydra's run resolves (hydra.job.num ...)
    try:
        plain = {str(k): to_plain(cfg[k]) for k in cfg if k != "hydra"} if isinstance(cfg, DictConfig) else \
            to_plain(cfg)
    except InterpolationResolutionError as err:
        raise interpolation_refusal(cfg, err) from None
    plain.pop("hydra", None)
    if not uses_composed_model(plain):
        plain.pop("model", None)
    else:
        check_component_names(cfg)
    skip = () if "model" in plain else ("model",)
    checked = check(Config, plain, "", skip=skip)
    checked.callbacks = check_callbacks(plain.get("callbacks"))
    if checked.task == "train":
        check_wandb_mode(plain.get("logger"))
        processes = checked.trainer.processes()
        if checked.train.skip_nonfinite and processes is not None and processes > 1:
            raise skip_nonfinite_refusal(processes)
        refused = next(parallel.problems(plain.get("model") or {}, checked.trainer.tensor_parallel, processes), None)
        if refused is not None:
            raise ConfigError(*refused)
    return checked


def interpolation_refusal(cfg: DictConfig, err: InterpolationResolutionError) -> ConfigError:
    """A ``${...}`` that does not resolve (a key that is not there, an unknown resolver, an unset variable), in one
    paragraph naming the key, the value as written and how to write a literal ``${``: OmegaConf's escape ``\\${``
    (Hydra passes it on from the command line, in single quotes)."""
    key = getattr(err, "full_key", None) or "config"
    written: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in re.findall(r"[^.\[\]]+", key):
        try:
            written = written[int(part)] if isinstance(written, list) else written[part]
        except (KeyError, IndexError, TypeError, ValueError):
            written = None
            break
    literal = written.replace("${", "\\${") if isinstance(written, str) else None
    example = "" if literal is None else f": '{key}={literal}'" if "[" not in key else f": '{literal}'"
    return ConfigError(key, written, f"a value whose ${{...}} interpolations resolve; for a literal '${{', write "
                       f"'\\${{' (on the command line in single quotes){example}", detail=first_line(err))


def skip_nonfinite_refusal(processes: int) -> ConfigError:
    """``train.skip_nonfinite`` needs one process: Lightning cannot skip a batch in distributed training (it raises
    mid-run when training_step returns None)."""
    return ConfigError("train.skip_nonfinite", True, f"false when training on {processes} processes "
                       "(trainer.devices x trainer.num_nodes): Lightning cannot skip a batch in distributed "
                       "training; a NaN/inf loss then stops every process at that step, keeping the checkpoints "
                       "written before it")


def checked(cfg) -> Config:
    """The checked Config of ``cfg``: the one :func:`check_job` made for this job (held by ``builder.tasks.run_task``), or
    a check made now when a task is called from Python without it."""
    held = _CHECKED.get()
    if held is not None and held[0] == id(cfg):
        return held[1]
    return check_job(cfg)


def hold(cfg, config: Config):
    """Make ``config`` what :func:`checked` returns for ``cfg`` (a token for ``release``)."""
    return _CHECKED.set((id(cfg), config))


def release(token) -> None:
    _CHECKED.reset(token)
