"""The declarations of every key of the config tree, and their registration in Hydra's ConfigStore.

Each key is declared once, as a typed dataclass field: its default, its accepted range or choices and a one-line
meaning (``Annotated[int, Gt(0), doc("...")]``; builder/config/spec.py reads them). Components declare theirs
beside their modules (``components/``); :class:`ModelConfig` nests them, picked by each component's name. ``conf/config.yaml``
composes ``schema`` (:class:`Config`) first, a preset in ``conf/model/`` and a corpus in ``conf/data/`` start
their defaults list with ``schema``, and each component option (``model/attention=grouped_query``) is its settings
dataclass stored as ``model/<kind>/<name>``: so a wrong type or an unknown key fails when Hydra composes, and
:func:`builder.config.spec.check` checks the ranges of the composed config once per job.

Imports no Hydra until :func:`register_schemas` (loading a model from a checkpoint reads these declarations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Len, Lt, doc

import components
from components.registry import OneOf, closest

from .spec import MISSING, Component, check

# data.source: the corpora of builder/data/corpus.py, and ``tokens``: a flat token file (builder/data/token_files.py)
ACCEPTED_SOURCES = ("embedded", "text", "adjectives", "lecture")
DATA_SOURCES = (*ACCEPTED_SOURCES, "tokens")
# data.tokenizer: builder/data/tokenizers.py
ACCEPTED_TOKENIZERS = ("char", "word", "byte_bpe", "gpt2_bpe")

# the lecture's phrase: drawn at every validation, and what task=attend looks at unless told otherwise
LECTURE_PHRASE = "a fluffy blue creature roamed the verdant forest"


@dataclass
class ModelConfig:
    """A GPT-style model: the shape, then one component per kind (each chosen from its group: model/attention=...)."""

    d_model: Annotated[int, Gt(0), doc("the residual stream's width")] = MISSING
    n_layers: Annotated[int, Gt(0), doc("transformer blocks")] = MISSING
    n_heads: Annotated[int, Gt(0), doc("attention heads per block")] = MISSING
    d_head: Annotated[int | None, Gt(0), doc("each head's width; null: d_model / n_heads")] = None
    vocab_size: Annotated[int, Gt(0), doc("tokens in the vocabulary (training sets it to the tokenizer's)")] = MISSING
    context_length: Annotated[int, Gt(0), doc("the longest sequence the model reads")] = MISSING
    bias: Annotated[bool, doc("biases in the linear maps and layer norms")] = True
    tie_embeddings: Annotated[bool, doc("the unembedding is the token embedding's transpose")] = True
    dropout: Annotated[float, Ge(0), Lt(1), doc("dropout probability on embeddings, attention and residuals")] = 0.0
    init_std: Annotated[float, Gt(0), doc("the standard deviation of the initial weights (GPT-2: 0.02)")] = 0.02
    scale_embeddings: Annotated[bool, doc("token embeddings times sqrt(d_model) (Gemma)")] = False
    final_softcap: Annotated[float | None, Gt(0), doc("logits become cap * tanh(logits / cap) (Gemma 2: 30); "
                                                      "null: none")] = None
    embedding: Annotated[Any, Component("embedding"), doc("positions: model/embedding=...")] = MISSING
    attention: Annotated[Any, Component("attention"), doc("the heads: model/attention=...")] = MISSING
    mask: Annotated[Any, Component("mask"), doc("what each query may look at: model/mask=...")] = MISSING
    mlp: Annotated[Any, Component("mlp"), doc("the feed-forward half of each block: model/mlp=...")] = MISSING
    norm: Annotated[Any, Component("norm"), doc("normalisation and its layout: model/norm=...")] = MISSING

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    def shared(self) -> dict:
        """The model values a component may be built with (its settings' ``SHARED``)."""
        return {"d_model": self.d_model, "n_heads": self.n_heads, "d_head": self.head_dim,
                "context_length": self.context_length, "bias": self.bias, "dropout": self.dropout}

    def problems(self, context=None):
        if self.d_head is None and self.d_model % self.n_heads:
            yield "n_heads", self.n_heads, f"a divisor of model.d_model={self.d_model}, or set model.d_head explicitly"


MAX_WORDS = 64  # task=embed: words or pairs drawn in one picture
TASK_NAMES = ("train", "report", "sample", "export", "attend", "heads", "lens", "embed", "context", "tour", "compare",
              "plan", "ablate", "patch")
Count = Annotated[int, Gt(0)]


@dataclass
class DataConfig:
    """A corpus and how it is cut into windows: TokenDataModule's arguments (builder/data/datamodule.py)."""

    source: Annotated[str, OneOf(*DATA_SOURCES), doc("the corpus; tokens: a flat token file")] = "embedded"
    path: Annotated[str | None, doc("text: a UTF-8 file or a folder; tokens: train.bin; null for the others")] = MISSING
    tokenizer: Annotated[str, OneOf(*ACCEPTED_TOKENIZERS), doc("how text becomes tokens")] = "char"
    bpe_vocab_size: Annotated[int, Ge(256), Lt(1 << 32), doc("byte_bpe: the vocabulary size to train")] = 1024
    vocab_file: Annotated[str | None, doc("gpt2_bpe: a local vocab.json")] = None
    merges_file: Annotated[str | None, doc("gpt2_bpe: a local merges.txt")] = None
    cache_dir: Annotated[str | None, doc("the token cache; null: ~/.cache/hydraformer/tokens")] = "${paths.cache_dir}"
    context_length: Annotated[int, Gt(0), doc("tokens per training window")] = "${model.context_length}"
    batch_size: Annotated[int, Gt(0), doc("windows per batch (per process)")] = 16
    val_fraction: Annotated[float, Ge(0), Lt(1), doc("the share of the token stream kept for validation, at its "
                                                     "end")] = 0.1
    samples_per_epoch: Annotated[int, Gt(0), doc("random training windows per epoch")] = 100_000
    val_batches: Annotated[int, Ge(0), doc("at most val_batches x batch_size fixed validation windows")] = 8
    num_workers: Annotated[int | None, Ge(0), doc("loader workers; null: 4 with a GPU, none on a CPU")] = None
    seed: Annotated[int, Ge(0), Lt(1 << 32), doc("seeds the windows' draw and the generated languages")] = "${seed}"
    n_sentences: Annotated[int, Gt(0), Le(10_000_000), doc("adjectives / lecture: sentences generated (in memory: "
                                                           "about 60 bytes and 25 µs each)")] = 20_000
    text_field: Annotated[str, Len(1), doc("text: the field of .jsonl records / column of .parquet files")] = "text"
    vocab_size: Annotated[int | None, Gt(0), Le(1 << 32), doc("tokens: ids in the token file; null: meta.json's, "
                                                              "else the tokenizer's")] = None
    dtype: Annotated[str | None, OneOf("uint16", "uint32"), doc("tokens: the file's id type; null: meta.json's, "
                                                                "else uint16 when the vocabulary fits")] = None

    def problems(self, context=None):
        needs_path = {"text": "a UTF-8 file or a folder", "tokens": "a flat uint16/uint32 token file"}
        path = None if self.path in (MISSING, "") else self.path
        if self.source in needs_path and path is None:
            yield "path", self.path, f"{needs_path[self.source]}: data.path is required when data.source={self.source!r}"
        if self.source not in needs_path and path is not None:
            yield "path", self.path, f"null: data.path is only used with data.source='text' or 'tokens' (got " \
                                     f"source={self.source!r})"
        if self.tokenizer == "gpt2_bpe":
            for key in ("vocab_file", "merges_file"):
                if not getattr(self, key):
                    yield key, getattr(self, key), "a local file: it is required when data.tokenizer='gpt2_bpe'"


@dataclass
class TrainConfig:
    """The optimizer (AdamW) and the schedule (linear warmup, cosine decay)."""

    lr: Annotated[float, Gt(0), doc("the peak learning rate")] = 1e-3
    min_lr: Annotated[float, Ge(0), doc("where the cosine decay ends, at most train.lr")] = 1e-4
    warmup_steps: Annotated[int, Ge(0), doc("optimizer steps of linear warmup")] = 100
    total_steps: Annotated[int | None, Gt(0), doc("the cosine schedule's length; null: the trainer's estimate "
                                                  "(trainer.max_steps, or max_epochs x batches per epoch)")] = None
    weight_decay: Annotated[float, Ge(0), doc("AdamW's decay; not applied to biases, norms and embeddings")] = 0.1
    betas: Annotated[list[Annotated[float, Ge(0), Lt(1)]], Len(2, 2), doc("AdamW's betas")] = field(
        default_factory=lambda: [0.9, 0.95])
    eps: Annotated[float, Gt(0), doc("AdamW's epsilon")] = 1e-8
    fused_optimizer: Annotated[bool, doc("fused AdamW (CPU and CUDA); false: foreach")] = True
    compile: Annotated[bool, doc("torch.compile the model")] = False
    skip_nonfinite: Annotated[bool, doc("skip and count batches with a NaN/inf loss (one process only); false: "
                                        "stop")] = False
    finite_check_every: Annotated[int | None, Gt(0), doc("steps between checks of the loss for NaN/inf; null: every "
                                                         "step on a CPU, every trainer.log_every_n_steps on a "
                                                         "GPU")] = None
    check_memory: Annotated[bool, doc("refuse a run whose memory estimate clearly exceeds the device's free "
                                      "memory")] = True
    activation_checkpointing: Annotated[bool, doc("recompute each transformer block's activations in the backward "
                                                  "pass instead of keeping them (torch.utils.checkpoint): less "
                                                  "memory, about a third more compute")] = False

    def problems(self, context=None):
        if self.min_lr > self.lr:
            yield "min_lr", self.min_lr, f"a number from 0 to train.lr ({self.lr}): where the cosine decay ends"
        if self.finite_check_every not in (None, 1) and self.skip_nonfinite:
            yield "finite_check_every", self.finite_check_every, "1 or null with train.skip_nonfinite=true: a " \
                "batch is skipped before its backward, so its loss must be checked at once"


PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16)
FSDP2_PRECISIONS = ("32-true", "32", 32, "bf16-mixed")  # the ones build_sharded's mixed-precision policy knows
# Trainer arguments hydraformer sets itself (the run's folder, its callbacks and loggers, its sampler): not keys
TRAINER_SET_BY_US = ("default_root_dir", "callbacks", "logger", "plugins", "use_distributed_sampler", "model_registry")


# TrainerConfig's keys that are no Trainer arguments: builder/tasks/train.py make_strategy hands them to fsdp2's strategy
STRATEGY_KEYS = ("checkpoint_format", "tensor_parallel")


@dataclass
class TrainerConfig:
    """pytorch_lightning.Trainer's arguments (names, types and defaults are Lightning's: tests/test_config.py holds
    them to its signature), with the ranges Lightning itself does not refuse; plus ``checkpoint_format`` and
    ``tensor_parallel``."""

    accelerator: Annotated[str, OneOf("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla", "hpu"),
                           doc("the device kind")] = "auto"
    strategy: Annotated[str, doc("auto, ddp, fsdp2 (hydraformer's FSDP2), or another Lightning strategy "
                                 "name")] = "auto"
    devices: Annotated[Any, doc("processes per node: an integer >= 1, -1 or auto (every device), a list of device "
                                "indices or a comma list")] = "auto"
    num_nodes: Annotated[int, Gt(0), doc("machines")] = 1
    precision: Annotated[Any, OneOf(*PRECISIONS), doc("numeric precision (short forms: 32, 16, bf16, 64)")] = None
    fast_dev_run: Annotated[Any, doc("true, or a number of batches >= 0: a quick check run")] = False
    max_epochs: Annotated[int | None, Ge(-1), doc("-1: no epoch limit; null: Lightning's default")] = None
    min_epochs: Annotated[int | None, Ge(0), doc("epochs before early stopping may act")] = None
    max_steps: Annotated[int | None, Ge(-1), doc("optimizer steps; -1 or null: no step limit")] = -1
    min_steps: Annotated[int | None, Ge(0), doc("steps before early stopping may act")] = None
    max_time: Annotated[Any, doc("a wall-clock limit, DD:HH:MM:SS")] = None
    limit_train_batches: Annotated[Any, doc("per epoch: a share in [0, 1] or a number of batches >= 0")] = None
    limit_val_batches: Annotated[Any, doc("per validation: a share in [0, 1] or a number of batches >= 0")] = None
    limit_test_batches: Annotated[Any, doc("a share in [0, 1] or a number of batches >= 0")] = None
    limit_predict_batches: Annotated[Any, doc("a share in [0, 1] or a number of batches >= 0")] = None
    overfit_batches: Annotated[Any, doc("train on this share in [0, 1] or number of batches >= 0 only")] = 0.0
    val_check_interval: Annotated[Any, doc("validate every N >= 1 training batches, or a share of each epoch in (0, "
                                           "1], or a time")] = None
    check_val_every_n_epoch: Annotated[int | None, Gt(0), doc("epochs between validations; null: by "
                                                              "val_check_interval only")] = 1
    num_sanity_val_steps: Annotated[int | None, Ge(-1), doc("validation batches before training; -1: all")] = None
    log_every_n_steps: Annotated[int | None, Gt(0), doc("steps between metric logs")] = None
    enable_checkpointing: Annotated[bool | None, doc("null: on when callbacks.model_checkpoint is; false: no "
                                                     "checkpoints, callbacks.model_checkpoint left out (an interrupt "
                                                     "still saves last.ckpt)")] = None
    enable_progress_bar: Annotated[bool | None, doc("the progress bar")] = None
    enable_model_summary: Annotated[bool | None, doc("the model summary at the start")] = None
    accumulate_grad_batches: Annotated[int, Gt(0), doc("batches whose gradients make one step")] = 1
    gradient_clip_val: Annotated[float | None, Ge(0), doc("clip gradients at this norm (or value); 0 or null: "
                                                          "none")] = None
    gradient_clip_algorithm: Annotated[str | None, OneOf("norm", "value"), doc("how gradients are clipped")] = None
    deterministic: Annotated[Any, OneOf(True, False, "warn"), doc("deterministic algorithms only (warn: warn "
                                                                  "instead of failing)")] = None
    benchmark: Annotated[bool | None, doc("cuDNN's benchmark mode")] = None
    inference_mode: Annotated[bool, doc("torch.inference_mode for validation")] = True
    profiler: Annotated[str | None, OneOf("simple", "advanced", "pytorch", "xla"), doc("a profiler")] = None
    detect_anomaly: Annotated[bool, doc("autograd's anomaly detection")] = False
    barebones: Annotated[bool, doc("no logging, checkpointing or progress: the bare loop")] = False
    sync_batchnorm: Annotated[bool, doc("synchronise batch norms across processes")] = False
    reload_dataloaders_every_n_epochs: Annotated[int, Ge(0), doc("epochs between data loader rebuilds")] = 0
    enable_autolog_hparams: Annotated[bool, doc("Lightning logs the module's hyperparameters to the loggers")] = True
    checkpoint_format: Annotated[str | None, OneOf("sharded", "full"), doc("fsdp2 only: sharded (a directory of "
                                                                          "shards) or full (one file)")] = None
    tensor_parallel: Annotated[int, Gt(0), doc("fsdp2 only: processes that split each block's attention heads and "
                                               "MLP between them (Megatron-style, within a node); the rest of "
                                               "devices x num_nodes is data parallel")] = 1

    def problems(self, context=None):
        devices = self._devices()
        if isinstance(self.devices, str) and isinstance(devices, list):  # a comma list
            ok = all(d.isdigit() for d in devices)
        elif isinstance(devices, (list, tuple)):
            ok = len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
        else:
            ok = devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool)
                                       and (devices >= 1 or devices == -1))
        if not ok:
            yield "devices", self.devices, "an integer >= 1, -1 or auto (every device found), a list of device " \
                                           "indices or a comma list (0,1)"
        fast = self.fast_dev_run
        if not (isinstance(fast, bool) or (isinstance(fast, int) and fast >= 0)):
            yield "fast_dev_run", fast, "true, false or a number of batches >= 0"
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                    "overfit_batches"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                    value < 0 or (isinstance(value, float) and value > 1):
                yield key, value, "a share of the batches in [0.0, 1.0], or a whole number of batches >= 0"
        value = self.val_check_interval
        if value is not None and not isinstance(value, str) and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or
                (isinstance(value, int) and value < 1) or (isinstance(value, float) and not 0 < value <= 1)):
            yield "val_check_interval", value, "a whole number of training batches >= 1, or a fraction of each " \
                                               "epoch in (0, 1] (0.5: twice an epoch)"
        if self.max_time is not None and not isinstance(self.max_time, (str, dict)):
            yield "max_time", self.max_time, "a duration DD:HH:MM:SS, a mapping {days: 1, hours: 2}, or null"
        if self.checkpoint_format is not None and self.strategy != "fsdp2":
            yield "checkpoint_format", self.checkpoint_format, "unset: only trainer.strategy=fsdp2 (trainer=fsdp, " \
                f"fsdp_cpu) writes sharded or full checkpoints; this run's strategy is {self.strategy!r}"
        if self.tensor_parallel > 1 and self.strategy != "fsdp2":
            yield "tensor_parallel", self.tensor_parallel, "1: only trainer.strategy=fsdp2 (trainer=fsdp, fsdp_cpu) " \
                f"splits blocks over processes; this run's strategy is {self.strategy!r}"
        if self.strategy == "fsdp2" and self.precision is not None and self.precision not in FSDP2_PRECISIONS:
            yield "precision", self.precision, "one of 32-true, bf16-mixed under trainer.strategy=fsdp2: fp16 " \
                "(16-mixed) needs a loss scaler over the shards, which Lightning's ModelParallelStrategy does not " \
                "run; bf16-mixed needs none"

    def _devices(self):
        """``devices`` as written, with a number written as a string read as its int and a comma list as its items."""
        devices = self.devices
        if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
            return int(devices)
        if isinstance(devices, str) and "," in devices:
            return [d.strip() for d in devices.split(",") if d.strip()]
        return devices

    def processes(self) -> int | None:
        """How many training processes ``devices`` x ``num_nodes`` ask for when written out; None when Lightning
        decides (``auto``, ``-1``: every device found)."""
        devices = self._devices()
        if isinstance(devices, (list, tuple)):
            count = len(devices)
        elif isinstance(devices, int) and not isinstance(devices, bool) and devices >= 0:
            count = devices
        else:
            return None
        return max(count, 1) * self.num_nodes


@dataclass
class AcceleratorConfig:
    """One accelerator task=plan can plan for: its data sheet's figures (conf/plan/default.yaml lists the shipped
    ones; add one under ``plan.accelerators.<name>``)."""

    memory_gib: Annotated[float, Gt(0), doc("memory per GPU in GiB (what nvidia-smi reports)")] = MISSING
    bf16_tflops: Annotated[float, Gt(0), doc("dense bf16 tensor-core peak, TFLOP/s (no sparsity)")] = MISSING
    fp8_tflops: Annotated[float | None, Gt(0), doc("dense fp8 peak, TFLOP/s; null: no fp8")] = None
    fp32_tflops: Annotated[float, Gt(0), doc("fp32 peak without tensor cores, TFLOP/s")] = MISSING
    tf32_tflops: Annotated[float | None, Gt(0), doc("dense TF32 tensor-core peak, TFLOP/s: fp32 matmuls where torch "
                                                    "allows TF32; null: none")] = None
    device_name: Annotated[str | None, Len(1), doc("what torch.cuda.get_device_name() contains for this GPU: a "
                                                   "training run's MFU takes its peak from the entry whose "
                                                   "device_name is the longest one the name contains; null: none")] \
        = None
    intra_node_gbps: Annotated[float, Gt(0), doc("each GPU's bandwidth to the GPUs of its node (NVLink), GB/s each "
                                                 "way")] = MISSING
    inter_node_gbps: Annotated[float, Gt(0), doc("each GPU's network bandwidth to other nodes, GB/s each "
                                                 "way")] = MISSING
    gpus_per_node: Annotated[int, Gt(0), doc("GPUs in one node")] = 8
    source: Annotated[str, doc("where the figures come from")] = ""


PLAN_PRECISIONS = ("bf16-mixed", "32-true")  # what trainer=fsdp trains in (FSDP2_PRECISIONS' long forms)


@dataclass
class PlanConfig:
    """task=plan: what training the model on ``tokens`` takes on ``gpu``s (builder/plan.py)."""

    tokens: Annotated[float | None, Gt(0), doc("training tokens, e.g. 2e12; null: Chinchilla's 20 x "
                                               "parameters")] = None
    gpu: Annotated[str, Len(1), doc("the accelerator: a key of plan.accelerators")] = "h100_80gb"
    gpus: Annotated[int | None, Gt(0), doc("GPUs in all; null: nodes x gpus_per_node, else the fewest that "
                                           "fit")] = None
    nodes: Annotated[int | None, Gt(0), doc("nodes; null: as many as plan.gpus needs")] = None
    mfu: Annotated[float, Gt(0), Le(1), doc("assumed model FLOPs utilisation: the share of the dense peak the "
                                            "training reaches (Llama 3 405B: 0.38-0.43)")] = 0.4
    precision: Annotated[str, OneOf(*PLAN_PRECISIONS), doc("the training precision (its peak: bf16 or fp32)")] = \
        "bf16-mixed"
    global_batch: Annotated[int | None, Gt(0), doc("windows per optimizer step over all GPUs, reached with "
                                                   "trainer.accumulate_grad_batches; null: data.batch_size per "
                                                   "data-parallel GPU, no accumulation")] = None
    price_per_gpu_hour: Annotated[float, Ge(0), doc("USD per GPU-hour, for the cost")] = 2.0
    reserve: Annotated[float, Ge(0), Lt(1), doc("the allowance: the share of each GPU's memory kept for the CUDA "
                                                "context, communication buffers and allocator fragmentation")] = 0.1
    accelerators: Annotated[dict[str, Any], doc("name -> its data sheet, each entry checked as an AcceleratorConfig "
                                                "(conf/plan/default.yaml; add one with +plan.accelerators.NAME={...})")] \
        = field(default_factory=dict)

    def problems(self, context=None):
        for name, entry in self.accelerators.items():
            self.accelerators[name] = entry if isinstance(entry, AcceleratorConfig) else \
                check(AcceleratorConfig, entry, f"plan.accelerators.{name}")
        if self.gpu not in self.accelerators:
            known = ", ".join(self.accelerators) or "none (plan.accelerators is empty)"
            yield "gpu", self.gpu, f"an accelerator of plan.accelerators{closest(self.gpu, list(self.accelerators))}:" \
                                   f" one of {known}; add another as +plan.accelerators.NAME={{memory_gib:" \
                                   "..,bf16_tflops:..,fp32_tflops:..,intra_node_gbps:..,inter_node_gbps:..} or in a " \
                                   "config file"
            return
        per_node = self.accelerators[self.gpu].gpus_per_node
        if self.gpus is not None and self.nodes is not None and (self.gpus % self.nodes or
                                                                 self.gpus // self.nodes > per_node):
            yield "gpus", self.gpus, f"a multiple of plan.nodes={self.nodes} with at most {per_node} GPUs a node " \
                                     f"({self.gpu}: gpus_per_node={per_node}), or null for plan.nodes x {per_node}"
        elif self.gpus is not None and self.nodes is None and self.gpus > per_node and self.gpus % per_node:
            yield "gpus", self.gpus, f"at most one node's {per_node} GPUs ({self.gpu}: gpus_per_node={per_node}) or " \
                                     f"whole nodes, a multiple of {per_node}; or set plan.nodes"


# --- the ``callbacks`` group (conf/callbacks/): one entry per callback of task=train, built by
# builder/training/callbacks.py. ``~callbacks.NAME`` or ``callbacks.NAME=null`` switches one off.


@dataclass
class ModelCheckpointConfig:
    """``<run dir>/checkpoints/``: ``best-<step>.ckpt`` (lowest val/loss), ``last.ckpt`` and ``step-<N>.ckpt``."""

    every_n_train_steps: Annotated[int, Gt(0), doc("a step-<N>.ckpt every N optimizer steps, all kept")] = 500


@dataclass
class TextSamplesConfig:
    """At each validation the prompt is continued (fixed seed), logged and appended to ``<run dir>/samples.txt``."""

    prompt: Annotated[str, doc("the text continued")] = "The "
    max_new_tokens: Annotated[int, Gt(0), Le(100_000), doc("tokens added")] = 200
    temperature: Annotated[float, Ge(0), doc("0: the most likely token; 1: the model's distribution")] = 0.8
    top_k: Annotated[int | None, Gt(0), doc("sample among the k most likely tokens; null: all")] = 40


@dataclass
class AttentionProbeConfig:
    """At each validation every head's pattern on ``text``: ``<run dir>/attention/patterns_step<N>.png`` and the loggers."""

    text: Annotated[str, Len(1), doc("the phrase every head looks at")] = LECTURE_PHRASE


@dataclass
class ThroughputConfig:
    """``perf/tokens_per_s`` and ``perf/mfu`` (training FLOPs per token from the budget x tokens/s / peak)."""

    window: Annotated[int, Gt(0), doc("training batches per tokens/s measurement")] = 10
    peak_flops: Annotated[float | None, Gt(0), doc("the MFU denominator in FLOP/s; null: the GPU's data sheet, "
                                                   "else a matmul probe")] = None


@dataclass
class LRMonitorConfig:
    """The learning rate in the loggers (Lightning's LearningRateMonitor; only when a logger is on)."""

    logging_interval: Annotated[str, OneOf("step", "epoch"), doc("when the learning rate is logged")] = "step"


@dataclass
class RichProgressBarConfig:
    """Lightning's RichProgressBar (unless trainer.enable_progress_bar=false)."""

    leave: Annotated[bool, doc("keep each epoch's bar on screen")] = True


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
    """The root: the task, the sections, and each task's own keys."""

    task: Annotated[str, OneOf(*TASK_NAMES), doc("what to do")] = "train"
    seed: Annotated[int, Ge(0), Lt(1 << 32), doc("seeds the initial weights, the data and sampling")] = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Annotated[Any, doc("the loggers, name -> options (conf/logger/)")] = field(default_factory=dict)
    callbacks: Annotated[Any, doc("the training callbacks, name -> settings (conf/callbacks/)")] = field(
        default_factory=dict)
    paths: Annotated[Any, doc("where runs, sweeps and the token cache go (conf/paths/)")] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    models: Annotated[list[str] | None, doc("task=report: several presets side by side, e.g. "
                                            "models=[gpt3_125m,gpt3_175b] or 'models=[gpt3_*]'")] = None
    ckpt_path: Annotated[str | None, doc("task=train: resume from a checkpoint file, or last")] = None
    tour: Annotated[bool, doc("task=train: end with the tour of the trained model, lecture.html")] = False
    checkpoint: Annotated[str | None, doc("the checkpoint, export or Hugging Face directory a task reads")] = None
    dtype: Annotated[str | None, OneOf("auto", "float32", "bfloat16", "float16"),
                     doc("a Hugging Face checkpoint's weights: null casts to float32, auto keeps its own")] = None
    format: Annotated[str, OneOf("hydraformer", "hf"), doc("task=export: hydraformer (model.safetensors + "
                                                           "hydraformer.json) or hf (Hugging Face)")] = "hydraformer"
    shard_size: Annotated[int | None, Gt(0), doc("task=export format=hf: the most bytes of tensors per safetensors "
                                                 "file, written as transformers does (model-00001-of-0000N.safetensors "
                                                 "and model.safetensors.index.json); null: one model.safetensors")] = None
    prompt: Annotated[str, doc("task=sample: the text continued")] = "The "
    max_new_tokens: Annotated[int, Ge(0), doc("task=sample: the tokens to add to the prompt")] = 200
    temperature: Annotated[float, Ge(0), doc("task=sample: 0 picks the most likely token; 1 samples the model's "
                                             "distribution")] = 0.8
    top_k: Annotated[int | None, Gt(0), doc("task=sample: sample among the k most likely tokens; null: all")] = 40
    compile: Annotated[bool, doc("task=sample: torch.compile the decoding step")] = False
    text: Annotated[str, doc("task=attend / lens / tour: the phrase to look at")] = LECTURE_PHRASE
    layers: Annotated[list[Annotated[int, Ge(0)]] | None, doc("task=attend: layers to draw, e.g. [0,3]; null: "
                                                              "all")] = None
    heads: Annotated[list[Annotated[int, Ge(0)]] | None, doc("task=attend: heads to draw, e.g. [1,2]; null: "
                                                             "all")] = None
    words: Annotated[list[str] | None, Len(1, MAX_WORDS), doc("task=embed: words whose nearest tokens to list (one "
                                                            "panel each in nearest.png), e.g. [cat,fluffy]")] = None
    pairs: Annotated[list[list[str]] | None, Len(1, MAX_WORDS), doc("task=embed: word pairs that give a direction, "
                                                                    "e.g. [[man,woman],[king,queen]]")] = None
    groups: Annotated[Any, doc("task=embed: {name: [words]} laid out on a 2-D map")] = None
    space: Annotated[str, OneOf("embedding", "unembedding"), doc("task=embed: which matrix")] = "embedding"
    neighbours: Annotated[int, Gt(0), Le(100), doc("task=embed: nearest tokens shown per word (one bar each in "
                                                   "nearest.png)")] = 8
    word: Annotated[str | None, doc("task=context: the word followed through the layers, e.g. mole")] = None
    contexts: Annotated[list[str] | None, doc("task=context: texts that use the word")] = None
    sweep_dir: Annotated[str | None, doc("task=compare: a sweep directory (multirun/<date>/<time>) or last")] = None
    ablation: Annotated[str, OneOf("zero", "mean"), doc("task=ablate: zero sets each head's (each MLP's) output to 0; "
                                                        "mean to its mean over every token measured")] = "mean"
    texts: Annotated[list[str] | None, doc("task=ablate: the texts the ablations are measured on; null: text")] = None
    split: Annotated[str, OneOf("text", "val"), doc("task=ablate: measure on the texts, or on the validation windows "
                                                    "of the data config (data=..., as the checkpoint was trained)")
                     ] = "text"
    answers: Annotated[list[str] | None, Len(2, 2), doc("task=ablate / patch: [right, wrong]: measure logit(right) - "
                                                        "logit(wrong) after the last token (ablate, null: the loss; "
                                                        "patch, null: each prompt's own prediction)")] = None
    clean: Annotated[str | None, doc("task=patch: the clean prompt, whose activations are patched in")] = None
    corrupted: Annotated[str | None, doc("task=patch: the corrupted prompt, as many tokens as clean")] = None
    plan: PlanConfig = field(default_factory=PlanConfig)


_stored: set[tuple[str, str]] = set()


def register_schemas() -> None:
    """Store the declarations in Hydra's ConfigStore: the root ``schema``, ``model/schema``, ``data/schema``, each
    callback's settings as ``callbacks/schema/<name>`` and each registered component's settings as the option
    ``model/<kind>/<name>`` (so ``model/attention=grouped_query`` composes a typed node). Each entry once; a
    component registered since the last call (an entry point) is stored on the next."""
    from hydra.core.config_store import ConfigStore  # (reason: declarations are read without Hydra elsewhere)

    cs = ConfigStore.instance()
    if not _stored:
        cs.store(name="schema", node=Config)
        cs.store(group="model", name="schema", node=ModelConfig)
        cs.store(group="data", name="schema", node=DataConfig)
        for name, node in CALLBACK_SCHEMAS.items():
            cs.store(group="callbacks/schema", name=name, node=node)
        _stored.add(("", "schema"))
    for kind in components.KINDS:
        for name in components.names(kind):
            if (kind, name) not in _stored:
                cs.store(group=f"model/{kind}", name=name, node=components.registry.settings_class(kind, name))
                _stored.add((kind, name))
