"""Compose the same config ``run.py`` composes, from Python (notebooks, scripts, tests).

The config tree is the ``conf`` package: found through importlib.resources, so an installed wheel
composes exactly like a source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from .schema import register_schemas

CONF_DIR = Path(str(files("conf")))


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """``builder.compose(["model=gpt3_175b"])`` → the composed DictConfig.

    Inside a running Hydra app (``run.py``) the app's own search path is reused.
    """
    register_schemas()
    overrides = list(overrides or [])
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)
