"""Lightning loggers built from the ``logger`` config group, and one way to send them tables, text and images.

Not just Lightning's loggers: alone, WandbLogger prompts for a login and waits on an unreachable server; these never do.

Composed config (``logger=[wandb,csv]`` on the command line)::

    logger:
      wandb: {project: hydraformer, group: null, name: null, mode: null, ...}
      csv: {name: csv, version: ""}

Every logger writes below ``save_dir`` (the Hydra run directory):

* wandb:        ``<save_dir>/wandb/{offline-,}run-<date>-<id>/``
* csv:          ``<save_dir>/csv/metrics.csv`` (+ ``hparams.yaml``, ``tables/``, ``text/``, ``images/``)
* tensorboard:  ``<save_dir>/tensorboard/events.out.tfevents.*``

wandb runs online only when it can authenticate without a prompt (``WANDB_API_KEY``,
``WANDB_IDENTITY_TOKEN_FILE`` or a ``.netrc`` entry) and its server answers within 2 s; an online
``wandb.init`` that fails anyway continues offline. Offline runs print the ``wandb sync`` line that
uploads them. Importing this module does not import wandb.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import netrc
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from components.registry import closest

from ..config.plain import to_plain
from ..errors import ConfigError
from ..files import named_errors
from ..tables import cell, table

WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled", "shared")
DEFAULT_INIT_TIMEOUT = 60.0  # seconds; wandb's own default is 90
# wandb >= 0.31 defaults to the CoreWeave "Forge" proxy host and also accepts credentials for the API host behind it
DEFAULT_WANDB_HOSTS = ("api.forge.coreweave.com", "api.wandb.ai")
_FORGE_UPSTREAM = {"api.forge.coreweave.com": "api.wandb.ai", "forge.coreweave.com": "api.wandb.ai"}

_sync_hint_shown: set[str] = set()


# --------------------------------------------------------------------------
# wandb: online only when logged in and the server answers
# --------------------------------------------------------------------------


def _netrc_path() -> Path | None:
    if env := os.environ.get("NETRC"):
        return Path(env).expanduser()
    for name in (".netrc", "_netrc"):
        p = Path("~", name).expanduser()
        if p.exists():
            return p
    return None


def _wandb_hosts() -> list[str]:
    base = os.environ.get("WANDB_BASE_URL")
    if not base:
        return list(DEFAULT_WANDB_HOSTS)
    host = urlsplit(base).netloc
    return [h for h in (host, _FORGE_UPSTREAM.get(host)) if h]


def has_wandb_credentials() -> bool:
    """True when wandb can authenticate without prompting: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or a
    ``.netrc`` (``$NETRC``, ``~/.netrc``, ``~/_netrc``) entry with a password for the wandb host (``WANDB_BASE_URL``'s;
    by default ``api.wandb.ai`` or wandb 0.31's ``api.forge.coreweave.com``). Neither imports wandb nor touches the
    network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = _netrc_path()
    if path is None or not path.is_file():
        return False
    try:
        parsed = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError):
        return False
    return any((auth := parsed.authenticators(host)) and auth[2] for host in _wandb_hosts())


def wandb_mode(override: str | None = None) -> str:
    """``online``, ``offline``, ``disabled`` or ``shared``: ``override`` (``logger.wandb.mode``), else ``$WANDB_MODE``,
    else ``disabled`` if ``WANDB_DISABLED`` is true, else ``online`` with credentials (:func:`has_wandb_credentials`),
    else ``offline``. wandb's legacy ``dryrun`` means ``offline`` and ``run`` means ``online``."""
    for raw in (override, os.environ.get("WANDB_MODE")):
        if raw is None or str(raw).strip() == "":
            continue
        mode = str(raw).strip().lower()
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb mode: unknown value {raw!r}; accepted: {', '.join(WANDB_MODES)}"
                             f"{closest(mode, WANDB_MODES)}")
        return mode
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if has_wandb_credentials() else "offline"


def wandb_server_reachable(timeout: float = 2.0) -> bool:
    """A TCP connection to the wandb server (``$WANDB_BASE_URL`` or the default) opens within ``timeout``."""
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@rank_zero_only
def _show_sync_hint(save_dir: Path) -> None:
    if str(save_dir) in _sync_hint_shown:
        return
    _sync_hint_shown.add(str(save_dir))
    rank_zero_info(
        "wandb is offline (set WANDB_API_KEY or run `wandb login` to log online); "
        f"runs are saved under {save_dir / 'wandb'}. Upload them later with:\n"
        f"    wandb sync {save_dir / 'wandb'}/offline-run-*"
    )


class OfflineFallbackWandbLogger(WandbLogger):
    """A ``WandbLogger`` that continues offline when an *online* ``wandb.init`` fails (no network on a compute node:
    ``CommError`` after ``init_timeout``), instead of ending the training job.

    Lightning's private API, the one use here: WandbLogger calls ``wandb.init`` lazily in ``experiment`` with the
    arguments it keeps in ``_wandb_init`` and offers no hook to change them after a failed try, so the retry reads
    ``_experiment`` / ``_save_dir`` and sets ``_wandb_init["mode"]`` (pyproject pins Lightning's minor version)."""

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self._wandb_init.get("mode") == "online":
            try:
                return super().experiment
            except Exception as err:  # CommError, AuthenticationError, UsageError, ...
                first_line = str(err).splitlines()[0] if str(err) else ""
                rank_zero_warn(f"wandb online init failed ({type(err).__name__}: {first_line}); continuing offline")
                self._wandb_init["mode"] = "offline"
                if self._save_dir:
                    _show_sync_hint(Path(self._save_dir))
        return super().experiment


# --------------------------------------------------------------------------
# the allow-list: logger name -> the function that builds it
# --------------------------------------------------------------------------


def _wandb(save_dir: Path, config: dict | None, options: dict[str, Any]) -> WandbLogger:
    options = dict(options)
    mode = wandb_mode(options.pop("mode", None))
    init_timeout = float(options.pop("init_timeout", None) or DEFAULT_INIT_TIMEOUT)
    user_settings = dict(options.pop("settings", None) or {})
    offline_fallback = bool(options.pop("offline_fallback", True))
    if mode == "online" and offline_fallback and not wandb_server_reachable():
        # logged in, but no server answers: two seconds decide, instead of wandb.init's long timeout
        rank_zero_warn("wandb server unreachable: logging offline (upload later with `wandb sync`)")
        mode = "offline"
    if mode == "offline" and options.get("log_model"):
        rank_zero_warn("wandb is offline: log_model is ignored (checkpoints cannot be uploaded)")
        options["log_model"] = False
    if mode == "offline":
        _show_sync_hint(save_dir)

    import wandb  # heavy: only when a wandb logger is asked for

    # ``mode=`` goes to wandb.init (it beats $WANDB_MODE); WandbLogger(offline=True) would set os.environ["WANDB_MODE"]
    # for the rest of the process. ``settings`` from the config may override init_timeout.
    cls = OfflineFallbackWandbLogger if offline_fallback else WandbLogger
    return cls(save_dir=str(save_dir), project=options.pop("project", None) or "hydraformer",
               name=options.pop("name", None), group=options.pop("group", None), config=config, mode=mode,
               settings=wandb.Settings(**{"init_timeout": init_timeout, **user_settings}), **options)


def _csv(save_dir: Path, config: dict | None, options: dict[str, Any]) -> CSVLogger:
    return CSVLogger(save_dir=str(save_dir), **{"name": "csv", "version": "", **options})


def _tensorboard(save_dir: Path, config: dict | None, options: dict[str, Any]) -> TensorBoardLogger:
    if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        raise ModuleNotFoundError("logger: 'tensorboard' needs the tensorboard package: pip install tensorboard")
    return TensorBoardLogger(save_dir=str(save_dir),
                             **{"name": "tensorboard", "version": "", "default_hp_metric": False, **options})


def log_config(loggers: Iterable[Logger], config: Mapping[str, Any] | None) -> None:
    """The config as the csv and tensorboard loggers' hyperparameters: their first file (wandb has it from its init)."""
    if config:
        for logger in loggers:
            if isinstance(logger, (CSVLogger, TensorBoardLogger)):
                logger.log_hyperparams(config)


LOGGERS = {"wandb": _wandb, "csv": _csv, "tensorboard": _tensorboard}
LOGGER_NAMES: tuple[str, ...] = tuple(LOGGERS)
# csv and tensorboard take exactly their Lightning class's arguments (wandb passes the rest on to wandb.init)
_SIGNATURES = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def _check_name(name: Any) -> str:
    key = str(name).strip().lower()
    if key not in LOGGERS:
        raise ConfigError("logger", name, f"one of {', '.join(LOGGER_NAMES)}{closest(key, LOGGER_NAMES)}")
    return key


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    """No ``_target_`` (a config never names code to run) and, for csv and tensorboard, only their class's arguments."""
    for key, value in options.items():
        if str(key).startswith("_"):
            raise ConfigError(f"logger.{name}.{key}", value, "a logger option; hydraformer builds only registered "
                              "components and loggers, and a config never names code to run (_target_)")
    if name in _SIGNATURES:
        cls = _SIGNATURES[name]
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "save_dir", "kwargs")]
        for key, value in options.items():
            if key not in accepted:
                raise ConfigError(f"logger.{name}.{key}", value,
                                  f"one of the {cls.__name__} options: {', '.join(accepted)}{closest(key, accepted)}")


def make_loggers(
    names: Sequence[str] | str | None,
    save_dir: str | os.PathLike,
    project: str = "hydraformer",
    group: str | None = None,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    wandb_mode: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    hparams_now: bool = True,
) -> list[Logger]:
    """Lightning loggers named by ``names`` (``wandb``, ``csv``, ``tensorboard``; case-insensitive, duplicates
    dropped, order kept), all writing under ``save_dir``.

    ``config`` (the resolved Hydra config) becomes the wandb run config and the csv/tensorboard hyperparameters;
    ``hparams_now=False`` leaves the latter to :func:`log_config`, so nothing is written until the caller says.
    ``project``, ``group``, ``run_name`` and ``wandb_mode`` are wandb's unless ``options["wandb"]`` sets them.
    ``options``: keyword arguments per logger name, e.g. ``{"wandb": {"tags": [...], "init_timeout": 30,
    "settings": {...}, "offline_fallback": True}, "csv": {"flush_logs_every_n_steps": 10}}``. An unknown name or
    option is a :class:`~builder.errors.ConfigError`. The wandb run starts when the Trainer first uses it; call
    :func:`finish_wandb` when the job is done.
    """
    if names is None:
        return []
    keys = list(dict.fromkeys(_check_name(n) for n in ([names] if isinstance(names, str) else names)))
    options = {_check_name(k): dict(v or {}) for k, v in (to_plain(options) or {}).items()}
    for key, opts in options.items():
        _check_options(key, opts)
    wb = options.setdefault("wandb", {})
    for key, value in (("project", project), ("group", group), ("name", run_name), ("mode", wandb_mode)):
        wb[key] = wb.get(key) or value

    save_dir = Path(save_dir).expanduser().resolve()
    save_dir.mkdir(parents=True, exist_ok=True)
    config = to_plain(config)
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    loggers = [LOGGERS[key](save_dir, config, options.get(key, {})) for key in keys]
    if hparams_now:
        log_config(loggers, config)
    return loggers


def make_loggers_from_config(
    logger_cfg: Mapping[str, Any] | None,
    save_dir: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    hparams_now: bool = True,
) -> list[Logger]:
    """Loggers from the composed ``logger`` node (logger name -> its options; ``None`` or empty: none). A name set
    to ``null`` is skipped: ``logger.csv=null`` on the command line switches csv off."""
    cfg = to_plain(logger_cfg) or {}
    if not isinstance(cfg, dict):
        raise ConfigError("logger", cfg, "a mapping of logger name -> options")
    options: dict[str, dict[str, Any]] = {}
    for name, opts in cfg.items():
        if opts is None or opts is False:
            continue
        if not isinstance(opts, dict):
            raise ConfigError(f"logger.{name}", opts, "a mapping of options, or null to switch it off")
        options[_check_name(name)] = opts
    return make_loggers(list(options), save_dir, config=config, options=options, hparams_now=hparams_now)


def wandb_run_dir(loggers: Logger | Iterable[Logger] | None) -> str | None:
    """Directory of the wandb run started by one of ``loggers`` (``.../wandb/offline-run-*``), or ``None`` if there is
    no wandb logger or its run has not started (asking does not start it)."""
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            run = getattr(logger, "_experiment", None)
            run_files = getattr(run, "dir", None) if run is not None else None
            if not run_files or getattr(run, "disabled", False):
                return None
            return str(Path(run_files).parent)
    return None


def finish_wandb(exit_code: int | None = None) -> bool:
    """Finish the active wandb run, if any (between Hydra multirun jobs); True if one was finished. Does not import
    wandb if nothing did. (The offline ``run-*.wandb`` file may be flushed by wandb's service a moment later.)"""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    wandb.finish(exit_code=exit_code)
    return True


# --------------------------------------------------------------------------
# tables, text, images: Lightning's own methods for wandb; a small routing for tensorboard and csv
# --------------------------------------------------------------------------


def _as_list(loggers: Logger | Iterable[Logger] | None) -> list[Logger]:
    if loggers is None:
        return []
    return [loggers] if isinstance(loggers, Logger) else list(loggers)


def _side_file(logger: CSVLogger, kind: str, key: str, step: int | None, suffix: str) -> Path:
    """``<csv log_dir>/<kind>/<key>[_step<N>]<suffix>``; a key like ``budget/params`` becomes folders, no escapes."""
    parts = ["".join(c if (c.isalnum() or c in "-_.=") else "_" for c in part).strip(".") or "_"
             for part in str(key).split("/") if part] or ["_"]
    path = Path(logger.log_dir, kind, *parts[:-1], parts[-1] + (f"_step{step}" if step is not None else "") + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _log_rows(loggers, kind: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step) -> None:
    columns = [str(c) for c in columns]
    rows = [[cell(v) for v in row] for row in rows]
    markdown = table(columns, rows, markdown=True, align="l" * len(columns))  # (refuses a row of the wrong length)
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            log = logger.log_text if kind == "text" else logger.log_table
            log(key=key, columns=columns, data=rows, step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, markdown, global_step=step or 0)
        elif isinstance(logger, CSVLogger):
            path = _side_file(logger, kind, key, step, ".csv")
            with named_errors(path), path.open("w", newline="") as f:
                csv.writer(f).writerows([columns, *rows])


@rank_zero_only
def log_table(loggers: Logger | Iterable[Logger] | None, key: str, columns: Sequence[str],
              rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
    """A table to every logger: wandb ``log_table``; tensorboard a Markdown table (``add_text``); csv
    ``<csv log_dir>/tables/<key>[_step<N>].csv``."""
    _log_rows(loggers, "tables", key, columns, rows, step)


@rank_zero_only
def log_text(loggers: Logger | Iterable[Logger] | None, key: str, columns: Sequence[str],
             rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
    """Text samples (a table of strings): as :func:`log_table`, with wandb ``log_text`` and csv under ``text/``."""
    _log_rows(loggers, "text", key, columns, rows, step)


@rank_zero_only
def log_image(loggers: Logger | Iterable[Logger] | None, key: str, path: str | os.PathLike,
              step: int | None = None, caption: str | None = None) -> None:
    """A picture file (PNG) to every logger: wandb ``log_image``; tensorboard ``add_image``; csv a copy at
    ``<csv log_dir>/images/<key>[_step<N>].png``."""
    path = Path(path)
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            logger.log_image(key, images=[str(path)], step=step, **({"caption": [caption]} if caption else {}))
        elif isinstance(logger, TensorBoardLogger):
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"))
            logger.experiment.add_image(key, pixels, global_step=step or 0, dataformats="HWC")
        elif isinstance(logger, CSVLogger):
            shutil.copyfile(path, _side_file(logger, "images", key, step, path.suffix))
