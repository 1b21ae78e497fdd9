"""The config of a run: a short summary on stderr once the task has checked its inputs, every key in the run directory.

``builder.tasks.run_task`` holds a :class:`ConfigDisplay` while a task runs; the task calls
:func:`inputs_checked` once everything it can refuse is refused (``task=sample``: after loading the checkpoint and
checking the prompt), passing the model it really uses when that is not the composed ``model`` (a checkpoint's).
Then, on rank zero only:

* stderr gets the summary: the task, the group choices, and the keys that differ from the defaults of those
  choices (the schema's dataclasses and the chosen option files) — a dozen lines, not the whole tree;
* ``<run dir>/config.yaml`` (every interpolation resolved) and ``<run dir>/config_tree.txt`` (the whole config as
  a tree) are written, both headed by the command-line overrides. A task that reads its model from a checkpoint
  gets that model's config under ``model`` (or no ``model`` at all when it never said which): the composed one is
  not the model used.

A task that fails before :func:`inputs_checked` prints nothing but its error. Hydra keeps its own copies beside
the files: ``.hydra/config.yaml`` (unresolved), ``.hydra/overrides.yaml`` and ``.hydra/hydra.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.tree import Tree

from ..files import atomic_write
from .compose import CONF_DIR, declared_option
from .schema import CALLBACK_SCHEMAS, Config, DataConfig, ModelConfig, TrainConfig, TrainerConfig

# the files show_config writes (a failed run that wrote nothing else leaves no directory: builder.tasks.discard_if_empty)
WRITTEN = ("config.yaml", "config_tree.txt")
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
# sections only task=train reads: in the summary of another task only when something in them was changed
TRAIN_ONLY = ("data", "trainer", "logger", "callbacks", "paths", "train")
MODEL_KINDS = ("embedding", "attention", "mask", "mlp", "norm")
MODEL_SHAPE = ("d_model", "n_layers", "n_heads", "d_head", "vocab_size", "context_length")


def is_rank_zero() -> bool:
    """Rank zero of a distributed job (torchrun, SLURM, Lightning's launcher), or not distributed at all."""
    for key in _RANK_VARS:
        try:
            if int(os.environ.get(key) or 0) != 0:
                return False
        except ValueError:
            continue
    return True


def resolved(cfg: DictConfig) -> tuple[dict, str | None]:
    """The config as plain containers with interpolations resolved; if one cannot be, unresolved and why."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), None
    except Exception as err:  # an interpolation that cannot be resolved here: show the config as written
        return OmegaConf.to_container(cfg, resolve=False), f"interpolations left unresolved: {err}"


def literal(node: Any) -> Any:
    """A resolved config (plain containers) as YAML that OmegaConf reads back the same: each ``${`` left in a string
    is text (a value given as ``\\${``), escaped again."""
    if isinstance(node, dict):
        return {k: literal(v) for k, v in node.items()}
    if isinstance(node, list):
        return [literal(v) for v in node]
    return node.replace("${", "\\${") if isinstance(node, str) else node


def config_tree(config: dict, title: str = "config"):
    """A rich Tree: one branch per top-level section (its YAML), one leaf per top-level value."""
    tree = Tree(f"[bold]{title}[/bold]", guide_style="dim")
    for key, value in config.items():
        if isinstance(value, dict) and value:
            branch = tree.add(f"[bold cyan]{key}[/bold cyan]")
            branch.add(Syntax(OmegaConf.to_yaml(OmegaConf.create(value)).rstrip(), "yaml", theme="ansi_dark",
                              background_color="default"))
        else:
            tree.add(f"[cyan]{key}[/cyan]: {_scalar(value)}")
    return tree


def _text(value: Any) -> str:
    """A value as YAML would show it (null, true; a string with edge spaces quoted)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (list, dict)) or (isinstance(value, str) and value.strip() != value or value == ""):
        return json.dumps(value)
    return str(value)


def _scalar(value: Any) -> str:
    return escape(_text(value))


def _header(overrides: list[str], note: str | None) -> str:
    lines = ["# resolved config of this run (Hydra's unresolved copy: .hydra/config.yaml)",
             "# overrides: " + (" ".join(overrides) if overrides else "(none)")]
    if note:
        lines.append(f"# {note}")
    return "\n".join(lines) + "\n"


def render_text(tree, width: int = 110) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, soft_wrap=False).print(tree)
    return buf.getvalue()


def _with_model(config: dict, model: dict | None, source: str | None) -> tuple[dict, str | None]:
    """``config`` with ``model`` replaced by the model a task really uses, or without it when that is unknown."""
    config = dict(config)
    if model is not None:
        config["model"] = model
        return config, f"model: the one read from {source}, not the composed model section" if source else None
    config.pop("model", None)
    return config, "model: not shown, this task does not build the composed model"


def save_config(cfg: DictConfig, out_dir, overrides: list[str] | None = None, *, model: dict | None = None,
                model_source: str | None = None, model_used: bool = True) -> None:
    """``config.yaml`` (resolved) and ``config_tree.txt`` (the whole tree) in ``out_dir``, headed by the overrides.

    ``model_used=False``: the task's model is ``model`` (from ``model_source``), or none is shown. With
    ``model_used`` and ``model`` given, ``model`` is the composed model as the task completed it (task=train sets
    ``vocab_size`` to the tokenizer's): the saved file describes the model trained."""
    config, note = resolved(cfg)
    text_only = note is None  # resolved: a '${' left in a value is text, and stays text in the file
    if not model_used:
        config, model_note = _with_model(config, model, model_source)
        note = "; ".join(n for n in (note, model_note) if n)
    elif model is not None:
        config = {**config, "model": model}
    out = Path(out_dir)
    header = _header(list(overrides or []), note)
    atomic_write(out / "config.yaml", header + OmegaConf.to_yaml(OmegaConf.create(literal(config) if text_only
                                                                                  else config)))
    atomic_write(out / "config_tree.txt", header + render_text(config_tree(config)))


def show_config(cfg: DictConfig, out_dir: str | os.PathLike | None = None, overrides: list[str] | None = None,
                *, print_tree: bool = True, choices: dict | None = None, model: dict | None = None,
                model_source: str | None = None, model_used: bool = True) -> None:
    """Print the summary (stderr) and save ``config.yaml`` + ``config_tree.txt`` in ``out_dir``.

    Does nothing on a non-zero rank. Never raises: a config that cannot be shown is not a reason to stop.
    """
    if not is_rank_zero():
        return
    try:
        if print_tree:
            where = Path(out_dir) / "config.yaml" if out_dir is not None else None
            tree = summary_tree(cfg, choices or {}, model=model, model_source=model_source, model_used=model_used,
                                full_config=where)
            console = Console(stderr=True)
            if not console.is_terminal:  # a log file or pipe: one line per leaf, a path never cut in two
                console = Console(stderr=True, width=1000)
            console.print(tree)
        if out_dir is not None:
            save_config(cfg, out_dir, overrides, model=model, model_source=model_source, model_used=model_used)
    except Exception as err:  # pragma: no cover - defensive: showing the config must never end a run
        print(f"(could not show the config: {err})", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# the summary: choices and what differs from their defaults
# --------------------------------------------------------------------------------------------------


def _dataclass_defaults(cls) -> dict:
    """A schema dataclass's defaults as YAML would write them (``MISSING`` ones left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if value != MISSING and not dataclasses.is_dataclass(value):
            out[f.name] = value
    return out


def _option_file(group: str, name) -> dict:
    """The keys an option file of ``conf/`` sets (its ``defaults`` list left out); {} when it is not ours."""
    if not isinstance(name, str):
        return {}
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        return {}
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {k: v for k, v in (loaded or {}).items() if k != "defaults"} if isinstance(loaded, dict) else {}


def _option_defaults(group: str, name) -> list:
    path = CONF_DIR / group / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        return []
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return list(loaded.get("defaults") or []) if isinstance(loaded, dict) else []


def _listed(value) -> list[str]:
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        return [v.strip() for v in value[1:-1].split(",") if v.strip()]
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


def defaults_of(choices: dict) -> dict:
    """What the config would hold with these group choices and nothing else: the schema's defaults under the
    chosen option files (our ``conf/`` only; a section from elsewhere gets no defaults, so all of it shows)."""
    base: dict[str, Any] = _dataclass_defaults(Config)
    base["train"] = _dataclass_defaults(TrainConfig)
    base["data"] = {**_dataclass_defaults(DataConfig), **_option_file("data", choices.get("data"))}
    model = {**_dataclass_defaults(ModelConfig), **_option_file("model", choices.get("model"))}
    for kind in MODEL_KINDS:
        if choices.get(f"model/{kind}"):
            name = choices[f"model/{kind}"]
            model[kind] = declared_option(kind, name) or _option_file(f"model/{kind}", name)
    base["model"] = model
    base["trainer"] = {**_dataclass_defaults(TrainerConfig), **_option_file("trainer", choices.get("trainer"))}
    base["paths"] = _option_file("paths", choices.get("paths"))
    base["logger"] = {}
    for name in _listed(choices.get("logger")):
        base["logger"].update(_option_file("logger", name))
    callbacks = {}
    for entry in _option_defaults("callbacks", choices.get("callbacks")):
        text = str(entry)
        if text.startswith("schema/") and "@" in text:  # schema/<name>@<name>: that callback with its defaults
            name = text.split("@", 1)[1]
            if name in CALLBACK_SCHEMAS:
                callbacks[name] = _dataclass_defaults(CALLBACK_SCHEMAS[name])
    for name, settings in _option_file("callbacks", choices.get("callbacks")).items():
        callbacks[name] = {**callbacks.get(name, {}), **settings} if isinstance(settings, dict) else settings
    base["callbacks"] = callbacks
    return base


def differences(config: dict, base: dict, path: str = "") -> dict:
    """The keys of ``config`` whose value is not the one in ``base`` (dotted below the top level), with the value."""
    out = {}
    for key, value in config.items():
        full = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out.update(differences(value, base[key], full))
        elif key not in base or base[key] != value:
            out[full] = value
    if path:
        for key in base:
            if key not in config:
                out[f"{path}.{key}"] = "(removed)"
    return out


def _choices(choices: dict) -> dict:
    return {k: v for k, v in choices.items() if v is not None and not k.startswith("hydra/") and "schema" not in k}


def _model_line(model: dict) -> str:
    parts = []
    for kind in MODEL_KINDS:
        comp = model.get(kind)
        if isinstance(comp, dict):
            args = ", ".join(f"{k}={_text(v)}" for k, v in comp.items() if k != "name")
            parts.append(f"{kind}: {comp.get('name')}" + (f"({args})" if args else ""))
    return " · ".join(parts)


def _values_line(values: dict) -> str:
    return " · ".join(f"{k}: {_text(v)}" for k, v in values.items())


def summary_tree(cfg: DictConfig, choices: dict, *, model: dict | None = None, model_source: str | None = None,
                 model_used: bool = True, full_config: Path | None = None):
    """The task, the group choices and the keys that differ from their defaults, as a rich Tree."""
    unresolved = OmegaConf.to_container(cfg, resolve=False)
    config, _ = resolved(cfg)
    changed = differences(unresolved, defaults_of(choices))
    chosen = _choices(choices)
    if "logger" not in chosen and isinstance(config.get("logger"), dict):  # logger=[a,b]: Hydra records no choice
        chosen["logger"] = ",".join(config["logger"]) or None

    def value_of(dotted: str):
        node = config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return changed[dotted]
            node = node[part]
        return node

    task = config.get("task")
    tree = Tree("[bold]config[/bold]: the choices, and the keys that differ from their defaults", guide_style="dim")
    tree.add(f"[cyan]task[/cyan]: {_scalar(task)}")
    extra = [f"{k}={v}" for k, v in chosen.items() if k in ("experiment", "debug", "hparams_search")]
    if extra:
        tree.add(f"[cyan]with[/cyan]: {escape(' '.join(extra))}")
    for key in [k for k in changed if "." not in k and k not in ("task", "hydra")]:
        if not isinstance(config.get(key), dict):
            tree.add(f"[cyan]{escape(key)}[/cyan]: {_scalar(value_of(key))}")
    if not model_used and model is not None:
        branch = tree.add(f"[bold cyan]model[/bold cyan]: from {escape(str(model_source))}")
        branch.add(escape(_values_line({k: model.get(k) for k in MODEL_SHAPE if k in model})))
        branch.add(escape(_model_line(model)))
    for section in ("model", *TRAIN_ONLY):
        if section == "model" and not model_used:
            continue
        inside = {k[len(section) + 1:]: value_of(k) for k in changed if k.startswith(section + ".")}
        if section in TRAIN_ONLY and task != "train" and not inside:
            continue
        label = f"[bold cyan]{section}[/bold cyan]"
        if chosen.get(section):
            label += f": {escape(str(chosen[section]))}"
        if not inside and section not in chosen:
            continue
        branch = tree.add(label)
        if section == "model":
            kinds = {k: chosen[f"model/{k}"] for k in MODEL_KINDS if chosen.get(f"model/{k}")}
            if kinds:
                branch.add(escape(" · ".join(f"{k}: {v}" for k, v in kinds.items())))
        if inside:
            branch.add(escape(_values_line(inside)))
    if full_config is not None:
        tree.add(f"[dim]every key: {escape(str(full_config))}[/dim]")
    return tree


# --------------------------------------------------------------------------------------------------
# shown once the task has checked its inputs
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ConfigDisplay:
    """The config of the running task, shown once (:meth:`show`) and saved in the run directory."""

    cfg: DictConfig
    out_dir: Path | None
    overrides: list[str]
    choices: dict
    model_used: bool = True  # False: the task's model is not the composed one (a checkpoint's; or none at all)
    shown: bool = False

    def show(self, model: dict | None = None, source: str | None = None, *, print_tree: bool = True) -> None:
        if self.shown:
            return
        self.shown = True
        if model is not None and not isinstance(model, dict):
            model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else None
        show_config(self.cfg, self.out_dir, self.overrides, print_tree=print_tree, choices=self.choices, model=model,
                    model_source=source, model_used=self.model_used)


_current: ContextVar[ConfigDisplay | None] = ContextVar("hydraformer_config_display", default=None)


@contextlib.contextmanager
def displaying(display: ConfigDisplay) -> Iterator[ConfigDisplay]:
    """While the block runs, :func:`inputs_checked` shows ``display``."""
    token = _current.set(display)
    try:
        yield display
    finally:
        _current.reset(token)


def inputs_checked(model: dict | None = None, source: str | None = None) -> None:
    """A task says: everything I can refuse is refused. The run's config is printed now (once) and saved.

    ``model``/``source``: the model config the task really uses and where it came from (a checkpoint), when the
    task does not build the composed ``model``. Outside ``run_task`` (a notebook, a test) it does nothing."""
    display = _current.get()
    if display is not None:
        display.show(model, source)
