"""The ``train.*`` and ``trainer.*`` numbers a training run needs, checked without importing Lightning: the command
line's precheck refuses a bad one in the time composing takes, and task=train checks them again for its job."""

from __future__ import annotations

import math

from ..errors import ConfigError


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_train(train: dict) -> None:
    """The ``train.*`` numbers the optimizer and schedule use, or a ConfigError naming the first bad one."""
    lr = train.get("lr")
    if not is_number(lr) or lr <= 0:
        raise ConfigError("train.lr", lr, "a positive number (the peak learning rate, e.g. 1e-3)")
    min_lr = train.get("min_lr")
    if not is_number(min_lr) or not 0 <= min_lr <= lr:
        raise ConfigError("train.min_lr", min_lr, f"a number from 0 to train.lr ({lr}): where the cosine decay ends")
    warmup = train.get("warmup_steps")
    if not is_count(warmup) or warmup < 0:
        raise ConfigError("train.warmup_steps", warmup, "a whole number of optimizer steps >= 0")
    total = train.get("total_steps")
    if total is not None and (not is_count(total) or total < 1):
        raise ConfigError("train.total_steps", total, "null (the trainer's estimate of the steps it will take: "
                          "trainer.max_steps, or trainer.max_epochs x batches per epoch) or a whole number >= 1")
    decay = train.get("weight_decay", 0.0)
    if not is_number(decay) or decay < 0:
        raise ConfigError("train.weight_decay", decay, "a number >= 0")
    betas = train.get("betas", [0.9, 0.95])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError("train.betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.95]")
    eps = train.get("eps", 1e-8)
    if not is_number(eps) or eps <= 0:
        raise ConfigError("train.eps", eps, "a positive number, e.g. 1e-8")
    every = train.get("finite_check_every")
    if every is not None and (not is_count(every) or every < 1):
        raise ConfigError("train.finite_check_every", every, "null (every step on a CPU, every "
                          "trainer.log_every_n_steps on a GPU) or a whole number of steps >= 1")
    if every not in (None, 1) and train.get("skip_nonfinite"):
        raise ConfigError("train.finite_check_every", every, "1 or null with train.skip_nonfinite=true: a batch is "
                          "skipped before its backward, so its loss must be checked at once")


def check_val_interval(trainer_kwargs: dict) -> None:
    """``trainer.val_check_interval``: N training batches (N >= 1), or a fraction of each epoch (0 < f <= 1), for
    which Lightning needs ``check_val_every_n_epoch`` (1 unless set)."""
    value = trainer_kwargs.get("val_check_interval")
    if value is None or isinstance(value, str):  # null: once an epoch; a string: a time Lightning parses
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, int) and value < 1) or (isinstance(value, float) and not 0 < value <= 1):
        raise ConfigError("trainer.val_check_interval", value, "a whole number of training batches >= 1, or a "
                          "fraction of each epoch in (0, 1] (0.5: twice an epoch)")
    if isinstance(value, float) and trainer_kwargs.get("check_val_every_n_epoch") is None:
        trainer_kwargs["check_val_every_n_epoch"] = 1


def processes_asked(trainer: dict) -> int | None:
    """How many training processes ``trainer.devices`` x ``trainer.num_nodes`` ask for when it is written out (an
    int, a list of devices or a comma list); None when Lightning decides (``auto``, ``-1``: every device found)."""
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    count = len(devices) if isinstance(devices, (list, tuple)) else devices if is_count(devices) and devices >= 0 else None
    nodes = nodes if is_count(nodes) and nodes >= 1 else 1
    return None if count is None else max(count, 1) * nodes


def check_skip_nonfinite(train: dict, processes: int | None) -> None:
    """``train.skip_nonfinite`` needs one process: Lightning cannot skip a batch in distributed training (it raises
    mid-run when training_step returns None)."""
    if train.get("skip_nonfinite") and processes is not None and processes > 1:
        raise ConfigError("train.skip_nonfinite", True, f"false when training on {processes} processes "
                          "(trainer.devices x trainer.num_nodes): Lightning cannot skip a batch in distributed "
                          "training; a NaN/inf loss then stops every process at that step, keeping the checkpoints "
                          "written before it")
