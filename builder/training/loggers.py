"""Lightning loggers built from the Hydra ``logger`` config group.

Composed config (``logger=[wandb,csv]`` on the command line)::

    logger:
      wandb: {project: hydraformer, group: null, name: null, mode: null, ...}
      csv: {name: csv, version: ""}

Every logger writes below ``save_dir`` (the Hydra run directory):

* wandb:        ``<save_dir>/wandb/{offline-,}run-<date>-<id>/``
* csv:          ``<save_dir>/csv/metrics.csv`` (+ ``hparams.yaml``, ``tables/``, ``images/``)
* tensorboard:  ``<save_dir>/tensorboard/events.out.tfevents.*``

wandb runs online only when it can authenticate without a prompt (``WANDB_API_KEY``
or a ``~/.netrc`` entry); otherwise offline, so training never waits on a login
prompt or the network.  ``wandb`` is imported lazily: importing this module does not
import it.

Public API: :data:`LOGGER_NAMES`, :func:`wandb_mode`, :func:`has_wandb_credentials`,
:func:`make_loggers`, :func:`make_loggers_from_config`, :func:`log_table`,
:func:`log_text`, :func:`log_image`, :func:`finish_wandb`, :func:`wandb_run_dir`,
:class:`OfflineFallbackWandbLogger` (the wandb logger class: check with
``isinstance(logger, WandbLogger)``, not by class name).
"""

from __future__ import annotations

import csv as _csv
import difflib
import importlib.util
import io
import netrc
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

LOGGER_NAMES: tuple[str, ...] = ("wandb", "csv", "tensorboard")
WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled", "shared")
DEFAULT_INIT_TIMEOUT = 60.0  # seconds; wandb's own default is 90

_sync_hint_shown: set[str] = set()


# --------------------------------------------------------------------------
# wandb mode
# --------------------------------------------------------------------------


def _netrc_path() -> Path | None:
    if env := os.environ.get("NETRC"):
        return Path(env).expanduser()
    for name in (".netrc", "_netrc"):
        p = Path("~", name).expanduser()
        if p.exists():
            return p
    return None


# wandb >= 0.31 defaults to the CoreWeave "Forge" proxy host and also accepts
# credentials stored for the W&B API host behind it.
DEFAULT_WANDB_HOSTS = ("api.forge.coreweave.com", "api.wandb.ai")
_FORGE_UPSTREAM = {
    "api.forge.coreweave.com": "api.wandb.ai",
    "forge.coreweave.com": "api.wandb.ai",
}


def _wandb_hosts() -> list[str]:
    base = os.environ.get("WANDB_BASE_URL")
    if not base:
        return list(DEFAULT_WANDB_HOSTS)
    host = urlsplit(base).netloc
    hosts = [host] if host else []
    if host in _FORGE_UPSTREAM:
        hosts.append(_FORGE_UPSTREAM[host])
    return hosts


def has_wandb_credentials() -> bool:
    """True when wandb can authenticate without prompting.

    Checks ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` and a ``.netrc``
    (``$NETRC``, ``~/.netrc``, ``~/_netrc``) entry with a password for the wandb
    host (``WANDB_BASE_URL``; by default ``api.wandb.ai`` or wandb 0.31's default
    ``api.forge.coreweave.com``).  Does not import wandb and does not touch the
    network.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = _netrc_path()
    if path is None or not path.is_file():
        return False
    try:
        parsed = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError):
        return False
    for host in _wandb_hosts():
        auth = parsed.authenticators(host)
        if auth and auth[2]:
            return True
    return False


def wandb_mode(override: str | None = None) -> str:
    """Decide the wandb mode: ``online``, ``offline`` or ``disabled``.

    Priority: ``override`` (e.g. ``logger.wandb.mode``), then ``$WANDB_MODE``,
    then ``online`` if credentials are available (:func:`has_wandb_credentials`),
    else ``offline``.  wandb's legacy ``dryrun`` means ``offline`` and ``run``
    means ``online``; ``WANDB_DISABLED=true`` means ``disabled``.
    """
    for raw in (override, os.environ.get("WANDB_MODE")):
        if raw is None or str(raw).strip() == "":
            continue
        mode = str(raw).strip().lower()
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(
                f"wandb mode: unknown value {raw!r}; accepted: {', '.join(WANDB_MODES)}" + _did_you_mean(mode, WANDB_MODES)
            )
        return mode
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if has_wandb_credentials() else "offline"


def wandb_server_reachable(timeout: float = 2.0) -> bool:
    """A TCP connection to the wandb server (``$WANDB_BASE_URL`` or the default) opens within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


_resolve_wandb_mode = wandb_mode  # make_loggers has a parameter of the same name


@rank_zero_only
def _show_sync_hint(save_dir: Path) -> None:
    key = str(save_dir)
    if key in _sync_hint_shown:
        return
    _sync_hint_shown.add(key)
    rank_zero_info(
        "wandb is offline (set WANDB_API_KEY or run `wandb login` to log online); "
        f"runs are saved under {save_dir / 'wandb'}. Upload them later with:\n"
        f"    wandb sync {save_dir / 'wandb'}/offline-run-*"
    )


# --------------------------------------------------------------------------
# logger construction
# --------------------------------------------------------------------------


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_name(name: Any) -> str:
    key = str(name).strip().lower()
    if key not in LOGGER_NAMES:
        raise ValueError(
            f"logger: unknown value {name!r}; accepted: {', '.join(LOGGER_NAMES)}" + _did_you_mean(key, LOGGER_NAMES)
        )
    return key


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (resolved); anything else unchanged."""
    if obj is None:
        return None
    if "omegaconf" in sys.modules:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


class OfflineFallbackWandbLogger(WandbLogger):
    """A ``WandbLogger`` that retries offline when an *online* ``wandb.init`` fails.

    Without network (compute nodes) online init fails only after ``init_timeout``
    (plus ~10 s of wandb's own retries) with ``wandb.errors.CommError``; instead of
    killing the training job, the run continues offline and can be synced later.
    """

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self._wandb_init.get("mode") == "online":
            try:
                return super().experiment
            except Exception as err:  # CommError, AuthenticationError, UsageError, ...
                rank_zero_warn(
                    f"wandb online init failed ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); continuing offline"
                )
                self._wandb_init["mode"] = "offline"
                if self._save_dir:
                    _show_sync_hint(Path(self._save_dir))
        return super().experiment


def _make_wandb(
    save_dir: Path,
    project: str,
    group: str | None,
    run_name: str | None,
    config: dict | None,
    mode: str | None,
    options: dict[str, Any],
) -> WandbLogger:
    options = dict(options)
    mode = _resolve_wandb_mode(options.pop("mode", None) or mode)
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

    import wandb  # lazy: only when a wandb logger is requested

    # init_timeout bounds how long wandb.init waits for its service / the server
    # (offline init takes ~1 s); ``settings`` from the config may override anything.
    settings = wandb.Settings(**{"init_timeout": init_timeout, **user_settings})
    if mode == "offline":
        _show_sync_hint(save_dir)
    # ``mode=`` is passed to wandb.init (an init argument beats $WANDB_MODE); we do not
    # use WandbLogger(offline=True), which sets os.environ["WANDB_MODE"] for the rest
    # of the process.
    cls = OfflineFallbackWandbLogger if offline_fallback else WandbLogger
    return cls(
        save_dir=str(save_dir),
        project=options.pop("project", None) or project,
        name=options.pop("name", None) or run_name,
        group=options.pop("group", None) or group,
        config=config,
        mode=mode,
        settings=settings,
        **options,
    )


def _make_csv(save_dir: Path, config: dict | None, options: dict[str, Any]) -> CSVLogger:
    kwargs = {"name": "csv", "version": "", **options}
    logger = CSVLogger(save_dir=str(save_dir), **kwargs)
    if config:
        logger.log_hyperparams(config)
    return logger


def _make_tensorboard(save_dir: Path, config: dict | None, options: dict[str, Any]) -> TensorBoardLogger:
    if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        raise ModuleNotFoundError("logger: 'tensorboard' needs the tensorboard package: pip install tensorboard")
    kwargs = {"name": "tensorboard", "version": "", "default_hp_metric": False, **options}
    logger = TensorBoardLogger(save_dir=str(save_dir), **kwargs)
    if config:
        logger.log_hyperparams(config)
    return logger


def make_loggers(
    names: Sequence[str] | str | None,
    save_dir: str | os.PathLike,
    project: str = "hydraformer",
    group: str | None = None,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    wandb_mode: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Logger]:
    """Build Lightning loggers, all writing under ``save_dir``.

    ``names``: any of ``"wandb"``, ``"csv"``, ``"tensorboard"`` (case-insensitive,
    duplicates dropped, order kept).  ``config`` (e.g. the resolved Hydra config) is
    stored as the wandb run config and as csv/tensorboard hyperparameters.
    ``wandb_mode``: force ``online``/``offline``/``disabled``; ``None`` decides with
    :func:`wandb_mode`.  ``options``: extra keyword arguments per logger name, e.g.
    ``{"wandb": {"tags": [...], "entity": ..., "init_timeout": 30, "settings": {...},
    "offline_fallback": True},
    "csv": {"flush_logs_every_n_steps": 10}}``.

    Raises ``ValueError`` for an unknown name.  The wandb run itself starts lazily
    (first use of ``logger.experiment``, i.e. when the Trainer starts); call
    :func:`finish_wandb` when the job is done.
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    keys: list[str] = []
    for name in names:
        key = _check_name(name)
        if key not in keys:
            keys.append(key)
    options = {str(k).lower(): dict(v or {}) for k, v in (_plain(options) or {}).items()}
    for key in options:
        _check_name(key)

    save_dir = Path(save_dir).expanduser().resolve()
    save_dir.mkdir(parents=True, exist_ok=True)
    config = _plain(config)
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")

    loggers: list[Logger] = []
    for key in keys:
        opts = options.get(key, {})
        if key == "wandb":
            loggers.append(_make_wandb(save_dir, project, group, run_name, config, wandb_mode, opts))
        elif key == "csv":
            loggers.append(_make_csv(save_dir, config, opts))
        else:
            loggers.append(_make_tensorboard(save_dir, config, opts))
    return loggers


def _check_options(name: str, opts: Mapping[str, Any]) -> None:
    """Only documented options: no ``_target_`` (configs never name code to run) and, for csv and
    tensorboard, only their Lightning logger's own arguments."""
    import inspect

    from ..errors import ConfigError

    for key, value in opts.items():
        if str(key).startswith("_"):
            raise ConfigError(f"logger.{name}.{key}", value, "a logger option; hydraformer builds only registered "
                              "components and loggers, and a config never names code to run (_target_)")
    if name in ("csv", "tensorboard"):
        cls = CSVLogger if name == "csv" else TensorBoardLogger
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "save_dir", "kwargs")]
        for key, value in opts.items():
            if key not in accepted:
                raise ConfigError(f"logger.{name}.{key}", value, f"one of the {cls.__name__} options: {', '.join(accepted)}")


def make_loggers_from_config(
    logger_cfg: Mapping[str, Any] | None,
    save_dir: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
) -> list[Logger]:
    """Build loggers from the composed ``logger`` config node.

    ``logger_cfg`` maps logger name -> options, e.g.
    ``{"wandb": {"project": "hydraformer", "group": None, "name": None, "mode": None},
    "csv": {}}``; ``None``/empty gives no loggers.  A name whose value is ``null``
    or ``false`` is skipped (``logger.csv=null`` on the command line switches csv off).
    wandb keys ``project``, ``group``, ``name``, ``mode`` map to :func:`make_loggers`
    arguments; all other keys are passed on as per-logger options.
    """
    cfg = _plain(logger_cfg) or {}
    if not isinstance(cfg, dict):
        raise TypeError(f"logger config must be a mapping of logger name -> options, got {cfg!r}")
    names: list[str] = []
    options: dict[str, dict[str, Any]] = {}
    for name, opts in cfg.items():
        if opts is None or opts is False:
            continue
        if opts is True:
            opts = {}
        if not isinstance(opts, dict):
            raise TypeError(f"logger.{name} must be a mapping of options, got {opts!r}")
        key = _check_name(name)
        _check_options(key, opts)
        names.append(key)
        options[key] = dict(opts)

    wb = options.get("wandb", {})
    return make_loggers(
        names,
        save_dir,
        project=wb.pop("project", None) or "hydraformer",
        group=wb.pop("group", None),
        run_name=wb.pop("name", None),
        config=config,
        wandb_mode=wb.pop("mode", None),
        options=options,
    )


def wandb_run_dir(loggers: Logger | Iterable[Logger] | None) -> str | None:
    """Directory of the wandb run started by one of ``loggers`` (``.../wandb/offline-run-*``),
    or ``None`` if there is no wandb logger or its run has not started (does not start it)."""
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            run = getattr(logger, "_experiment", None)
            run_files = getattr(run, "dir", None) if run is not None else None
            if not run_files or getattr(run, "disabled", False):
                return None
            return str(Path(run_files).parent)
    return None


def finish_wandb(exit_code: int | None = None) -> bool:
    """Finish the active wandb run, if any (call between Hydra multirun jobs).

    Returns True if a run was finished.  Does not import wandb if nothing did.
    Note: wandb.finish() may return before the offline ``run-*.wandb`` file is
    completely flushed by wandb's background service.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    wandb.finish(exit_code=exit_code)
    return True


# --------------------------------------------------------------------------
# tables, text, images
# --------------------------------------------------------------------------


def _as_list(loggers: Logger | Iterable[Logger] | None) -> list[Logger]:
    if loggers is None:
        return []
    if isinstance(loggers, Logger):
        return [loggers]
    return list(loggers)


def _safe_relpath(key: str) -> Path:
    """A metric key like ``budget/params`` -> a relative path, no escapes."""
    parts = ["".join(c if (c.isalnum() or c in "-_.=") else "_" for c in part) for part in str(key).split("/")]
    parts = [p.strip(".") or "_" for p in parts if p]
    return Path(*parts) if parts else Path("_")


def _side_file(logger: CSVLogger, kind: str, key: str, step: int | None, suffix: str) -> Path:
    rel = _safe_relpath(key)
    name = rel.name + (f"_step{step}" if step is not None else "") + suffix
    path = Path(logger.log_dir) / kind / rel.parent / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _cell(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()  # numpy / torch scalars
    return value


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def esc(v: Any) -> str:
        return str(_cell(v)).replace("|", "\\|").replace("\n", "<br>")

    lines = [
        "| " + " | ".join(esc(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _check_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[list, list]:
    columns = [str(c) for c in columns]
    rows = [[_cell(v) for v in row] for row in rows]
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {i} has {len(row)} values for {len(columns)} columns")
    return columns, rows


@rank_zero_only
def log_table(
    loggers: Logger | Iterable[Logger] | None,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    step: int | None = None,
) -> None:
    """Log a table to every logger.

    wandb: ``wandb.Table``; tensorboard: markdown table via ``add_text``;
    csv: side file ``<csv log_dir>/tables/<key>[_step<N>].csv``.
    """
    _log_rows(loggers, "tables", key, columns, rows, step)


def _log_rows(loggers, kind: str, key: str, columns, rows, step) -> None:
    """Route a table of rows: wandb gets a Table (``log_table``, or ``log_text`` for text), tensorboard a
    markdown table, csv a side file under ``<csv log_dir>/<kind>/``."""
    columns, rows = _check_rows(columns, rows)
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            log = logger.log_text if kind == "text" else logger.log_table
            log(key=key, columns=columns, data=rows, step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, _markdown_table(columns, rows), global_step=step or 0)
        elif isinstance(logger, CSVLogger):
            path = _side_file(logger, kind, key, step, ".csv")
            with path.open("w", newline="") as f:
                writer = _csv.writer(f)
                writer.writerow(columns)
                writer.writerows(rows)


@rank_zero_only
def log_text(
    loggers: Logger | Iterable[Logger] | None,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    step: int | None = None,
) -> None:
    """Log text samples (a table of strings): same routing as :func:`log_table`,
    except csv writes ``<csv log_dir>/text/<key>[_step<N>].csv``."""
    _log_rows(loggers, "text", key, columns, rows, step)


def _is_figure(obj: Any) -> bool:
    return hasattr(obj, "savefig") and hasattr(obj, "canvas")


def _to_array(image: Any) -> Any:
    """Path / PIL image / matplotlib figure / tensor / array -> numpy array (HW, HWC or CHW)."""
    import numpy as np

    if isinstance(image, (str, os.PathLike)):
        from PIL import Image  # optional; only for tensorboard from a file path

        with Image.open(image) as im:
            return np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"))
    if _is_figure(image):
        buf = io.BytesIO()
        image.savefig(buf, format="png")
        buf.seek(0)
        from PIL import Image

        with Image.open(buf) as im:
            return np.asarray(im.convert("RGBA"))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    elif _is_pil(image):
        image = np.asarray(image)
    return np.asarray(image)


def _is_pil(obj: Any) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def _to_hwc(arr: Any) -> Any:
    import numpy as np

    if arr.ndim == 3 and _dataformats(arr) == "CHW":
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _dataformats(arr: Any) -> str:
    if arr.ndim == 2:
        return "HW"
    if arr.ndim == 3:
        return "HWC" if arr.shape[-1] in (1, 3, 4) else "CHW"
    raise ValueError(f"image must have 2 or 3 dimensions, got shape {tuple(arr.shape)}")


@rank_zero_only
def log_image(
    loggers: Logger | Iterable[Logger] | None,
    key: str,
    image: Any,
    step: int | None = None,
    caption: str | None = None,
) -> None:
    """Log one image to every logger.

    ``image``: a file path, a numpy array / torch tensor (HW, HWC or CHW; uint8
    0..255 or float 0..1), a PIL image, or a matplotlib figure.
    wandb: ``wandb.Image``; tensorboard: ``add_image`` (``add_figure`` for figures);
    csv: ``<csv log_dir>/images/<key>[_step<N>].<ext>`` (a copy or a PNG).
    """
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            import wandb

            kwargs = {"caption": caption} if caption else {}
            if isinstance(image, (str, os.PathLike)):
                data = str(image)
            elif _is_figure(image) or _is_pil(image):
                data = image
            else:  # wandb.Image wants HW / HWC for numpy input
                data = _to_hwc(_to_array(image))
            img = wandb.Image(data, **kwargs)
            logger.log_metrics({key: img}, step=step)
        elif isinstance(logger, TensorBoardLogger):
            if _is_figure(image):
                logger.experiment.add_figure(key, image, global_step=step or 0, close=False)
            else:
                arr = _to_array(image)
                logger.experiment.add_image(key, arr, global_step=step or 0, dataformats=_dataformats(arr))
        elif isinstance(logger, CSVLogger):
            if isinstance(image, (str, os.PathLike)):
                src = Path(image)
                shutil.copyfile(src, _side_file(logger, "images", key, step, src.suffix))
            elif _is_figure(image):
                image.savefig(_side_file(logger, "images", key, step, ".png"))
            else:
                _save_array_png(_to_array(image), _side_file(logger, "images", key, step, ".png"))


def _save_array_png(arr: Any, path: Path) -> None:
    import numpy as np
    from PIL import Image

    arr = _to_hwc(arr)
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0, 0, 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
