"""Checks on the command line made before Hydra composes, so a mistyped choice gets the closest match."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from components.registry import closest

from ..errors import ConfigError
from .compose import CONF_DIR


def _options(group_dir: Path) -> list[str]:
    return sorted(p.stem for p in group_dir.glob("*.yaml"))


def _values(value: str) -> list[str]:
    value = value.strip()
    if "(" in value or "$" in value:  # sweep functions (range, choice, glob) and interpolations: Hydra's business
        return []
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [v.strip().strip("'\"") for v in value.split(",") if v.strip() and v.strip() != "null"]


def check_overrides(args: list[str], conf_dir: Path = CONF_DIR, tasks=None) -> None:
    """Raise ConfigError for an unknown config group or group option, or an unknown task."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~").split("@", 1)[0]
        if key.startswith("hydra"):
            continue
        if key == "task" and tasks is not None:
            for v in _values(value):
                if v not in tasks:
                    raise ConfigError("task", v, f"one of {', '.join(sorted(tasks))}{closest(v, tasks)}")
            continue
        group_dir = conf_dir / key
        if "/" in key and not group_dir.is_dir():
            parent = group_dir.parent
            kinds = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise ConfigError(key, value, f"a config group{closest(group_dir.name, kinds)}; groups under "
                              f"{parent.relative_to(conf_dir)}/: {', '.join(kinds)}")
        if not group_dir.is_dir():
            continue
        options = [o for o in _options(group_dir) if not o.startswith("_")]
        for v in _values(value):
            if v not in options and v != "schema":
                raise ConfigError(key, v, f"one of {', '.join(options)}{closest(v, options)}")


def precheck_or_exit(tasks, args: list[str] | None = None) -> None:
    """Check the command line (``sys.argv`` unless ``args``) against the config tree and ``tasks``; a mistake
    is one paragraph on stderr and exit status 2."""
    try:
        check_overrides(sys.argv[1:] if args is None else args, tasks=tasks)
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
