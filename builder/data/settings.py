"""``data.*`` checked by value alone, before any file is read: TokenDataModule's arguments.

The declaration is :class:`builder.config.schema.DataConfig` (each key's type, range and meaning); this is its
check, Lightning-free, for a datamodule built from Python (the command line checks the whole config once,
builder/config/checks.py, and hands the datamodule the checked object).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config.schema import DataConfig
from ..config.spec import MISSING, check


def check_data_settings(data: Mapping[str, Any]) -> DataConfig:
    """Every ``data.*`` value TokenDataModule takes, checked; the checked settings (``path`` None when unset).
    ConfigError names the key, the value and what is accepted."""
    checked = check(DataConfig, dict(data), "data")
    if checked.path == MISSING:
        checked = dataclasses.replace(checked, path=None)
    return checked
