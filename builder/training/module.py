"""The LightningModule: next-token cross-entropy, AdamW, warmup + cosine, val/loss and val/ppl.

Hyperparameters are plain containers (dicts, lists, numbers, strings), so a checkpoint loads
with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from components.moe import expert_loads, router_losses, update_selection_biases

from ..checkpoint import nonfinite_tensor, training_state
from ..config.checks import is_count
from ..config.plain import to_plain
from ..errors import NonFiniteLossError
from ..model import build_model
from .fsdp import build_sharded, clip_sharded_gradients


def lr_lambda(step: int, warmup_steps: int, total_steps: int | None, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps`` (flat after).

    ``total_steps=None``: the length is not known yet (no decay)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Schedule:
    """A picklable LambdaLR function (its state_dict holds only numbers: a checkpoint restores its length)."""

    def __init__(self, warmup_steps: int, total_steps: int | None, min_ratio: float):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        return lr_lambda(step, self.warmup_steps, self.total_steps, self.min_ratio)


def no_decay_names(model: nn.Module) -> set[str]:
    """Biases, norm weights and embeddings (token and position tables) get no weight decay."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias" or p.ndim < 2 or isinstance(module, nn.Embedding):
                names.add(full)
    return names


class LitGPT(pl.LightningModule):
    """A GPT from ``model`` trained with the ``train.*`` settings.

    The cosine schedule's length is ``total_steps`` when given and positive, else ``train.total_steps``, else
    the trainer's own estimate of the optimizer steps it will take (``trainer.estimated_stepping_batches``:
    ``trainer.max_steps``, or ``trainer.max_epochs`` x batches per epoch, whichever ends first), read when
    training starts. A checkpoint keeps the length its run started with.

    ``defer_model=True`` builds the model in ``configure_model``, once the Trainer's strategy is set up: under
    ``strategy: fsdp2`` (builder/training/fsdp.py) on the meta device and sharded, so no process ever holds the whole
    model, with the values a single process would have drawn here (the random state is kept for that).
    """

    def __init__(self, model: dict, train: dict, tokenizer: dict | None = None, total_steps: int | None = None,
                 defer_model: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["defer_model"])
        self.train_cfg = train
        explicit = total_steps if is_count(total_steps) and total_steps > 0 else None
        self.total_steps: int | None = explicit or train.get("total_steps")
        self._schedule: _Schedule | None = None
        self._rng_to_restore: dict | None = None
        self._val_losses: list[torch.Tensor] = []
        self._val_loads: torch.Tensor | None = None  # a mixture of experts' choices per expert, summed over batches
        self.val_expert_loads: torch.Tensor | None = None  # the last validation's, [MoE layers, n_experts]
        self.skipped_nonfinite = 0
        self._unchecked: list[tuple[int, int, torch.Tensor]] = []  # (step, batch, loss) not yet checked for NaN/inf
        self.model: nn.Module | None = None
        self._init_rng = torch.get_rng_state() if defer_model else None  # where a build here would have drawn from
        if not defer_model:
            self._set_model(build_model(model))

    def _set_model(self, model: nn.Module) -> None:
        self.model = model
        model.set_activation_checkpointing(bool(self.train_cfg.get("activation_checkpointing", False)))
        # kept out of the module tree, so parameters keep their one name in the state dict
        object.__setattr__(self, "_forward", torch.compile(model) if self.train_cfg.get("compile") else model)

    def configure_model(self) -> None:
        """Build a deferred model (``defer_model=True``): sharded under FSDP2, else as ``__init__`` would have."""
        if self.model is not None:
            return
        cfg = self.hparams["model"]
        trainer = self._attached_trainer()
        strategy = trainer.strategy if trainer is not None else None
        if isinstance(strategy, ModelParallelStrategy):
            mesh = strategy.device_mesh
            self._set_model(build_sharded(cfg, mesh["data_parallel"], strategy.root_device, str(trainer.precision),
                                          self._init_rng, tp_mesh=mesh["tensor_parallel"]))
            return
        if self._init_rng is not None:
            torch.set_rng_state(self._init_rng)
        self._set_model(build_model(cfg))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._forward(ids)

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def router_loss(self, batch_size: int) -> torch.Tensor | float:
        """A mixture of experts' weighted load-balancing and z-losses of the last forward (0 without one), their
        unweighted values logged as ``train/load_balance`` and ``train/router_z`` and the weighted sum as
        ``train/aux_loss``."""
        router = router_losses(self.model)
        if not router:
            return 0.0
        for key, name in (("load_balance", "train/load_balance"), ("z", "train/router_z"), ("weighted", "train/aux_loss")):
            self.log(name, router[key].detach(), on_step=True, on_epoch=False, batch_size=batch_size)
        return router["weighted"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """DeepSeek-V3's selection biases move towards balance once per optimizer step (``mlp.bias_update_rate``);
        the largest overload of the step's choices is logged as ``train/expert_overload``."""
        overload = update_selection_biases(self.model)
        if overload is not None:
            self.log("train/expert_overload", overload, on_step=True, on_epoch=False)

    def training_step(self, batch, batch_idx):
        cross_entropy = self.loss(batch)
        loss = cross_entropy + self.router_loss(batch[0].shape[0])
        every = self._finite_check_every()
        if every > 1:  # no host sync here: the losses are looked at together every `every` steps
            self._unchecked.append((self.global_step, batch_idx, loss.detach()))
            if (self.global_step + 1) % every == 0:
                self.raise_if_nonfinite()
        else:
            here = not bool(torch.isfinite(loss))
            if self._first_bad_anywhere(self.global_step if here else None) is not None:
                if self.train_cfg.get("skip_nonfinite"):  # one process only (several are refused: builder/config/checks.py)
                    self.skipped_nonfinite += 1
                    self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), on_step=True, on_epoch=False)
                    return None  # Lightning skips this batch's backward and optimizer step
                raise NonFiniteLossError(
                    (f"train/loss is {loss.item()}" if here else "train/loss of another process is not finite")
                    + f" at step {self.global_step} (batch {batch_idx}); the run stops. Lower train.lr (or raise "
                    "train.warmup_steps), or set train.skip_nonfinite=true to skip such batches and count them")
        self.log("train/loss", cross_entropy, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch[0].shape[0])
        return loss

    def _finite_check_every(self) -> int:
        every = self.train_cfg.get("finite_check_every")
        if every is None:  # a CPU reads the loss for free; on a GPU each read waits for the queued work
            trainer = self._attached_trainer()
            on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
            every = max(1, int(trainer.log_every_n_steps or 1)) if on_gpu else 1
        return 1 if self.train_cfg.get("skip_nonfinite") else int(every)

    def _first_bad_anywhere(self, here: int | None) -> int | None:
        """The earliest step at which any process met a NaN/inf loss (``here``: this process's, None if none).

        Every process then stops (or skips) at the same point: one stopping alone would leave the others waiting
        in the gradients' all-reduce. One small all-reduce when several processes train, nothing otherwise."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return here
        none = torch.iinfo(torch.int64).max
        first = torch.tensor([none if here is None else here], dtype=torch.int64, device=self.device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        return None if int(first.item()) == none else int(first.item())

    def nonfinite_error(self, collective: bool = True) -> NonFiniteLossError | None:
        """The error for the first NaN/inf training loss not yet looked at (``train.finite_check_every``), else
        None; one host sync for all of them. ``collective``: every process calls this at the same point and all
        stop together, whichever saw the loss (False: this process's own losses only, as when interrupted)."""
        if not self._unchecked:
            return None
        losses = torch.stack([loss for _, _, loss in self._unchecked]).float()
        bad = ~torch.isfinite(losses)
        first = int(bad.nonzero()[0, 0]) if bool(bad.any()) else None
        step = None if first is None else self._unchecked[first][0]
        if (self._first_bad_anywhere(step) if collective else step) is None:
            self._unchecked.clear()
            return None
        seen = (f"seen at step {self._unchecked[-1][0]}: the loss is checked every {self._finite_check_every()} "
                "steps, train.finite_check_every")
        what = (f"train/loss is {losses[first].item()} at step {step} (batch {self._unchecked[first][1]}; {seen})"
                if first is not None else f"train/loss of another process is not finite ({seen})")
        return NonFiniteLossError(
            f"{what}; the run stops, and no checkpoint holds weights that step moved. Lower train.lr (or raise "
            "train.warmup_steps), or set train.skip_nonfinite=true to skip such batches and count them")

    def raise_if_nonfinite(self) -> None:
        if (error := self.nonfinite_error()) is not None:
            raise error

    def on_validation_epoch_start(self) -> None:
        self.raise_if_nonfinite()  # the weights validation would judge must be from finite losses

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()

    def validation_step(self, batch, batch_idx):
        self._val_losses.append(self.loss(batch).detach())
        loads = expert_loads(self.model)
        if loads is not None:  # a mixture of experts: the choices per expert over the validation batches
            self._val_loads = loads if self._val_loads is None else self._val_loads + loads

    def log_expert_load(self) -> None:
        """``val/expert_load_max`` and ``val/expert_load_min``: the busiest and idlest expert of any layer over the
        validation batches, as a multiple of an even load (1: every expert took its share)."""
        loads, self._val_loads = self._val_loads, None
        self.val_expert_loads = loads  # [MoE layers, n_experts]: the attention probe draws it
        if loads is None:
            return
        share = loads.float() / loads.sum(dim=-1, keepdim=True) * loads.shape[-1]
        self.log("val/expert_load_max", share.max(), sync_dist=True)
        self.log("val/expert_load_min", share.min(), sync_dist=True)

    def on_validation_epoch_end(self):
        if not self._val_losses:
            return
        mean = torch.stack(self._val_losses).mean()
        self._val_losses.clear()
        here = not bool(torch.isfinite(mean))
        if self._first_bad_anywhere(self.global_step if here else None) is not None \
                and not self.train_cfg.get("skip_nonfinite"):
            raise NonFiniteLossError(
                (f"val/loss is {mean.item()}" if here else "val/loss of another process is not finite")
                + f" at step {self.global_step}: the model no longer computes a finite loss; the run stops. Lower "
                "train.lr (or raise train.warmup_steps)")
        self.log("val/loss", mean, prog_bar=True, sync_dist=True)
        self.log_expert_load()
        self.log("val/ppl", torch.exp(mean), sync_dist=True)

    def configure_optimizers(self):
        t = self.train_cfg
        skip = no_decay_names(self.model)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if name in skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        # fused AdamW runs on CPU and CUDA tensors alike (torch >= 2.4): on this project's 2-core CPU it
        # steps a 10.8M-parameter model in 9 ms against foreach's 27 ms. Not with a loss scaler (16-mixed
        # on GPU): it must unscale the gradients before they are clipped, and a fused step unscales inside.
        device = next(self.model.parameters()).device.type
        fused = bool(t.get("fused_optimizer", True)) and device in ("cpu", "cuda") and not self._loss_scaled()
        optimizer = torch.optim.AdamW(groups, lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"],
                                      fused=fused or None, foreach=None if fused else True)
        # total_steps None: on_train_start reads the trainer's estimate. Reading it here would build the training
        # loader before a checkpoint is restored, and Lightning would then never restore the loader's position
        self._schedule = _Schedule(t["warmup_steps"], self.total_steps, t["min_lr"] / t["lr"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _loss_scaled(self) -> bool:
        """True when a GradScaler scales the loss (16-mixed on a GPU): gradients are scaled until unscaled."""
        trainer = self._attached_trainer()
        return trainer is not None and getattr(trainer.strategy.precision_plugin, "scaler", None) is not None

    def _attached_trainer(self):
        """The Trainer this module is attached to, or None (Lightning's ``trainer`` property raises when there is
        none)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not gradient_clip_val:
            return
        algorithm = str(gradient_clip_algorithm or "norm").split(".")[-1].lower()
        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy):  # FSDP2: the norm of DTensor shards is of the whole model
            clip_sharded_gradients(self.parameters(), gradient_clip_val, algorithm)
            return
        if isinstance(strategy, FSDPStrategy) and algorithm == "norm":
            # the norm of sharded gradients is FSDP's to compute (torch's clip_grad_norm_ sees one shard)
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False) and not self._loss_scaled():
            # a fused AdamW: Lightning refuses to clip for it under mixed precision, in case a loss scaler
            # left the gradients scaled; with no scaler (32-true, bf16-mixed) they are the true gradients
            clip = torch.nn.utils.clip_grad_norm_ if algorithm == "norm" else torch.nn.utils.clip_grad_value_
            clip(self.parameters(), gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_start(self) -> None:
        schedule = self._schedule
        if schedule is not None and not (schedule.total_steps and schedule.total_steps > 0):
            estimate = self.trainer.estimated_stepping_batches  # the loader is built (and restored) by now
            if math.isfinite(estimate) and estimate > 0:
                schedule.total_steps = int(estimate)
            else:
                rank_zero_warn("the run has no end (trainer.max_steps=-1 and trainer.max_epochs=-1): the learning rate "
                               "stays at train.lr after warmup; set train.total_steps for a cosine decay")
        if self._rng_to_restore is not None:  # after the loaders drew their seeds, as in the uninterrupted run
            _set_rng(self._rng_to_restore)
            self._rng_to_restore = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every save, on every process, before the strategy writes anything: never a checkpoint of weights a
        NaN/inf loss has stepped, nor of weights that are not finite (an update from a finite loss can overflow
        them). The weights are checked here rather than in the checkpoint IO, which runs on process 0 alone under
        DDP: a refusal there would leave the others waiting in the save's barrier; here all stop together."""
        self.raise_if_nonfinite()
        bad = nonfinite_tensor(training_state(checkpoint))  # weights, optimizer state: this process's shards
        if self._first_bad_anywhere(self.global_step if bad else None) is not None:
            what = "the optimizer's state is" if bad and bad.startswith("optimizer_states") else "the weights are"
            raise NonFiniteLossError(
                f"{what} no longer finite at step {self.global_step} ("
                + (f"{bad} holds NaN or inf" if bad else "in another process's shard")
                + "; an update can overflow them even from a finite loss); the run stops without writing a checkpoint "
                "of them. Lower train.lr (or raise train.warmup_steps, or set trainer.gradient_clip_val)")
        # plain containers only: weights_only=True must be able to load every checkpoint
        checkpoint["hyper_parameters"] = to_plain(dict(self.hparams))
        # the random state (dropout), so a resumed run draws what the uninterrupted one would have
        checkpoint["rng_states"] = _get_rng()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")


def _get_rng() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device (every process draws alike)
    return states


def _set_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
