"""The callbacks of task=train, built from the ``callbacks`` config group, and the atomic checkpoint plugin.

``make_callbacks(cfg.callbacks, context)`` turns each entry of the group (``conf/callbacks/default.yaml``) into
Lightning callbacks through an allow-list (:data:`BUILDERS`): a config names a callback, never code to run.
Each entry's settings are its dataclass in ``builder/config/schema.py`` (:data:`CALLBACK_SCHEMAS`).
"""

from __future__ import annotations

import dataclasses
import errno
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.strategies import ModelParallelStrategy
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..checkpoint import last_finite_sentence
from ..config.checks import check_callbacks
from ..config.plain import to_plain
from ..config.schema import (
    AttentionProbeConfig,
    LRMonitorConfig,
    ModelCheckpointConfig,
    RichProgressBarConfig,
    TextSamplesConfig,
    ThroughputConfig,
)
from ..errors import NonFiniteLossError
from ..figures import save_png
from ..files import atomic_path, named_errors
from ..generate import encode_prompt, generate
from ..interp.capture import head_mask, record
from ..interp.plots import draw_patterns
from ..interp.routing import load_figure, moe_layers
from .loggers import log_image, log_text
from .progress_bar import StepProgressBar
from .throughput import ThroughputMonitor, peak_flops

# a write refused for want of room: a full disk, a quota, a file size limit, a read-only file system
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file beside the target, then renamed over it:
    a run killed mid-write never leaves a truncated ``last.ckpt``, a failed write leaves no partial file.

    torch.save writes into a Python file, not a path: its C++ writer reports a full disk as a RuntimeError
    ("basic_ios::clear: iostream error") with no errno, a Python file as OSError(ENOSPC) — which torch's zip writer
    can bury under its own RuntimeError ("unexpected pos"), raised while closing the archive; that OSError is raised
    instead, named by atomic_path, shown as one paragraph naming the run folder (builder.tasks.file_system_error)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            try:
                torch.save(checkpoint, f)
            except RuntimeError as err:
                refused = _buried_os_error(err)
                if refused is None:
                    raise
                raise refused from None


def _buried_os_error(err: BaseException) -> OSError | None:
    """The OSError that ``err`` was raised while handling (its context, or its context's ...), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__context__
    return None


def _takes_part(trainer) -> bool:
    """Whether this process runs a callback's forward pass: process 0, and under fsdp2 every process (the sharded
    model's forward gathers each block from all of them; process 0 alone would wait for the others forever)."""
    return trainer.is_global_zero or isinstance(trainer.strategy, ModelParallelStrategy)


def _all_heads(trainer, patterns: torch.Tensor) -> torch.Tensor:
    """Every head's patterns ``[layer, head, query, key]``: under tensor parallelism (fsdp2's trainer.tensor_parallel)
    each process of a group computed its share of the heads, gathered here in order (every process calls this)."""
    strategy = trainer.strategy
    tp = getattr(strategy, "tensor_parallel", 1)
    if tp == 1:
        return patterns
    parts = [torch.empty_like(patterns) for _ in range(tp)]
    torch.distributed.all_gather(parts, patterns.contiguous(), group=strategy.device_mesh["tensor_parallel"].get_group())
    return torch.cat(parts, dim=1)


class SampleText(pl.Callback):
    """At every validation, continue a fixed prompt with a fixed seed; log it and append it to samples.txt."""

    def __init__(self, tokenizer, out_dir: Path, prompt: str, max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: int | None = 40, seed: int = 0):
        self.tokenizer, self.out_dir = tokenizer, Path(out_dir)
        self.prompt, self.max_new_tokens, self.temperature, self.top_k, self.seed = (
            prompt, max_new_tokens, temperature, top_k, seed)
        self.prompt_ids = encode_prompt(tokenizer, prompt, key="callbacks.text_samples.prompt")
        self.rows: list[list] = []

    @property
    def path(self) -> Path:
        return self.out_dir / "samples.txt"

    def sample(self, model: torch.nn.Module, device) -> str:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
        out = generate(model, ids, self.max_new_tokens, self.temperature, self.top_k, generator=gen
                       if device.type == "cpu" else None)
        return self.tokenizer.decode(out[0].tolist())

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not _takes_part(trainer):
            return
        try:  # under fsdp2 every process runs the sharded forward; process 0 writes
            text = self.sample(pl_module.model, pl_module.device)
        except FloatingPointError as err:
            text = f"(no sample: {err})"
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.rows.append([step, self.prompt, text])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with named_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(f"--- step {step} ---\n{text}\n\n")
        log_text(trainer.loggers, "samples", ["step", "prompt", "text"], self.rows, step=step)


class AttentionProbe(pl.Callback):
    """At every validation, draw every head's pattern on a fixed probe phrase, so a person watches heads form.

    The picture goes to ``<run dir>/attention/patterns_step<N>.png`` and to the loggers (a wandb image). A model
    with mixture-of-experts layers also gets ``attention/expert_load_step<N>.png``: the share of the choices each
    expert took over that validation's batches, per layer (what ``val/expert_load_max`` / ``_min`` sum up)."""

    def __init__(self, tokenizer, out_dir: Path, text: str):
        self.tokenizer, self.out_dir, self.text = tokenizer, Path(out_dir), text
        self.ids = encode_prompt(tokenizer, text, key="callbacks.attention_probe.text")
        self.tokens = [tokenizer.decode([i]) for i in self.ids]
        self.paths: list[Path] = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not _takes_part(trainer):
            return
        model = pl_module.model
        ids = torch.tensor([self.ids[-model.context_length:] if model.context_length else self.ids])
        rec = record(model, ids, fields=("pattern", "mask"))  # under fsdp2 every process runs the sharded forward
        n = len(model.blocks)
        patterns = _all_heads(trainer, torch.stack([rec.pattern(layer)[0] for layer in range(n)]))
        if not trainer.is_global_zero:
            return
        t = ids.shape[1]
        patterns = patterns.float().cpu()
        masks = torch.stack([head_mask(rec, layer, t) for layer in range(n)])
        step = trainer.global_step
        path = draw_patterns(self.out_dir / "attention" / f"patterns_step{step}.png", self.tokens[-t:], patterns, masks,
                             title=f"step {step}: {self.text!r}")
        self.paths.append(path)
        log_image(trainer.loggers, "attention/patterns", path, step=step, caption=f"step {step}")
        loads = getattr(pl_module, "val_expert_loads", None)  # (a LitGPT; another module has none)
        if loads is not None:  # a mixture of experts: the choices per expert over this validation's batches
            whose = " (one process's share of them)" if trainer.world_size > 1 else ""
            path = save_png(load_figure(dict(zip(moe_layers(model), loads)), title=f"step {step}: load per expert "
                                        f"over the validation batches{whose}"),
                            self.out_dir / "attention" / f"expert_load_step{step}.png")
            self.paths.append(path)
            log_image(trainer.loggers, "attention/expert_load", path, step=step, caption=f"step {step}")


class ValidateAtEnd(pl.Callback):
    """A training run that ends validates at its end: when the step that ends it (``trainer.max_steps``, or the last
    batch of ``trainer.max_epochs``) is not a validation step of its own, one more validation runs after it. So every
    run, and every job of a sweep, ends with a val/loss, a best checkpoint and a sample.

    Lightning validates after a batch whose end asks the fit to stop (``trainer.should_stop``, the public flag early
    stopping sets; a validation step's own validation runs once), and at the step that ends the run the fit stops
    anyway. An epoch that ``trainer.check_val_every_n_epoch`` skips stays unvalidated, and ``limit_val_batches=0``
    validates nothing, as asked."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        steps_done = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        epochs_done = (trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
                       and batch_idx + 1 >= trainer.num_training_batches)
        if steps_done or epochs_done:
            trainer.should_stop = True


class SaveOnInterrupt(pl.Callback):
    """Ctrl-C, SIGTERM or an error raised during training: write ``last.ckpt`` (atomically) before the run exits.

    Ctrl-C becomes a KeyboardInterrupt at the end of the current batch, as Lightning does with SIGTERM: raised where
    the signal lands, Python drops one that lands in a finaliser or a weakref callback (those run inside backward) and
    training would go on. A second Ctrl-C interrupts at once. Any other error (a callback that fails at validation)
    saves the steps trained so far too — unless the loss is no longer finite, or a write was refused (a full
    disk would refuse this one too), or several processes train (one process's error is not the others': saving
    would wait on them forever). Weights that are not finite are never saved, interrupted or not: the message names
    the last checkpoint whose weights are."""

    def __init__(self, path: Path, resume_hint: str | None = None):
        self.path = Path(path)
        self.resume_hint = resume_hint or f"ckpt_path={self.path}"
        self.saved: Path | None = None
        self.interrupted = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True

    def setup(self, trainer, pl_module, stage):
        # only the main thread may set a handler; a handler someone else chose (or SIGINT ignored) stays
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None

    def _raise_if_interrupted(self, *args):
        if self.interrupted:
            raise KeyboardInterrupt

    on_train_batch_end = on_validation_batch_end = _raise_if_interrupted

    def teardown(self, trainer, pl_module, stage):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if trainer.global_step == 0 or not (interrupted or self._worth_saving(trainer, exception)):
            return
        what = "interrupted" if interrupted else f"failed ({type(exception).__name__})"
        # a NaN/inf loss not yet looked at (train.finite_check_every) has stepped these weights; this process's own
        # losses only: the others may not be here to compare theirs (which also leaves nothing for the save's check)
        check = getattr(pl_module, "nonfinite_error", None)
        try:  # the error that ended the run stays the one reported
            if check is not None and (unsafe := check(collective=False)) is not None:
                raise unsafe
            trainer.save_checkpoint(self.path)  # refused when the weights are not finite (LitGPT.on_save_checkpoint)
        except (NonFiniteLossError, OSError) as err:
            if trainer.is_global_zero:
                kept = f". {last_finite_sentence(self.path.parent, trainer.ckpt_path)}" \
                    if isinstance(err, NonFiniteLossError) else ""
                print(f"\n{what} at step {trainer.global_step}: {self.path} not saved: {err}{kept}", flush=True)
            return
        self.saved = self.path
        if trainer.is_global_zero:
            print(f"\n{what} at step {trainer.global_step}: saved {self.path}; to resume, run the same command with "
                  f"{self.resume_hint}", flush=True)

    @staticmethod
    def _worth_saving(trainer, exception) -> bool:
        """Not after a NaN/inf loss, nor after a write the file system had no room for (it has none for this one
        either), nor with several processes."""
        no_room = isinstance(exception, OSError) and exception.errno in NO_ROOM
        return not (isinstance(exception, NonFiniteLossError) or no_room or trainer.world_size > 1)


# --------------------------------------------------------------------------------------------------
# the ``callbacks`` group -> callback objects
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunContext:
    """What the callbacks need from the run they join."""

    tokenizer: Any
    out_dir: Path
    seed: int
    flops_per_token: float  # training FLOPs per token (the budget's)
    precision: str  # trainer.precision: which peak MFU is measured against
    has_logger: bool  # a learning-rate monitor needs one
    progress_bar: bool  # trainer.enable_progress_bar


def _model_checkpoint(s: ModelCheckpointConfig, run: RunContext) -> list[pl.Callback]:
    ckpt_dir = run.out_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{step}", monitor="val/loss", mode="min", save_top_k=1,
                           save_last=True, auto_insert_metric_name=False)
    periodic = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", save_top_k=-1,
                               every_n_train_steps=s.every_n_train_steps, auto_insert_metric_name=False)
    return [best, periodic]


def _text_samples(s: TextSamplesConfig, run: RunContext) -> list[pl.Callback]:
    return [SampleText(run.tokenizer, run.out_dir, s.prompt, s.max_new_tokens, s.temperature, s.top_k, seed=run.seed)]


def _attention_probe(s: AttentionProbeConfig, run: RunContext) -> list[pl.Callback]:
    return [AttentionProbe(run.tokenizer, run.out_dir, s.text)]


def _throughput(s: ThroughputConfig, run: RunContext) -> list[pl.Callback]:
    peak, source = peak_flops(run.precision, s.peak_flops)
    rank_zero_info(f"peak for perf/mfu: {peak / 1e12:.3f} TFLOP/s ({source})")
    return [ThroughputMonitor(run.flops_per_token, peak, s.window)]


def _lr_monitor(s: LRMonitorConfig, run: RunContext) -> list[pl.Callback]:
    return [LearningRateMonitor(logging_interval=s.logging_interval)] if run.has_logger else []


def _rich_progress_bar(s: RichProgressBarConfig, run: RunContext) -> list[pl.Callback]:
    return [StepProgressBar(leave=s.leave)] if run.progress_bar else []


# the allow-list: callback name -> the function that builds it from its settings
BUILDERS: dict[str, Callable[[Any, RunContext], list[pl.Callback]]] = {
    "model_checkpoint": _model_checkpoint,
    "text_samples": _text_samples,
    "attention_probe": _attention_probe,
    "throughput": _throughput,
    "lr_monitor": _lr_monitor,
    "rich_progress_bar": _rich_progress_bar,
}


def make_callbacks(callbacks_cfg, run: RunContext) -> dict[str, list[pl.Callback]]:
    """The ``callbacks`` config (name -> settings; ``null`` switches one off), or the name -> checked settings
    objects the command line's check made (builder/config/checks.py), -> name -> its callbacks."""
    if not (isinstance(callbacks_cfg, dict) and all(dataclasses.is_dataclass(v) for v in callbacks_cfg.values())):
        callbacks_cfg = check_callbacks(to_plain(callbacks_cfg))
    return {name: BUILDERS[name](s, run) for name, s in callbacks_cfg.items()}
