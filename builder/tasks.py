"""What ``run.py`` dispatches to: one function per ``task=``, and the error handling all share."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from components.registry import RegistryError, closest

from .errors import ConfigError, DataError, NonFiniteLossError

# errors whose message is the whole story: shown as one paragraph, no traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, RegistryError, DataError, NonFiniteLossError)


def _report(cfg, out_dir: Path, choices: dict) -> int:
    from .report import run_report

    return run_report(cfg, out_dir, model_name=choices.get("model"))


def _train(cfg, out_dir: Path, choices: dict) -> int:
    from .train import run_train

    return run_train(cfg, out_dir, model_name=choices.get("model"))


def _sample(cfg, out_dir: Path, choices: dict) -> int:
    from .sample import run_sample

    return run_sample(cfg, out_dir)


def _attend(cfg, out_dir: Path, choices: dict) -> int:
    from .attend import run_attend

    return run_attend(cfg, out_dir)


def _heads(cfg, out_dir: Path, choices: dict) -> int:
    from .heads import run_heads

    return run_heads(cfg, out_dir)


def _export(cfg, out_dir: Path, choices: dict) -> int:
    from .sample import run_export

    return run_export(cfg, out_dir)


TASKS = {"report": _report, "train": _train, "sample": _sample, "export": _export, "attend": _attend, "heads": _heads}


def _discard_if_empty(out_dir: Path) -> None:
    """A run that failed before writing anything leaves no directory behind (only Hydra's own files)."""
    if not out_dir.is_dir():
        return
    ours = [p for p in out_dir.iterdir() if p.name != ".hydra" and not p.name.endswith(".log")]
    if not ours:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_task(cfg) -> int:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        if cfg.task not in TASKS:
            raise ConfigError("task", cfg.task, f"one of {', '.join(sorted(TASKS))}{closest(cfg.task, TASKS)}")
        code = TASKS[cfg.task](cfg, out_dir, dict(hc.runtime.choices))
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        _discard_if_empty(out_dir)
        sys.exit(2)
    if code:
        sys.exit(code)
    return 0
