"""The command line, checked before ``hydra.main`` runs anything, and Hydra's composition errors as one paragraph.

``builder.tasks.main`` calls :func:`check_command_line` first:

1. the flags, read as ``hydra.main`` reads them (builder/config/hydra_adapter.py); ``--experimental-rerun`` is
   refused (it unpickles a file: a config never runs code);
2. :func:`check_overrides`: every group option and task on the command line exists (else the closest match), and
   no override names code to run (a ``_target_``, a ``hydra.callbacks`` entry, a logging class);
3. :func:`check_config_folders`: the config folders the command line adds (``--config-dir``, ``--config-path``,
   ``hydra.searchpath``) hold no file that sets ``hydra.callbacks`` or Hydra's logging to code — Hydra configures
   its logging while it composes and builds its callbacks right after, before anything of ours sees the composed
   config.

Then ``hydra.main`` composes, once; builder/config/preflight.py checks the composed config before Hydra writes
anything. When Hydra cannot compose, :func:`composition_error` turns its error into one paragraph: the override
(or file) at fault and, for a key that does not exist, the keys there are (from the declaration of a typed node)
with the closest one. Each mistake: one paragraph on stderr and exit status 2 (``HYDRA_FULL_ERROR=1``: the
traceback instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import importlib.util
import os
import re
import textwrap
import warnings
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from components.registry import closest

from ..errors import ConfigError
from .compose import CONF_DIR
from .hydra_adapter import CORE_PLUGINS, parse_command_line
from .keys import help_lines
from .schema import TRAINER_SET_BY_US, register_schemas

# The Hydra callbacks a config may name: ours, by key, with the one class each builds (conf/config.yaml).
HYDRA_CALLBACKS = {"preflight": "builder.config.preflight.Preflight",
                   "sweep_comparison": "builder.tasks.compare.SweepComparison"}
# ours that stay: the preflight is where the composed config is checked
KEPT_CALLBACKS = ("preflight",)
# Elsewhere under ``hydra``: what Hydra and its installed plugins ship (launchers, sweepers, Optuna's samplers).
HYDRA_TARGETS = (CORE_PLUGINS, "hydra_plugins.", "optuna.samplers.", "optuna.pruners.")
# logging.config.dictConfig calls a handler's/formatter's ``class`` and any ``()`` factory: the standard library's only
LOGGING_CLASSES = ("logging.",)
LOGGING_ACCEPTED = ("configs never name code to run: logging handlers and formatters of the standard library "
                    "(class: logging.StreamHandler ...), no '()' factories")
LOGGING_SECTIONS = ("hydra_logging", "job_logging")
# a file system that refuses a write: what each errno means, for one paragraph naming the setting and the path
FILE_SYSTEM_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                      errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file",
                      errno.EEXIST: "a file is in the way of a directory", errno.EFBIG: "file too large"}
NO_CODE = "configs never name code to run"
# sections whose keys are another library's arguments: what the list of accepted keys leaves out
MORE_KEYS = {"trainer": f" (pytorch_lightning.Trainer's arguments, but those hydraformer sets itself: "
                        f"{', '.join(TRAINER_SET_BY_US)})"}


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
    ``hydra.callbacks`` other than ours, a logging handler's class or factory. Switching something off names no
    code, but the preflight stays."""
    parts = key.split(".")
    if parts[:2] == ["hydra", "callbacks"] and (len(parts) == 2 or parts[2] in KEPT_CALLBACKS):
        return ConfigError(key, value or None, f"hydraformer's own: hydra.callbacks.{KEPT_CALLBACKS[0]} checks the "
                           "composed config before Hydra writes anything, and stays (remove this override)")
    if removing:
        return None
    if parts[:2] == ["hydra", "callbacks"]:
        if len(parts) > 2 and parts[2] in HYDRA_CALLBACKS and parts[3:] == ["plot"]:
            return None  # our sweep comparison's one setting
        return ConfigError(key, value, f"{NO_CODE}: hydra.callbacks holds only hydraformer's own "
                           f"({', '.join(HYDRA_CALLBACKS)}); remove this override")
    if parts[-1] == "_target_":
        return ConfigError(key, value, target_accepted(key))
    if set(parts) & set(LOGGING_SECTIONS) and logging_names_code(parts[-1], value.strip("'\"")):
        return ConfigError(key, value, LOGGING_ACCEPTED)
    return None


def logging_names_code(last_key: str, value) -> bool:
    """Whether a logging config's entry ``last_key: value`` makes ``logging.config.dictConfig`` call code other than
    the standard library's: a ``()`` factory, or a handler's or formatter's ``class`` outside ``logging``."""
    return last_key == "()" or (last_key == "class" and not str(value).startswith(LOGGING_CLASSES))


def target_accepted(key: str) -> str:
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


def overrides_as_typed(node) -> list[str]:
    """Hydra's record of the command line's overrides (``hydra.overrides.task`` or ``.hydra``) as they were typed.

    Each is a string OmegaConf reads as an interpolation when an item is read from the list: ``text=a ${oops}``
    raised InterpolationKeyError, an escaped ``text=\\${x}`` lost its backslash (a DDP child process was started
    with the unescaped one), ``${now:...}`` took another value. Read without resolving, they are the command line."""
    return [str(o) for o in OmegaConf.to_container(node, resolve=False)]


def _parsed(overrides: list[str]):
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed.extend(parser.parse_overrides([line]))
        except Exception as err:  # OverrideParseException: name the override, not only the character
            key, _, value = line.partition("=")
            literal = "; for a literal '${', write '\\${' (in single quotes)" if "${" in value else ""
            raise ConfigError(key, value, "an override Hydra can parse: key=value, a quoted string, a list [a,b], "
                              "a sweep a,b (https://hydra.cc/docs/advanced/override_grammar/basic/)" + literal,
                              detail=parse_reason(err)) from err
    return parsed


def sweep_refusal(o) -> ConfigError:
    """An override Hydra reads as a sweep (a bare comma: ``text=a , b``; ``range(..)``, ``choice(..)``, ``glob(..)``)
    in a run of one job: what to write for one value, and for a sweep."""
    key, _, value = o.input_line.partition("=")
    quoted = value.replace('"', '\\"')
    return ConfigError(key, value, f"one value: Hydra reads {value!r} as a sweep over several values (a bare comma, "
                       f"range(..), choice(..) or glob(..) makes one). For one text holding commas, quote the value, e.g. "
                       f"'{key}=\"{quoted}\"' (the single quotes keep the shell from removing the double ones); "
                       f"for a list, {key}=[a,b]; to run one job per value, add -m (--multirun)")


def parse_reason(err: Exception) -> str:
    """The line of Hydra's parse error that says what is wrong (not its "Error parsing override '...'" heading,
    the caret under the input or the link to the grammar), on one line."""
    lines = [line.strip() for line in str(err).strip().splitlines()]
    reasons = [line for line in lines if line and line.strip("^ ") and not line.startswith(("Error parsing override",
                                                                                             "See https://"))]
    return reasons[0] if reasons else (lines[0] if lines and lines[0] else type(err).__name__)


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
    return _with_groups([str(k) for k in node.keys() if k != "hydra"], path)


def _with_groups(keys: list[str], path: str) -> list[str]:
    return keys + [g for g in groups() if "/" not in g and g not in keys] if not path else keys


def _accepted_keys(cause, parent: str, rest: list[str], compose) -> list[str]:
    """The keys there are where a key was not found: the declaration's fields for a typed node (its dataclass is
    the error's ``object_type``), else what composing the rest of the command line gives there."""
    declared = getattr(cause, "object_type", None)
    if dataclasses.is_dataclass(declared):
        return _with_groups([f.name for f in dataclasses.fields(declared)], parent)
    if compose is None:
        return []
    for attempt in (rest, [line for line in rest if "." not in line.split("=", 1)[0]], []):
        try:
            return _keys_at(compose(attempt), parent)
        except Exception:  # another mistake among the rest: no list of keys to offer
            continue
    return []


def composition_error(err: Exception, overrides: list[str], compose=None, file_value=None) -> ConfigError:
    """Hydra's composition error (or any error Hydra raised before a task started) as one paragraph: the override
    (or file) at fault and, for a key that does not exist, the closest one. ``compose(overrides)``, when given,
    composes the rest of the command line to list the keys of an untyped node; ``file_value(source, key)`` reads
    what a config file sets."""
    file_value = file_value or (lambda source, key: None)
    try:
        parsed = _parsed(overrides)
    except ConfigError as unparsable:
        return unparsable
    text = str(err).strip()
    cause = err.__cause__ or err.__context__
    full_key = getattr(cause, "full_key", None) or None
    in_file = re.match(r"In '([^']+)'", text)
    detail = f"set in {in_file.group(1)}.yaml" if in_file else ""
    o = None if in_file and full_key else _override_for(text, full_key, parsed)
    if o is not None and o.is_sweep_override():
        return sweep_refusal(o)
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
                               else None, target_accepted(full_key), detail=detail)
        source_group = in_file.group(1).rsplit("/", 1)[0] if in_file else None
        rest = [p.input_line for p in parsed if p is not o and p.key_or_group != source_group]
        keys = _accepted_keys(cause, parent, rest, compose)
        where = f"a key of {parent}" if parent else "a top-level key or config group"
        listed = f"; accepted: {', '.join(keys)}{MORE_KEYS.get(parent, '')}" if keys else ""
        return ConfigError(key, value, f"{where}{closest(missing, keys)}{listed}", detail=detail)
    if cause_name == "GrammarParseError":  # '${' that starts no interpolation OmegaConf can read
        return ConfigError(full_key or key, value, "a value OmegaConf can read: '${' starts an interpolation "
                           "(${key}, ${resolver:args}); for a literal '${', write '\\${' (on the command "
                           "line in single quotes)", detail=message)
    if cause_name == "ValidationError":
        return ConfigError(full_key or key, value, f"a value of the key's type: {message}", detail=detail)
    flat = "; ".join(line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line)
    return ConfigError(key, value, f"a config Hydra can compose: {flat}")


# --------------------------------------------------------------------------------------------------
# the config folders a command line adds
# --------------------------------------------------------------------------------------------------


def walk(node, path: str = ""):
    """(dotted key, value) of every entry below ``node`` (plain containers), lists included."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        full = f"{path}.{key}" if path else str(key)
        yield full, value
        yield from walk(value, full)


def _file_names_code(data, where: str) -> ConfigError | None:
    """What a config file sets that Hydra would run before the preflight sees the composed config: a callback
    other than ours (or none where the preflight goes), a logging class or factory outside the standard library."""
    for key, value in walk({"": data} if not isinstance(data, dict) else data):
        parts = key.split(".")
        if "callbacks" in parts[:-1] and parts[-1] == "_target_" and value not in HYDRA_CALLBACKS.values():
            return ConfigError(key, value, f"{NO_CODE}: hydra.callbacks holds only hydraformer's own "
                               f"({', '.join(HYDRA_CALLBACKS)})", detail=f"set in {where}")
        if "callbacks" in parts:
            at = parts.index("callbacks")
            below, ours = parts[at + 1:], {"_target_": HYDRA_CALLBACKS[KEPT_CALLBACKS[0]]}
            if (not below and "hydra" in parts[:at] and not value) or (below == list(KEPT_CALLBACKS) and value != ours):
                return ConfigError(key, value, f"hydraformer's own: hydra.callbacks.{KEPT_CALLBACKS[0]} checks the "
                                   "composed config before Hydra writes anything, and stays", detail=f"set in {where}")
        if set(parts) & set(LOGGING_SECTIONS) or where.startswith(tuple(f"hydra/{s}/" for s in LOGGING_SECTIONS)):
            if logging_names_code(parts[-1], value):
                return ConfigError(key, value, LOGGING_ACCEPTED, detail=f"set in {where}")
    return None


def _search_folder(entry: str) -> Path | None:
    """A search-path entry (``file://DIR``, ``pkg://package``, a folder) as a folder; None for ours
    (``pkg://conf``) or one that cannot be found (Hydra reports it)."""
    entry = str(entry).strip()
    if entry.startswith("pkg://"):
        module = entry[len("pkg://"):].strip("/").replace("/", ".")
        if module == "conf":
            return None
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        locations = list(spec.submodule_search_locations or []) if spec else []
        return Path(locations[0]) if locations else None
    return Path(entry[len("file://"):] if entry.startswith("file://") else entry).expanduser().absolute()


def _sets_searchpath(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~") == "hydra.searchpath"


def _searchpath_values(value) -> list[str]:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        return [v.strip().strip("'\"") for v in value.split(",") if v.strip()]
    return [str(v) for v in value] if isinstance(value, list) else []


def check_config_folders(ns: argparse.Namespace, app_dir: Path) -> None:
    """Every YAML file of the config folders the command line adds (``--config-dir``, ``--config-path``,
    ``hydra.searchpath``, and the search paths those files add) is free of what :func:`_file_names_code` refuses:
    Hydra acts on it while composing, before any check of the composed config. Raises ConfigError."""
    entries = []
    if ns.config_dir:
        entries.append(os.path.abspath(ns.config_dir))
    if ns.config_path and ns.config_path != "pkg://conf":
        path = ns.config_path
        entries.append(path if path.startswith("pkg://") or os.path.isabs(path) else str(app_dir / path))
    for line in ns.overrides:
        if _sets_searchpath(line):
            entries += _searchpath_values(line.partition("=")[2])
    seen: set[Path] = set()
    while entries:
        folder = _search_folder(entries.pop(0))
        if folder is None or folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        for path in sorted(folder.rglob("*.y*ml")):
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, UnicodeDecodeError, yaml.YAMLError):  # Hydra reports a file it cannot read
                continue
            if err := _file_names_code(data, path.relative_to(folder).as_posix()):
                raise err
            hydra_node = data.get("hydra") if isinstance(data, dict) else None
            entries += _searchpath_values(hydra_node.get("searchpath") if isinstance(hydra_node, dict) else None)


def check_command_line(args: list[str], tasks=None, app_dir: Path | None = None) -> argparse.Namespace:
    """The command line (``sys.argv[1:]``) before ``hydra.main`` sees it: the module doc's checks 1-3. Returns it
    parsed as Hydra parses it; raises ConfigError. ``app_dir``: the folder of the module defining the Hydra app (a
    relative ``--config-path`` is relative to it)."""
    ns = parse_command_line(args)
    if getattr(ns, "experimental_rerun", None):
        raise ConfigError("--experimental-rerun", ns.experimental_rerun,
                          "nothing: a config never runs code, and Hydra's rerun unpickles the file it is given (a "
                          "pickle can run any code). To run a job again, pass its overrides (its .hydra/overrides.yaml)"
                          " or its folder's config with --config-dir DIR/.hydra --config-name config")
    elsewhere = ns.config_dir or ns.config_path or any(map(_sets_searchpath, ns.overrides))
    check_overrides(ns.overrides, tasks=tasks, check_options=not elsewhere)
    _parsed(ns.overrides)
    check_config_folders(ns, app_dir or Path.cwd())
    return ns


def public_composer(ns: argparse.Namespace):
    """``compose(overrides, with_hydra=False)`` through Hydra's public API: our config tree, plus the command
    line's ``--config-dir`` as a search path — for listing the keys of an untyped node in a refusal (after
    ``hydra.main`` ended) and for checking a command without running it (preflight.check_command)."""
    def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
        extra = [f"hydra.searchpath=[file://{os.path.abspath(ns.config_dir)}]"] if ns.config_dir and not any(
            map(_sets_searchpath, overrides)) else []
        GlobalHydra.instance().clear()
        try:
            with warnings.catch_warnings(), initialize_config_module("conf", version_base="1.3"):
                warnings.simplefilter("ignore")
                return hydra_compose(ns.config_name or "config", list(overrides) + extra, return_hydra_config=with_hydra)
        finally:
            GlobalHydra.instance().clear()

    return compose


def file_reader(ns: argparse.Namespace):
    """``file_value(source, key)``: what the config file ``source`` (``experiment/x``) sets ``key`` to, read from the
    command line's ``--config-dir`` or our config tree; None when it cannot be found."""
    folders = ([Path(os.path.abspath(ns.config_dir))] if ns.config_dir else []) + [CONF_DIR]

    def file_value(source: str, key: str):
        for folder in folders:
            path = folder / f"{source}.yaml"
            if not path.is_file():
                continue
            loaded = OmegaConf.load(path)
            group = source.rsplit("/", 1)[0].replace("/", ".") if "/" in source else ""
            for inner in (key, key[len(group) + 1:] if group and key.startswith(group + ".") else None):
                found = OmegaConf.select(loaded, inner, default=None, throw_on_resolution_failure=False) if inner \
                    else None
                if found is not None:
                    return OmegaConf.to_container(found) if isinstance(found, DictConfig) else found
            return None
        return None

    return file_value
