"""task=export: a checkpoint as ``model.safetensors`` + ``hydraformer.json`` (model config and tokenizer)."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import export_model
from ..errors import ConfigError


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint path: python run.py task=export checkpoint=PATH")
    dest = export_model(cfg.checkpoint, out_dir)
    print(f"exported to {dest} (model.safetensors + hydraformer.json)")
    return 0
