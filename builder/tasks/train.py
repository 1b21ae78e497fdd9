"""task=train: the data module, the model, the Trainer with its callbacks and loggers, then fit."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from components import Block

from ..budget import parameter_budget
from ..config.plain import to_plain
from ..data.datamodule import TokenDataModule
from ..errors import ConfigError
from ..files import atomic_write
from ..model import resolve
from ..report import write_budget_files
from ..training.callbacks import AtomicCheckpointIO, RunContext, SaveOnInterrupt, make_callbacks
from ..training.launch import for_this_job
from ..training.loggers import finish_wandb, log_image, log_table, make_loggers_from_config, wandb_run_dir
from ..training.module import LitGPT

# Lightning 2.6 builds torch's deprecated LeafSpec on every batch; torch 2.13 warns about it each run.
# Not ours to fix, and it buries the run's own output.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def make_datamodule(cfg):
    data = to_plain(cfg.data)
    if data.get("num_workers") is None:
        data["num_workers"] = 4 if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else 0
    return TokenDataModule(**data)


def find_checkpoint(ckpt_path: str | None, out_dir: Path, paths=None) -> str | None:
    """``last``: the newest checkpoint (by time written) in this run directory, else under ``paths.runs_dir`` and
    ``paths.sweeps_dir`` (``outputs/``, ``multirun/``).

    Periodic ``step-N.ckpt`` files count too, so a run killed with SIGKILL resumes from its last one."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise ConfigError("ckpt_path", ckpt_path, "an existing checkpoint file, or `last`")
        return ckpt_path
    paths = paths or {}
    roots = [Path(out_dir)] + [Path(str(paths[k])).expanduser() for k in ("runs_dir", "sweeps_dir") if paths.get(k)]
    for root in roots:
        found = [p for p in root.glob("**/checkpoints/*.ckpt") if not p.name.startswith(".")] if root.is_dir() else []
        found.sort(key=lambda p: p.stat().st_mtime)  # (a hidden .name.ckpt.XXXX.tmp: a write a kill cut short)
        if found:
            return str(found[-1])
    raise ConfigError("ckpt_path", "last", "a checkpoint to resume from; none found in "
                      + " or under ".join(f"{r}/" for r in roots))


def make_strategy(trainer_kwargs: dict, checkpoint_io):
    strategy = trainer_kwargs.get("strategy", "auto")
    if strategy == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD", checkpoint_io=checkpoint_io)
    return strategy


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
    model_cfg = to_plain(cfg.model)
    resolve(model_cfg)  # a bad model config fails before any data is read
    dm = make_datamodule(cfg)
    dm.setup("fit")
    if model_cfg["vocab_size"] != dm.vocab_size:
        rank_zero_info(f"model.vocab_size: {model_cfg['vocab_size']} -> {dm.vocab_size} (the tokenizer's)")
        model_cfg["vocab_size"] = dm.vocab_size
    budget = parameter_budget(model_cfg, model_name)
    trainer_kwargs = to_plain(cfg.trainer)
    train_cfg = to_plain(cfg.train)
    total_steps = train_cfg["total_steps"] or trainer_kwargs.get("max_steps") or 1000
    ckpt_path = find_checkpoint(cfg.ckpt_path, out_dir, to_plain(cfg.get("paths")))
    logger_cfg = to_plain(cfg.logger) if cfg.logger else {}

    # everything that can be refused is checked before the first file is written
    built = make_callbacks(cfg.get("callbacks"), RunContext(
        tokenizer=dm.tokenizer, out_dir=out_dir, seed=cfg.seed, flops_per_token=budget["flops_per_token"]["training"],
        precision=str(trainer_kwargs.get("precision", "32")),
        has_logger=any(options not in (None, False) for options in logger_cfg.values()),
        progress_bar=trainer_kwargs.get("enable_progress_bar", True)))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the same init whatever the data step drew
    module = LitGPT(model_cfg, train_cfg, dm.tokenizer.to_dict(), total_steps)
    loggers = make_loggers_from_config(logger_cfg, out_dir, config=to_plain(cfg))
    ckpt_dir = out_dir / "checkpoints"
    callbacks = [c for group in built.values() for c in group] + [SaveOnInterrupt(ckpt_dir / "last.ckpt")]  # always on
    trainer_kwargs.setdefault("enable_checkpointing", "model_checkpoint" in built)
    checkpoint_io = AtomicCheckpointIO()
    strategy = make_strategy(trainer_kwargs, checkpoint_io)
    trainer_kwargs["strategy"] = strategy
    # the data module shards its own sampler (builder/data/windows.py EpochSampler): exact DDP = bigger batch
    trainer = pl.Trainer(**trainer_kwargs, default_root_dir=str(out_dir), callbacks=callbacks, logger=loggers or False,
                         plugins=[checkpoint_io] if isinstance(strategy, str) else None, use_distributed_sampler=False)
    for_this_job(trainer)  # multirun + DDP: the extra processes run this job only (builder/training/launch.py)
    if trainer.is_global_zero:
        write_budget(budget, out_dir, loggers)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

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
        print_summary(summary)
    finish_wandb()
    return 0


def _metric(trainer, key: str):
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def print_summary(s: dict) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "",
        f"Done: {s['steps']} steps, val/loss {fmt(s['val_loss'], '.4f')} (ppl {fmt(s['val_ppl'], '.2f')}), "
        f"{fmt(s['tokens_per_s'], ',.0f')} tokens/s",
        f"  run directory : {s['run_dir']}",
        f"  checkpoint    : {s['last_checkpoint']} (best: {s['best_checkpoint']})",
        f"  budget        : {s['budget']} (+ budget.md, budget.png)",
        f"  samples       : {s['samples']}",
    ]
    if s["attention"]:
        lines.append(f"  attention     : {s['attention'][-1]} (every head on the probe phrase, at each validation)")
    if s["wandb"]:
        lines.append(f"  wandb run     : {s['wandb']}  (offline runs upload with: wandb sync {s['wandb']})")
    print("\n".join(lines))
