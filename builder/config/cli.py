"""Checks made before Hydra runs anything: the command line, then the config it composes.

``precheck_or_exit`` (the ``hydraformer`` command calls it before ``_hydra_main``):

1. ``check_overrides``: every group option and task on the command line exists (else the closest match), and no
   override names code to run (a ``_target_``, a ``hydra.callbacks`` entry);
2. composes the config once, as Hydra is about to (same search path, config name and overrides): a key or group
   that does not exist, a value of the wrong type, an override Hydra cannot parse become one paragraph with the
   closest match, where Hydra would print its own text and exit 1;
3. ``check_composed``: the composed config, whatever file set it (an experiment, a ``--config-dir``), names no
   code to run — Hydra instantiates ``hydra.callbacks`` (and the launcher, the sweeper, the logging handlers)
   when the app starts, before any task runs, so this is the last moment to refuse them — and every key of a
   schema section (root, ``model``, ``data``, ``train``, ``callbacks.*``) is one the schema knows.

Each mistake is one paragraph on stderr and exit status 2 (``HYDRA_FULL_ERROR=1``: the traceback instead).
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from components.registry import closest

from ..errors import ConfigError
from .compose import CONF_DIR
from .keys import help_lines
from .printing import is_rank_zero
from .schema import TRAINER_SET_BY_US, register_schemas

# The Hydra callbacks a config may name: ours, by key, with the one class each may build (conf/config.yaml).
HYDRA_CALLBACKS = {"sweep_comparison": "builder.tasks.compare.SweepComparison"}
# Elsewhere under ``hydra``: what Hydra and its installed plugins ship (launchers, sweepers, Optuna's samplers).
HYDRA_TARGETS = ("hydra._internal.core_plugins.", "hydra_plugins.", "optuna.samplers.", "optuna.pruners.")
# logging.config.dictConfig calls a handler's/formatter's ``class`` and any ``()`` factory: the standard library's only
LOGGING_CLASSES = ("logging.",)
# a file system that refuses a write: what each errno means, for one paragraph naming the setting and the path
FILE_SYSTEM_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                      errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file",
                      errno.EEXIST: "a file is in the way of a directory", errno.EFBIG: "file too large"}
# flags after which Hydra runs nothing of ours (it prints and exits): the command line is checked, not composed
_NO_RUN_FLAGS = ("help", "hydra_help", "info", "shell_completion")
NO_CODE = "configs never name code to run"
# sections whose keys are another library's arguments: what the list of accepted keys leaves out
MORE_KEYS = {"trainer": f" (pytorch_lightning.Trainer's arguments, but those hydraformer sets itself: "
                        f"{', '.join(TRAINER_SET_BY_US)})"}
# sections whose keys are another library's arguments: more than the config lists are accepted


def _stored(group: str) -> list[str]:
    """The options of ``group`` in Hydra's ConfigStore (each component's settings: ``model/attention``)."""
    register_schemas()
    try:
        return [n[: -len(".yaml")] for n in ConfigStore.instance().list(group) if n.endswith(".yaml")]
    except (OSError, LookupError):
        return []


def _stored_groups(group: str = "") -> list[str]:
    try:
        entries = ConfigStore.instance().list(group) if group else []
    except (OSError, LookupError):
        return []
    return [f"{group}/{n}" for n in entries if not n.endswith(".yaml")]


def _options(group_dir: Path) -> list[str]:
    return sorted(p.stem for p in group_dir.glob("*.yaml"))


def _values(value: str) -> list[str]:
    value = value.strip()
    if "(" in value or "$" in value:  # sweep functions (range, choice, glob) and interpolations: Hydra's business
        return []
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [v.strip().strip("'\"") for v in value.split(",") if v.strip() and v.strip() != "null"]


@functools.cache
def groups(conf_dir: Path = CONF_DIR) -> tuple[str, ...]:
    """The config groups a person picks from (``model``, ``model/attention``, ``experiment`` ...): folders of
    ``conf/`` holding options and the component groups of the ConfigStore, without Hydra's own and the schema
    folders."""
    found = set()
    for d in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        rel = d.relative_to(conf_dir).as_posix()
        if rel.split("/")[0] in ("hydra", "__pycache__") or "schema" in rel.split("/") or not _options(d):
            continue
        found.add(rel)
    _stored("model")
    found.update(g for g in _stored_groups("model") if "schema" not in g)
    return tuple(sorted(found))


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of ``group`` a person can pick (``schema`` and ``_private`` ones left out): its YAML files in
    ``conf/`` and its entries in the ConfigStore."""
    names = set(_options(conf_dir / group)) | set(_stored(group))
    return sorted(o for o in names if o != "schema" and not o.startswith("_"))


def register_help_resolver() -> None:
    """``${hydraformer.options:GROUP}``, used by the help page (conf/hydra/help/hydraformer.yaml): the options of a
    group, read from ``conf/`` and the ConfigStore when the page is printed (wrapped to the page's second column);
    ``${hydraformer.keys:KEY,...}``: each key with what its declaration accepts and means."""
    if not OmegaConf.has_resolver("hydraformer.options"):
        OmegaConf.register_new_resolver("hydraformer.options", lambda group: textwrap.fill(
            ", ".join(options(str(group))), width=118, initial_indent=" " * 20, subsequent_indent=" " * 20)[20:])
    if not OmegaConf.has_resolver("hydraformer.keys"):
        OmegaConf.register_new_resolver("hydraformer.keys", lambda *keys: help_lines([str(k) for k in keys]))


def _names_code(key: str, value: str, removing: bool) -> ConfigError | None:
    """An override that would make Hydra (or the builder) import and call something: a ``_target_``, an entry of
    ``hydra.callbacks`` other than ours. Switching something off names no code."""
    parts = key.split(".")
    if removing:
        return None
    if parts[:2] == ["hydra", "callbacks"]:
        if len(parts) > 2 and parts[2] in HYDRA_CALLBACKS and parts[3:] == ["plot"]:
            return None  # our one callback's one setting
        return ConfigError(key, value, f"{NO_CODE}: hydra.callbacks holds only hydraformer's own "
                           f"({', '.join(HYDRA_CALLBACKS)}); remove this override")
    if parts[-1] == "_target_":
        return ConfigError(key, value, _target_accepted(key))
    return None


def _target_accepted(key: str) -> str:
    section = key.split(".")[0]
    how = {"model": "a component is chosen by name (model/attention=grouped_query) and registered with @register",
           "logger": "a logger is chosen by name (logger=csv, logger=[wandb,csv])",
           "callbacks": "a callback is chosen by name from conf/callbacks/ (callbacks.NAME=null switches one off)",
           "trainer": "trainer.* keys are pytorch_lightning.Trainer arguments"}.get(
        section, "every object is built by hydraformer from its own keys")
    return f"no _target_: {NO_CODE}; {how}"


def check_overrides(args: list[str], conf_dir: Path = CONF_DIR, tasks=None, *, check_options: bool = True) -> None:
    """Raise ConfigError for an unknown config group or group option, an unknown task, or an override that names
    code to run. ``check_options=False``: groups and options may come from elsewhere too (``--config-dir``,
    ``hydra.searchpath``), so only composing can tell."""
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue
        raw_key, _, value = arg.partition("=")
        key = raw_key.lstrip("+~").split("@", 1)[0]
        removing = raw_key.startswith("~") or value.strip() in ("null", "{}")
        if err := _names_code(key, value, removing):
            raise err
        if key.startswith("hydra") or "=" not in arg:
            continue
        if key == "task" and tasks is not None:
            for v in _values(value):
                if v not in tasks:
                    raise ConfigError("task", v, f"one of {', '.join(sorted(tasks))}{closest(v, tasks)}")
            continue
        if not check_options:
            continue
        known = groups(conf_dir)
        if "/" in key and key not in known:
            parent = key.rsplit("/", 1)[0]
            kinds = sorted(g.rsplit("/", 1)[1] for g in known if g.startswith(parent + "/") and g.count("/") ==
                           parent.count("/") + 1)
            raise ConfigError(key, value, f"a config group{closest(key.rsplit('/', 1)[1], kinds)}; groups under "
                              f"{parent}/: {', '.join(kinds)}")
        if key not in known:
            continue
        opts = options(key, conf_dir)
        for v in _values(value):
            if v not in opts:
                raise ConfigError(key, v, f"one of {', '.join(opts)}{closest(v, opts)}")


# --------------------------------------------------------------------------------------------------
# the composed config
# --------------------------------------------------------------------------------------------------


def _walk(node, path: str = ""):
    """(dotted key, value) of every entry below ``node`` (plain containers), lists included."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        full = f"{path}.{key}" if path else str(key)
        yield full, value
        yield from _walk(value, full)


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node


def check_job_config(cfg, tasks=None) -> None:
    """The job's config (no ``hydra`` node needed) names no code to run: no ``_target_`` anywhere. (Its keys and
    values are the declarations' business: Hydra refuses an undeclared key when it composes, and
    builder/config/checks.py checks every value once per job.) Raises ConfigError."""
    plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    for key, value in _walk(plain):
        if key.rsplit(".", 1)[-1] == "_target_":
            raise ConfigError(key, value, _target_accepted(key))


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


# what Hydra itself writes in a run or sweep directory before a task starts
HYDRA_OWN = (".hydra", "multirun.yaml")


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


def check_composed(cfg: DictConfig, tasks=None) -> None:
    """A config composed with its ``hydra`` node: nothing in it names code Hydra would run at start-up, and the
    job's part passes :func:`check_job_config`. Raises ConfigError."""
    hydra_cfg = cfg.get("hydra")
    if isinstance(hydra_cfg, DictConfig):
        callbacks = hydra_cfg.get("callbacks") or {}
        for name in callbacks:
            entry = _plain(callbacks[name])
            if entry is None:
                continue
            target = entry.get("_target_") if isinstance(entry, dict) else entry
            nested = [k for k, _ in _walk(entry) if k.endswith("_target_") and k != "_target_"] if isinstance(
                entry, dict) else []
            if HYDRA_CALLBACKS.get(name) != target or nested:
                raise ConfigError(f"hydra.callbacks.{name}", target if not nested else entry,
                                  f"{NO_CODE}: hydra.callbacks holds only hydraformer's own "
                                  f"({', '.join(f'{k}: {v}' for k, v in HYDRA_CALLBACKS.items())})")
        for section in ("launcher", "sweeper"):
            for key, value in _walk(_plain(hydra_cfg.get(section)) or {}, f"hydra.{section}"):
                if key.endswith("._target_") and not str(value).startswith(HYDRA_TARGETS):
                    raise ConfigError(key, value, f"{NO_CODE}: a launcher or sweeper of Hydra or an installed Hydra "
                                      "plugin (hydra/launcher=..., hydra/sweeper=...)")
        for section in ("job_logging", "hydra_logging"):
            for key, value in _walk(_plain(hydra_cfg.get(section)) or {}, f"hydra.{section}"):
                last = key.rsplit(".", 1)[-1]
                if last == "()" or (last == "class" and not str(value).startswith(LOGGING_CLASSES)):
                    raise ConfigError(key, value, f"{NO_CODE}: logging handlers and formatters of the standard "
                                      "library (class: logging.StreamHandler ...), no '()' factories")
    check_job_config(cfg, tasks)


# --------------------------------------------------------------------------------------------------
# composing once, as Hydra is about to
# --------------------------------------------------------------------------------------------------


def _parse_args(args: list[str]) -> argparse.Namespace:
    """What hydra.main parses: the same flags, the same errors."""
    return get_args_parser().parse_args(args)


class _Composer:
    """Hydra's composition with the search path ``hydra.main`` builds for our app (``pkg://conf``, ``--config-path``,
    ``--config-dir``, search-path plugins)."""

    def __init__(self, ns: argparse.Namespace, app_file: str | None):
        self.config_name = ns.config_name or "config"
        self.search_path = create_automatic_config_search_path(app_file, None, ns.config_path or "pkg://conf")
        if ns.config_dir is not None:
            self.search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(ns.config_dir)}",
                                     anchor=SearchPathQuery(provider="schema"))

    def __call__(self, overrides: list[str], multirun: bool) -> DictConfig:
        GlobalHydra.instance().clear()
        try:
            hydra = Hydra.create_main_hydra2(task_name="hydraformer", config_search_path=self.search_path)
            with warnings.catch_warnings():  # Hydra's own composition, a moment later, shows them once
                warnings.simplefilter("ignore")
                return hydra.compose_config(self.config_name, list(overrides), with_log_configuration=False,
                                            run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
                                            validate_sweep_overrides=False)
        finally:
            GlobalHydra.instance().clear()

    def file_value(self, source: str, key: str):
        """What the config file ``source`` (``experiment/x``) sets ``key`` to, read from the first folder of the
        search path that holds it; None when it cannot be found."""
        for element in self.search_path.get_path():
            root = element.path or ""
            if root.startswith("file://"):
                folder = Path(root[len("file://"):])
            elif root == "pkg://conf":
                folder = CONF_DIR
            else:
                continue
            path = folder / f"{source}.yaml"
            if path.is_file():
                loaded = OmegaConf.load(path)
                group = source.rsplit("/", 1)[0].replace("/", ".") if "/" in source else ""
                for inner in (key, key[len(group) + 1:] if group and key.startswith(group + ".") else None):
                    found = OmegaConf.select(loaded, inner, default=None, throw_on_resolution_failure=False) if inner \
                        else None
                    if found is not None:
                        return _plain(found)
                return None
        return None

    def group_options(self, group: str) -> list[str]:
        GlobalHydra.instance().clear()
        try:
            hydra = Hydra.create_main_hydra2(task_name="hydraformer", config_search_path=self.search_path)
            return hydra.config_loader.get_group_options(group)
        finally:
            GlobalHydra.instance().clear()


def _parsed(overrides: list[str]):
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed.extend(parser.parse_overrides([line]))
        except Exception as err:  # OverrideParseException: name the override, not only the character
            key, _, value = line.partition("=")
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(key, value, "an override Hydra can parse: key=value, a quoted string, a list [a,b], "
                              "a sweep a,b (https://hydra.cc/docs/advanced/override_grammar/basic/)",
                              detail=first) from err
    return parsed


def _group_sweep_variants(parsed, composer: _Composer) -> list[list[str]]:
    """A multirun composes its master config with every sweep left out (Hydra does): the configs its jobs will
    have differ by the swept groups (an experiment each). One override list per swept group option."""
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    variants = [base]
    for o in parsed:
        if not o.is_sweep_override() or "." in o.key_or_group:
            continue
        value = o.value()
        if isinstance(value, ChoiceSweep):
            names = [str(v) for v in value.list]
        elif isinstance(value, Glob):
            names = value.filter(composer.group_options(o.key_or_group))
        else:
            continue
        prefix = o.input_line.split("=", 1)[0]
        variants += [base + [f"{prefix}={name}"] for name in names]
    return variants


def _override_for(text: str, full_key: str | None, parsed):
    """The override a composition error is about: by the key it names, else the first one its message quotes or
    mentions."""
    if full_key:
        for o in parsed:
            key = o.key_or_group
            if full_key == key or full_key.startswith(key + ".") or key.startswith(full_key + "."):
                return o
    for pattern in ("'{}'", r"\b{}\b"):
        for o in parsed:
            if re.search(pattern.format(re.escape(o.key_or_group)), text):
                return o
    return None


def _keys_at(cfg: DictConfig, path: str) -> list[str]:
    node = OmegaConf.select(cfg, path, default=None) if path else cfg
    if not isinstance(node, DictConfig):
        return []
    keys = [str(k) for k in node.keys() if k != "hydra"]
    return keys + [g for g in groups() if "/" not in g and g not in keys] if not path else keys


def _composition_error(err: Exception, parsed, compose, file_value=lambda source, key: None) -> ConfigError:
    """Hydra's composition error as one paragraph: the override (or file) at fault and, for a key that does not
    exist, the closest one (``compose(overrides)`` composes the rest, to list the keys there are;
    ``file_value(source, key)`` reads what a config file sets)."""
    text = str(err).strip()
    cause = err.__cause__ or err.__context__
    full_key = getattr(cause, "full_key", None) or None
    in_file = re.match(r"In '([^']+)'", text)
    detail = f"set in {in_file.group(1)}.yaml" if in_file else ""
    o = None if in_file and full_key else _override_for(text, full_key, parsed)
    if o is not None:
        key, value = o.key_or_group, o.get_value_element_as_str() if o.is_sweep_override() else o.value()
    elif full_key:
        key, value = full_key, file_value(in_file.group(1), full_key) if in_file else None
    else:  # about the config files, not one override
        key, value = "config", re.sub(r"^In '?([^':]+)'?:.*", r"\1", text.splitlines()[0]) if text.startswith("In ") else None
    if "appears more than once in the final defaults list" in text and o is not None:
        return ConfigError(o.input_line.split("=", 1)[0], value, f"{key}={value} without the '+': the config already "
                           f"chooses a {key} ('+' would add a second one)")
    gone = re.search(r"'([^']+)' does not exist", text)
    if gone and cause is None:
        full_key, cause_name = gone.group(1), "ConfigKeyError"
    else:
        cause_name = type(cause).__name__
    if isinstance(err, MissingConfigException) and getattr(err, "options", None) is not None:
        missing = (getattr(err, "missing_cfg_file", None) or "").rsplit("/", 1)[-1] or value
        return ConfigError(key, missing, f"one of {', '.join(err.options)}{closest(str(missing), err.options)}")
    message = ((str(cause) if cause is not None else "").strip().splitlines() or text.splitlines())[0]
    if cause_name in ("ConfigKeyError", "ConfigAttributeError") and full_key:
        found = re.search(r"Key '([^']+)'", message)
        missing = found.group(1) if found else full_key.rsplit(".", 1)[-1]
        parent = full_key[: -len(missing) - 1] if full_key.endswith("." + missing) else ""
        if missing == "_target_":  # a typed node has no such key: what matters is that configs never name code
            return ConfigError(full_key, value if o is not None else file_value(in_file.group(1), full_key) if in_file
                               else None, _target_accepted(full_key), detail=detail)
        source_group = in_file.group(1).rsplit("/", 1)[0] if in_file else None
        rest = [p.input_line for p in parsed if p is not o and p.key_or_group != source_group]
        keys: list[str] = []
        for attempt in (rest, [line for line in rest if "." not in line.split("=", 1)[0]], []):
            try:
                keys = _keys_at(compose(attempt), parent)
                break
            except Exception:  # another mistake among the rest: no list of keys to offer
                continue
        where = f"a key of {parent}" if parent else "a top-level key or config group"
        listed = f"; accepted: {', '.join(keys)}{MORE_KEYS.get(parent, '')}" if keys else ""
        return ConfigError(key, value, f"{where}{closest(missing, keys)}{listed}", detail=detail)
    if cause_name == "ValidationError":
        return ConfigError(full_key or key, value, f"a value of the key's type: {message}", detail=detail)
    flat = "; ".join(line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line)
    return ConfigError(key, value, f"a config Hydra can compose: {flat}")


def compose_and_check(args: list[str], tasks=None, app_file: str | None = None) -> list[DictConfig]:
    """Compose ``args`` as ``hydra.main`` is about to (every swept group option of a multirun once) and check each
    config; returns them. Raises ConfigError."""
    ns = _parse_args(args)
    if any(getattr(ns, flag, None) for flag in _NO_RUN_FLAGS):
        return []
    composer = _Composer(ns, app_file)
    parsed = _parsed(ns.overrides)
    multirun = ns.multirun or any(o.is_sweep_override() for o in parsed)
    configs = []
    for variant in _group_sweep_variants(parsed, composer) if multirun else [[o.input_line for o in parsed]]:
        try:
            cfg = composer(variant, multirun)
        except (HydraException, OmegaConfBaseException) as err:
            raise _composition_error(err, parsed, lambda o: composer(o, multirun), composer.file_value) from err
        check_composed(cfg, tasks)
        if not ns.cfg:  # --cfg prints the config: no run directory, no cache
            _check_output_folders(cfg, multirun)
            _check_run_dir_unused(cfg, multirun)
        configs.append(cfg)
    return configs


def precheck_or_exit(tasks, args: list[str] | None = None, app_file: str | None = None) -> None:
    """Check the command line (``sys.argv`` unless ``args``) and the config it composes against the config tree and
    ``tasks``; a mistake is one paragraph on stderr and exit status 2. ``app_file``: where the Hydra app is defined
    (a relative ``--config-path`` is relative to it, as for ``hydra.main``)."""
    args = sys.argv[1:] if args is None else list(args)
    try:
        ns = _parse_args(args)
        elsewhere = ns.config_dir or ns.config_path or any(o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath"
                                                           for o in ns.overrides)
        check_overrides(ns.overrides, tasks=tasks, check_options=not elsewhere)
        compose_and_check(args, tasks, app_file)
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
