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
class TrainConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    total_steps: int | None = None  # length of the cosine schedule; None: trainer.max_steps
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    fused_optimizer: bool = True  # fused AdamW (CPU and CUDA); false: foreach
    compile: bool = False  # torch.compile the model
    checkpoint_every_n_steps: int = 500
    peak_flops: float | None = None  # MFU denominator; None: data sheet (GPU) or a matmul probe (CPU)
    throughput_window: int = 10  # batches per perf/tokens_per_s measurement
    skip_nonfinite: bool = False  # skip (and count) batches whose loss is NaN/inf instead of stopping
    sample_prompt: str = "The "
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    sample_top_k: int | None = 40
    probe_text: str | None = "a fluffy blue creature roamed the verdant forest"  # patterns drawn at every validation


@dataclass
class Config:
    task: str = "train"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING
    trainer: Any = MISSING
    logger: Any = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    # task=report: several presets side by side (names or globs such as gpt3_*)
    models: list[str] | None = None
    # task=train: resume from a checkpoint path, or "last" for the newest last.ckpt
    ckpt_path: str | None = None
    # task=sample / task=export
    checkpoint: str | None = None
    prompt: str = "The "
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 40
    # task=attend
    text: str = "a fluffy blue creature roamed the verdant forest"
    layers: list[int] | None = None
    heads: list[int] | None = None

    # --- sweeps (builder/compare.py) --------------------------------------------------------------
    # task=compare: the sweep directory to compare (multirun/<date>/<time>), or `last`
    sweep_dir: str | None = None


_registered = False


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="model", name="schema", node=ModelConfig)
    _registered = True
