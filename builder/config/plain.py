"""Configs as plain containers: what checkpoints, JSON files, loggers and ``build_model`` receive."""

from __future__ import annotations

import sys
from collections.abc import Mapping


def to_plain(obj, resolve: bool = True):
    """Plain dicts and lists (keys as strings, interpolations resolved) from a DictConfig, a ListConfig,
    a mapping holding them, or anything else (returned as it is): nothing that needs OmegaConf to read back.

    OmegaConf is looked up, not imported: a DictConfig exists only if something imported it, so loading a
    model from plain dicts never pays for it.
    """
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and isinstance(obj, (omegaconf.DictConfig, omegaconf.ListConfig)):
        return omegaconf.OmegaConf.to_container(obj, resolve=resolve)
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, resolve) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, resolve) for v in obj]
    return obj
