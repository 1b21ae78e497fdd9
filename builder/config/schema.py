"""Structured-config schemas, registered in Hydra's ConfigStore: the one place each default is written.

``conf/config.yaml`` composes ``schema`` first, so every top-level and ``train.*`` key has its
type and default here (the YAML only picks groups). A preset in ``conf/model/`` and a corpus in
``conf/data/`` start their defaults list with ``schema``, so a wrong type (``model.n_layers=abc``)
or a missing value fails at composition, and each data YAML writes only what differs. Each entry of
``conf/callbacks/default.yaml`` is one of the callback schemas below (``callbacks/schema/<name>``):
its settings and their defaults are here, typed.
Component groups (``model/attention`` ...) are free-form mappings with a ``name``; the builder
checks them against the registered class's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

# the lecture's phrase: drawn at every validation, and what task=attend looks at unless told otherwise
LECTURE_PHRASE = "a fluffy blue creature roamed the verdant forest"


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
    scale_embeddings: bool = False  # token embeddings times sqrt(d_model) (Gemma)
    final_softcap: float | None = None  # logits become cap * tanh(logits / cap) (Gemma 2: 30)
    embedding: Any = MISSING
    attention: Any = MISSING
    mask: Any = MISSING
    mlp: Any = MISSING
    norm: Any = MISSING


@dataclass
class DataConfig:
    """A corpus and how it is cut into windows: TokenDataModule's arguments (builder/data/datamodule.py)."""

    source: str = "embedded"  # embedded | text | adjectives | lecture | tokens
    path: str | None = MISSING  # text: a UTF-8 file or a folder; tokens: train.bin; each preset sets it (null or ???)
    tokenizer: str = "char"  # char | word | byte_bpe | gpt2_bpe
    bpe_vocab_size: int = 1024  # byte_bpe: target vocabulary size (>= 256)
    vocab_file: str | None = None  # gpt2_bpe: local vocab.json
    merges_file: str | None = None  # gpt2_bpe: local merges.txt
    cache_dir: str | None = II("paths.cache_dir")  # conf/paths/default.yaml; null: data/cache.py default_cache_dir()
    context_length: int = II("model.context_length")
    batch_size: int = 16
    val_fraction: float = 0.1  # the last 10% of the token stream is validation
    samples_per_epoch: int = 100_000  # random training windows per epoch
    val_batches: int = 8  # at most val_batches * batch_size fixed validation windows
    num_workers: int | None = None  # null: 4 loader workers with a GPU, none on CPU (the memmap reads are cheap)
    seed: int = II("seed")  # also seeds the generated adjectives sentences
    n_sentences: int = 20_000  # adjectives only: sentences generated (one per line, ~11 words each)
    text_field: str = "text"  # text: the field of .jsonl records / the column of .parquet files read as text
    vocab_size: int | None = None  # tokens: ids in the token file (null: meta.json beside it, else the tokenizer's)
    dtype: str | None = None  # tokens: uint16 | uint32 (null: meta.json's, else uint16 when the vocabulary fits)


@dataclass
class TrainConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    total_steps: int | None = None  # length of the cosine schedule; None: trainer.max_steps
    weight_decay: float = 0.1  # not applied to biases, norms and embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    fused_optimizer: bool = True  # fused AdamW (CPU and CUDA); false: foreach
    compile: bool = False  # torch.compile the model
    skip_nonfinite: bool = False  # true: skip and count batches with a NaN/inf loss (single process); false: stop
    # how often the training loss is checked for NaN/inf, in steps. null: every step on a CPU (free), every
    # trainer.log_every_n_steps on a GPU (each check waits for the GPU: a host sync). Checkpoints, validation and
    # the run's end check first, so no checkpoint holds weights a NaN/inf loss has stepped
    finite_check_every: int | None = None
    # refuse a run whose memory estimate (weights, gradients, AdamW, activations: builder/memory.py) clearly exceeds
    # the device's free memory, before anything is allocated; false: skip the check
    check_memory: bool = True


# --- the ``callbacks`` group (conf/callbacks/): one entry per callback of task=train, built by
# builder/training/callbacks.py. ``~callbacks.NAME`` or ``callbacks.NAME=null`` switches one off.


@dataclass
class ModelCheckpointConfig:
    """``<run dir>/checkpoints/``: ``best-<step>.ckpt`` (lowest val/loss), ``last.ckpt`` and ``step-<N>.ckpt``."""

    every_n_train_steps: int = 500  # a step-<N>.ckpt every N optimizer steps, all kept (what a SIGKILL can lose)


@dataclass
class TextSamplesConfig:
    """At each validation the prompt is continued (fixed seed), logged and appended to ``<run dir>/samples.txt``."""

    prompt: str = "The "
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 40  # None: sample from the whole vocabulary


@dataclass
class AttentionProbeConfig:
    """At each validation every head's pattern on ``text``: ``<run dir>/attention/patterns_step<N>.png`` and the loggers."""

    text: str = LECTURE_PHRASE


@dataclass
class ThroughputConfig:
    """``perf/tokens_per_s`` and ``perf/mfu`` (training FLOPs per token from the budget x tokens/s / peak)."""

    window: int = 10  # batches per measurement
    peak_flops: float | None = None  # the MFU denominator; None: the GPU's data sheet, else a matmul probe


@dataclass
class LRMonitorConfig:
    """The learning rate in the loggers (Lightning's LearningRateMonitor; only when a logger is on)."""

    logging_interval: str = "step"  # step | epoch


@dataclass
class RichProgressBarConfig:
    """Lightning's RichProgressBar (unless trainer.enable_progress_bar=false)."""

    leave: bool = True  # keep each epoch's bar on screen


# callback name (its key under ``callbacks``) -> its settings; stored as ``callbacks/schema/<name>``
CALLBACK_SCHEMAS = {
    "model_checkpoint": ModelCheckpointConfig,
    "text_samples": TextSamplesConfig,
    "attention_probe": AttentionProbeConfig,
    "throughput": ThroughputConfig,
    "lr_monitor": LRMonitorConfig,
    "rich_progress_bar": RichProgressBarConfig,
}


@dataclass
class Config:
    task: str = "train"  # train | report | sample | export | attend | heads | lens | embed | context | tour | compare
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: Any = MISSING
    logger: Any = field(default_factory=dict)
    callbacks: Any = field(default_factory=dict)  # name -> settings (the dataclasses above); conf/callbacks/
    paths: Any = field(default_factory=dict)  # where runs, sweeps and the token cache go: conf/paths/default.yaml
    train: TrainConfig = field(default_factory=TrainConfig)
    # task=report: several presets side by side, e.g. models=[gpt3_125m,gpt3_175b] or 'models=[gpt3_*]'
    models: list[str] | None = None
    # task=train: resume from a checkpoint file, or `last` for the newest last.ckpt
    ckpt_path: str | None = None
    tour: bool = False  # task=train: end with the tour of the trained model, lecture.html (see task=tour)
    # task=sample / export / attend / heads: the checkpoint, export or Hugging Face directory (GPT-2, Llama, Mistral,
    # Qwen2/3, GPT-NeoX/Pythia, Gemma/Gemma 2) to read
    checkpoint: str | None = None
    # a Hugging Face checkpoint's weights: null = cast to float32, auto = keep its own (bf16 stays bf16), bfloat16, float16
    dtype: str | None = None
    format: str = "hydraformer"  # task=export: hydraformer (model.safetensors + hydraformer.json) | hf (Hugging Face)
    prompt: str = "The "  # task=sample
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 40
    compile: bool = False  # task=sample: torch.compile the decoding step (pays a compilation first; see builder.generate)
    text: str = LECTURE_PHRASE  # task=attend / lens / tour: the phrase to look at
    layers: list[int] | None = None  # task=attend: e.g. [0,3]; None = all
    heads: list[int] | None = None  # task=attend: e.g. [1,2]; None = all
    # task=embed: nearest tokens of each word, a direction from word pairs, a 2-D map of groups (each optional)
    words: list[str] | None = None  # e.g. [cat,fluffy]
    pairs: list[list[str]] | None = None  # e.g. [[man,woman],[king,queen]]
    groups: Any = None  # {name: [words]}, e.g. {nouns: [cat,dog], adjectives: [fluffy,blue]} (Any: Hydra merges a dict in)
    space: str = "embedding"  # embedding | unembedding (the same matrix when tied)
    neighbours: int = 8  # task=embed: nearest tokens shown per word
    # task=context: one word followed through the layers in several contexts
    word: str | None = None  # e.g. mole
    contexts: list[str] | None = None  # e.g. ['the mole dug a tunnel','one mole of carbon','a mole on the skin']
    # task=compare: a sweep directory (multirun/<date>/<time>) or `last` -> sweep.md|csv|png
    sweep_dir: str | None = None


_registered = False


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="data", name="schema", node=DataConfig)
    for name, node in CALLBACK_SCHEMAS.items():
        cs.store(group="callbacks/schema", name=name, node=node)
    _registered = True
