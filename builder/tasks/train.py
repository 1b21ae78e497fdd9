"""task=train: the data module, the model, the Trainer with its callbacks and loggers, then fit."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.strategies import FSDPStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from components import Block

from ..budget import parameter_budget
from ..checkpoint import (
    NonFiniteWeights,
    check_resumable,
    checkpoints_below,
    is_sharded_checkpoint,
    last_finite_sentence,
    nonfinite_weights,
    refuse_nonfinite,
    written_at,
)
from ..checkpoint import check_sharded_resumable as sharded_resumable
from ..config.checks import checked, skip_nonfinite_refusal
from ..config.plain import to_plain
from ..config.printing import inputs_checked
from ..config.schema import STRATEGY_KEYS
from ..data.datamodule import TokenDataModule
from ..errors import ConfigError, NonFiniteLossError, compile_refusal
from ..files import atomic_write, temp_files
from ..interp.tour import summary as tour_summary
from ..interp.tour import write_tour
from ..memory import check_training_memory
from ..report import write_budget_files
from ..training.callbacks import AtomicCheckpointIO, RunContext, SaveOnInterrupt, ValidateAtEnd, make_callbacks
from ..training.fsdp import FullyShardedStrategy, clear_staging
from ..training.launch import for_this_job
from ..training.loggers import finish_wandb, log_config, log_image, log_table, make_loggers_from_config, wandb_run_dir
from ..training.module import LitGPT

# Lightning 2.6 builds torch's deprecated LeafSpec on every batch; torch 2.13 warns about it each run.
# Not ours to fix, and it buries the run's own output.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


# an interrupted run exits as a shell reports a process killed by the signal (128 + its number): SLURM's requeue and
# `a && b` see a run that did not finish, whose last.ckpt resumes it
EXIT_SIGTERM, EXIT_SIGINT = 128 + 15, 128 + 2


def resume_hint(out_dir: Path) -> str:
    """What to add to the same command to resume this run where it stopped."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"hydra.sweep.dir={hc.sweep.dir} ckpt_path=last (each job resumes from its own directory)"
    return f"hydra.run.dir={out_dir} ckpt_path=last"


def make_datamodule(cfg):
    settings = checked(cfg)
    data = settings.data
    if data.num_workers is None:
        gpu = torch.cuda.is_available() and settings.trainer.accelerator != "cpu"
        data = dataclasses.replace(data, num_workers=4 if gpu else 0)
    return TokenDataModule.from_settings(data)


def find_checkpoint(ckpt_path: str | None, out_dir: Path, paths=None, check=None) -> str | None:
    """The checkpoint to resume from, checked by ``check(path)`` (the run's whole check of a checkpoint, which raises
    ConfigError; by default: its weights are finite), or None to start from the beginning. Each candidate is read
    once, by that check.

    ``last`` is this run's own newest checkpoint (by time written) in ``out_dir/checkpoints`` that passes: the run
    directory of a single run (resumed with the same ``hydra.run.dir``) or a sweep job's own directory — never
    another run's. Periodic ``step-N.ckpt`` files count too, so a run killed with SIGKILL resumes from its last one;
    one holding NaN or inf (:class:`NonFiniteWeights`, written before each save was checked) is passed over, named;
    any other refusal stops. None there yet (the first launch of a requeued job, a sweep job that never started):
    training starts from the beginning, with a note that names the newest checkpoint under ``paths.runs_dir`` /
    ``paths.sweeps_dir``, if any."""
    if check is None:
        def check(path):
            refuse_nonfinite(nonfinite_weights(path), "ckpt_path", path)
    if ckpt_path in (None, ""):
        return None
    if ckpt_path != "last":
        check(ckpt_path)
        return ckpt_path
    own = checkpoints_below(Path(out_dir), "checkpoints/*.ckpt")
    for path in reversed(own):
        try:
            check(str(path))
        except NonFiniteWeights as err:
            rank_zero_info(f"ckpt_path=last: passing over {path}: it is not finite ({err.tensor} holds NaN or inf)")
            continue
        return str(path)
    paths = paths or {}
    elsewhere = [c for k in ("runs_dir", "sweeps_dir") if paths.get(k) for c in checkpoints_below(Path(str(paths[k])))]
    hint = ""
    if elsewhere:
        newest = max(elsewhere, key=written_at)
        hint = f" (to resume another run: ckpt_path={newest}, its newest, or that run's hydra.run.dir with ckpt_path=last)"
    which = "with finite weights" if own else "yet"
    rank_zero_info(f"ckpt_path=last: no checkpoint of this run in {Path(out_dir) / 'checkpoints'} {which}; training "
                   f"starts from the beginning{hint}")
    return None


def finished_earlier(out_dir: Path, max_steps) -> dict | None:
    """The summary of a run that already trained to ``max_steps`` in ``out_dir`` (a re-run sweep keeps it)."""
    try:
        summary = json.loads((Path(out_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    done = isinstance(summary, dict) and isinstance(max_steps, int) and max_steps > 0
    return summary if done and int(summary.get("steps") or 0) >= max_steps else None


def make_strategy(trainer_kwargs: dict, checkpoint_io):
    """The Trainer's strategy: ``fsdp2`` (torch's fully_shard per Block, the model built sharded:
    builder/training/fsdp.py; trainer=fsdp and fsdp_cpu), ``fsdp`` (Lightning's FSDPStrategy, each Block a unit),
    else Lightning's own name. ``trainer.checkpoint_format``
    (sharded | full; fsdp2 only) and ``trainer.tensor_parallel`` are taken out of ``trainer_kwargs``: they are not
    Trainer arguments. (The settings
    were checked against TrainerConfig's declaration and rules: builder/config/schema.py.)"""
    strategy = trainer_kwargs.get("strategy", "auto")
    checkpoint_format, tensor_parallel = (trainer_kwargs.pop(key, None) for key in STRATEGY_KEYS)
    if strategy == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD", checkpoint_io=checkpoint_io)
    if strategy == "fsdp2":
        fsdp2 = FullyShardedStrategy(checkpoint_format or "sharded", tensor_parallel or 1)
        fsdp2.checkpoint_io = checkpoint_io  # a full checkpoint is written atomically, as every other
        return fsdp2
    return strategy


def check_sharded_resumable(path, model_cfg: dict, strategy) -> None:
    """A sharded checkpoint (a directory) resumes only under fsdp2, and only the model it holds; nothing in it runs
    code (builder.checkpoint.check_sharded_resumable)."""
    if not isinstance(strategy, FullyShardedStrategy):
        raise ConfigError("ckpt_path", str(path), "a checkpoint file: this directory holds a sharded (fsdp2) "
                          "checkpoint, which only trainer.strategy=fsdp2 resumes")
    sharded_resumable(path, model_cfg)
    refuse_nonfinite(nonfinite_weights(path), "ckpt_path", path)


# the folders of a run that task=train writes atomically (builder/files.py): where a killed write leaves its temp file
WRITTEN_ATOMICALLY = (".", "checkpoints", "attention")


def remove_stale_writes(out_dir: Path) -> list[Path]:
    """Remove what writes a kill cut short left in this run's own folders — atomic writes' ``.NAME.XXXXXXXX.tmp``
    files, sharded checkpoints' ``.NAME.ckpt.tmp`` / ``.old`` directories (builder/training/fsdp.py) — before the run
    writes anything; return them. Nothing else is touched: other names, other folders (the loggers' own), the
    folders below these. The run directory is this run's alone (builder/config/preflight.py), so none is in use."""
    removed = [f for sub in WRITTEN_ATOMICALLY for f in temp_files(out_dir / sub)]
    for f in removed:
        f.unlink(missing_ok=True)
    removed += clear_staging(out_dir / "checkpoints")
    if removed:
        rank_zero_info(f"removed what killed writes left in {out_dir}: {', '.join(str(p.relative_to(out_dir)) for p in removed)}")
    return removed


@rank_zero_only
def write_budget(budget: dict, out_dir: Path, loggers) -> None:
    write_budget_files([budget], out_dir)
    rows = [[g, v["weight"], v["bias"], v["total"], v["total"] / budget["total_params"]] for g, v in budget["groups"].items()]
    log_table(loggers, "budget/groups", ["group", "weights", "biases", "total", "share"], rows)
    log_image(loggers, "budget/chart", out_dir / "budget.png")


def run(cfg, out_dir: Path, model_name: str | None = None) -> int:
    out_dir = Path(out_dir)
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cfg = to_plain(cfg.model)  # (checked by builder.tasks.run_task before this module was imported)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    if model_cfg["vocab_size"] != dm.vocab_size:
        rank_zero_info(f"model.vocab_size: {model_cfg['vocab_size']} -> {dm.vocab_size} (the tokenizer's)")
        model_cfg["vocab_size"] = dm.vocab_size
    budget = parameter_budget(model_cfg, model_name)
    check_training_memory(budget, cfg)  # a run that cannot fit is refused before anything is allocated
    settings = checked(cfg)
    trainer_kwargs = dataclasses.asdict(settings.trainer)
    train_cfg = dataclasses.asdict(settings.train)
    if trainer_kwargs.get("max_steps") is None:  # null: no step limit, Lightning's -1
        trainer_kwargs["max_steps"] = -1
    if isinstance(trainer_kwargs["val_check_interval"], float) and trainer_kwargs["check_val_every_n_epoch"] is None:
        trainer_kwargs["check_val_every_n_epoch"] = 1  # a share of each epoch: Lightning counts it per epoch
    if cfg.ckpt_path == "last" and (done := finished_earlier(out_dir, trainer_kwargs["max_steps"])):
        print(f"ckpt_path=last: this run already trained {done['steps']} steps in {out_dir} (summary.json); "
              "nothing to train (raise trainer.max_steps to train on)")
        return 0
    checkpoint_io = AtomicCheckpointIO()
    strategy = make_strategy(trainer_kwargs, checkpoint_io)  # (trainer.checkpoint_format refused here if misplaced)

    def resumable(path) -> None:  # a file or a sharded directory of this model, with its optimizer, finite
        if is_sharded_checkpoint(path):
            check_sharded_resumable(path, model_cfg, strategy)
        else:
            check_resumable(path, model_cfg)

    ckpt_path = find_checkpoint(cfg.ckpt_path, out_dir, to_plain(cfg.get("paths")), resumable)
    logger_cfg = to_plain(cfg.logger) if cfg.logger else {}

    # everything that can be refused is checked before the first file is written
    callbacks_cfg = settings.callbacks
    if trainer_kwargs.get("enable_checkpointing") is False:  # no checkpoints asked for: the callback that writes them goes
        callbacks_cfg = {k: v for k, v in callbacks_cfg.items() if k != "model_checkpoint"}
    built = make_callbacks(callbacks_cfg, RunContext(
        tokenizer=dm.tokenizer, out_dir=out_dir, seed=cfg.seed, flops_per_token=budget["flops_per_token"]["training"],
        precision=str(trainer_kwargs.get("precision", "32")),
        has_logger=any(options not in (None, False) for options in logger_cfg.values()),
        progress_bar=trainer_kwargs.get("enable_progress_bar", True)))
    inputs_checked(model_cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the same init whatever the data step drew
    # the schedule's length: train.total_steps, else the trainer's estimate (max_steps, or max_epochs x batches)
    # fsdp2: the model is built in configure_model, sharded (from this random state: the same weights as here)
    module = LitGPT(model_cfg, train_cfg, dm.tokenizer.to_dict(), defer_model=isinstance(strategy, FullyShardedStrategy))
    config = to_plain(cfg)
    loggers = make_loggers_from_config(logger_cfg, out_dir, config=config, hparams_now=False)  # no file yet
    ckpt_dir = out_dir / "checkpoints"
    on_interrupt = SaveOnInterrupt(ckpt_dir / "last.ckpt", resume_hint(out_dir))  # always on
    callbacks = [c for group in built.values() for c in group] + [on_interrupt, ValidateAtEnd()]
    trainer_kwargs.setdefault("enable_checkpointing", "model_checkpoint" in built)
    trainer_kwargs["strategy"] = strategy
    # the data module shards its own sampler (builder/data/windows.py EpochSampler): exact DDP = bigger batch
    trainer = pl.Trainer(**trainer_kwargs, default_root_dir=str(out_dir), callbacks=callbacks, logger=loggers or False,
                         plugins=[checkpoint_io] if isinstance(strategy, str) else None, use_distributed_sampler=False)
    if train_cfg["skip_nonfinite"] and trainer.world_size > 1:  # devices=auto or -1: Lightning's count, before launch
        raise skip_nonfinite_refusal(trainer.world_size)
    if trainer.is_global_zero:
        remove_stale_writes(out_dir)
    log_config(loggers, config)  # the loggers' first files, now that nothing is left to refuse
    for_this_job(trainer)  # multirun + DDP: the extra processes run this job only (builder/training/launch.py)
    if trainer.is_global_zero:
        write_budget(budget, out_dir, loggers)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit as stop:  # Lightning ends a fit cut short by SIGTERM with status 0, by Ctrl-C with 1
        if isinstance(stop, SIGTERMException):
            raise SystemExit(EXIT_SIGTERM) from None
        if on_interrupt.interrupted:
            raise SystemExit(EXIT_SIGINT) from None
        raise
    except NonFiniteLossError as err:  # which checkpoint to go back to, read from disk to be sure
        raise NonFiniteLossError(f"{err}. {last_finite_sentence(ckpt_dir, ckpt_path)}") from err
    except RuntimeError as err:
        refusal = compile_refusal("train.compile", "the model's kernels", err) if train_cfg.get("compile") else None
        if refusal is None:
            raise
        raise refusal from None

    if trainer.is_global_zero:
        best, throughput, probe = (built.get(name, [None])[0] for name in ("model_checkpoint", "throughput",
                                                                           "attention_probe"))
        samples = out_dir / "samples.txt"
        summary = {
            "run_dir": str(out_dir),
            "last_checkpoint": str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").exists() else None,
            "best_checkpoint": (best.best_model_path or None) if best else None,
            "best_val_loss": float(best.best_model_score) if best and best.best_model_score is not None else None,
            "val_loss": _metric(trainer, "val/loss"),
            "val_ppl": _metric(trainer, "val/ppl"),
            "tokens_per_s": throughput.mean_tokens_per_s if throughput else None,
            "steps": trainer.global_step,
            "wall_time_s": round(time.perf_counter() - started, 3),
            "budget": str(out_dir / "budget.json"),
            "samples": str(samples) if "text_samples" in built and samples.exists() else None,
            "attention": [str(p) for p in probe.paths] if probe else [],
            "wandb": wandb_run_dir(loggers),
        }
        atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        print_summary(summary, built)
        if cfg.get("tour"):
            _tour(cfg, module, dm.tokenizer, model_cfg, out_dir, sharded=isinstance(strategy, FullyShardedStrategy))
    finish_wandb()
    return 0


def _tour(cfg, module, tokenizer, model_cfg: dict, out_dir: Path, sharded: bool) -> None:
    """tour=true: lecture.html (and, for a model of the lecture's language, lecture.json) of the trained model."""
    if sharded:
        print("tour=true: skipped, the weights are sharded across processes; run task=tour on a full checkpoint")
        return
    page, measured = write_tour(out_dir / "lecture.html", module.model.to("cpu").eval(), tokenizer, model_cfg, cfg.text,
                                title=f"The lecture, with the model trained in {out_dir.name}", name=out_dir.name)
    if measured is not None:
        print(tour_summary(measured))
    print(f"  the lecture   : {page} (open it from disk; no network)")


def _metric(trainer, key: str):
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def print_summary(s: dict, callbacks=()) -> None:
    """The run's figures and files (``s``: summary.json); a file the run did not write is ``none``, with why: its
    callback is off (not in ``callbacks``), or no validation ran. Never a bare None."""
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731

    def written(path, callback: str, otherwise: str) -> str:
        if path is not None:
            return str(path)
        return f"none ({otherwise})" if callback in callbacks else f"none (callbacks.{callback} is off)"

    checkpoint = written(s["last_checkpoint"], "model_checkpoint", "not written")
    if "model_checkpoint" in callbacks:
        checkpoint += f" (best: {written(s['best_checkpoint'], 'model_checkpoint', 'no validation ran')})"
    lines = [
        "",
        f"Done: {s['steps']} steps, val/loss {fmt(s['val_loss'], '.4f')} (ppl {fmt(s['val_ppl'], '.2f')}), "
        f"{fmt(s['tokens_per_s'], ',.0f')} tokens/s",
        f"  run directory : {s['run_dir']}",
        f"  checkpoint    : {checkpoint}",
        f"  budget        : {s['budget']} (+ budget.md, budget.png)",
        f"  samples       : {written(s['samples'], 'text_samples', 'no validation ran')}",
    ]
    if s["attention"]:
        lines.append(f"  attention     : {s['attention'][-1]} (every head on the probe phrase, at each validation)")
    if s["wandb"]:
        lines.append(f"  wandb run     : {s['wandb']}  (offline runs upload with: wandb sync {s['wandb']})")
    print("\n".join(lines))
