"""Structured-config schemas, registered in Hydra's ConfigStore.

A preset in ``conf/model/`` starts its defaults list with ``schema``, so a wrong
type (``model.n_layers=abc``) or a missing value fails at composition.
Component groups (``model/attention`` ...) are free-form mappings with a ``name``;
the builder checks them against the registered class's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    d_model: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    d_head: int | None = None  # None: d_model // n_heads
    vocab_size: int = MISSING
    context_length: int = MISSING
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    embedding: Any = MISSING
    attention: Any = MISSING
    mask: Any = MISSING
    mlp: Any = MISSING
    norm: Any = MISSING


@dataclass
class Config:
    task: str = "report"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    # task=report: several presets side by side (names or globs such as gpt3_*)
    models: list[str] | None = None


_registered = False


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="model", name="schema", node=ModelConfig)
    _registered = True
