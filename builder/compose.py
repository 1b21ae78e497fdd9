"""Compose the same config ``run.py`` composes, from Python (notebooks, scripts, tests)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .schema import register_schemas

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """``builder.compose(["model=gpt3_175b"])`` → the composed DictConfig.

    Inside a running Hydra app (``run.py``) the app's own search path is reused.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    overrides = list(overrides or [])
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)
