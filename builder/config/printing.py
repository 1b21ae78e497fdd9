"""The resolved config, shown as a tree at the start of every task and kept in the run directory.

``show_config(cfg, out_dir, overrides)`` (called by ``builder.tasks.run_task``, on rank zero only):

* prints the config as a rich tree on stderr (stdout stays the task's own output: ``task=sample`` text);
* writes ``<run dir>/config_tree.txt`` (the same tree, plain text) and ``<run dir>/config.yaml`` (the
  config with every interpolation resolved), both headed by the command-line overrides.

Hydra keeps its own copies beside them: ``.hydra/config.yaml`` (unresolved), ``.hydra/overrides.yaml``
and ``.hydra/hydra.yaml``.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.tree import Tree

from ..files import atomic_write

# the files show_config writes (a failed run that wrote nothing else leaves no directory: builder.tasks.discard_if_empty)
WRITTEN = ("config.yaml", "config_tree.txt")
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


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


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    return escape(json.dumps(value) if isinstance(value, (list, dict)) else str(value))


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


def show_config(cfg: DictConfig, out_dir: str | os.PathLike | None = None, overrides: list[str] | None = None,
                *, print_tree: bool = True) -> None:
    """Print the resolved config as a tree (stderr) and save ``config.yaml`` + ``config_tree.txt`` in ``out_dir``.

    Does nothing on a non-zero rank. Never raises: a config that cannot be shown is not a reason to stop.
    """
    if not is_rank_zero():
        return
    try:
        config, note = resolved(cfg)
        overrides = list(overrides or [])
        tree = config_tree(config)
        if print_tree:
            Console(stderr=True, soft_wrap=False).print(tree)
        if out_dir is not None:
            out = Path(out_dir)
            header = _header(overrides, note)
            atomic_write(out / "config.yaml", header + OmegaConf.to_yaml(OmegaConf.create(config)))
            atomic_write(out / "config_tree.txt", header + render_text(tree))
    except Exception as err:  # pragma: no cover - defensive: showing the config must never end a run
        print(f"(could not show the config: {err})", file=sys.stderr)
