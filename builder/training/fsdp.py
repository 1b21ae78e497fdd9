"""FSDP2 (torch's ``fully_shard``) under Lightning's ``ModelParallelStrategy``: ``strategy: fsdp2``.

The model is built on the meta device (no values), each transformer :class:`~components.Block` and then the whole
model are sharded with ``fully_shard`` over all processes, and only then is memory allocated: each process holds
its shard of every parameter and never the whole model. The values are the ones a single process would draw:
:func:`record_init` builds the model once more under a fake-tensor mode (shapes, no storage) and writes down every
initialisation call (``nn.init.*``, ``Tensor.normal_`` ...) in order; :func:`materialize` replays them from the same
random state one full tensor at a time (the largest parameter is the most held at once) and keeps each process's
shard. So a 2-process run starts from exactly the weights of a 1-process run with the same seed — and ends with
them, given the doubled batch (tests/test_fsdp.py).

Checkpoints: ``trainer.checkpoint_format: sharded`` (default) writes each ``.ckpt`` as a directory of shards (torch
distributed checkpoint; nothing is gathered); ``full`` gathers the weights and optimizer state onto process 0 and
writes one file. Either resumes (``ckpt_path=``), and ``builder.load_model``, ``task=sample`` and ``task=export``
read either (builder/checkpoint.py reads a sharded one in one process). A sharded one is read through
builder/sharded.py, never torch's own reader, which unpickles (``load_checkpoint``).
``python -m torch.distributed.checkpoint.format_utils dcp_to_torch <dir> <file>`` turns a sharded one into a file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.overrides import TorchFunctionMode

from components import Block

from .. import sharded
from ..checkpoint import SHARDED, SHARDED_META, is_sharded_checkpoint
from ..config.parallel import process_problem
from ..errors import ConfigError
from ..model import build_model
from . import tensor_parallel

CHECKPOINT_FORMATS = ("sharded", "full")
# in-place initialisers that overwrite every value without reading any (the tensor's earlier values do not matter)
_OVERWRITE = {"uniform_", "normal_", "zero_", "fill_", "random_", "exponential_", "cauchy_", "log_normal_",
              "geometric_", "bernoulli_", "copy_"}


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP: one data-parallel mesh dimension over every process, or with
    ``tensor_parallel`` N > 1 a data-parallel x tensor-parallel mesh (N consecutive processes split each block:
    builder/training/tensor_parallel.py). The LightningModule shards itself in ``configure_model``
    (:func:`build_sharded`)."""

    def __init__(self, checkpoint_format: str = "sharded", tensor_parallel: int = 1, **kwargs):
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConfigError("trainer.checkpoint_format", checkpoint_format,
                              f"one of {', '.join(CHECKPOINT_FORMATS)} (sharded: a directory of shards per checkpoint; "
                              "full: one file gathered on process 0)")
        if tensor_parallel > 1 and checkpoint_format != "sharded":
            raise ConfigError("trainer.checkpoint_format", checkpoint_format, f"sharded under trainer.tensor_parallel="
                              f"{tensor_parallel}: a full checkpoint's optimizer state is keyed by parameter number on "
                              "process 0, where the tensor-parallel q/k/v rows are not put back in their built order; "
                              "a sharded one is (and task=sample / export / builder.load_model read it as a full one)")
        super().__init__(save_distributed_checkpoint=checkpoint_format == "sharded", **kwargs)
        self.checkpoint_format = checkpoint_format
        self.tensor_parallel = int(tensor_parallel)
        self._orders: dict | None = None

    def _row_orders(self) -> dict:
        """The parameters whose rows training holds reordered (tensor parallelism's q/k/v), by their names in the
        LightningModule's state dict; empty without tensor parallelism."""
        if self.tensor_parallel == 1:
            return {}
        if self._orders is None:
            self._orders = tensor_parallel.row_orders(self.lightning_module.hparams["model"], self.tensor_parallel)
        return self._orders

    def lightning_module_state_dict(self) -> dict:
        orders = self._row_orders()
        if not orders:
            return super().lightning_module_state_dict()
        state = get_model_state_dict(self.model)  # (sharded: each process's shards, on its device)
        return tensor_parallel.reorder(state, orders, "model.")

    def optimizer_state(self, optimizer) -> dict:
        orders = self._row_orders()
        if not orders:
            return super().optimizer_state(optimizer)
        state = get_optimizer_state_dict(self.model, getattr(optimizer, "_optimizer", optimizer))
        return tensor_parallel.reorder(state, orders, "model.")

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """A sharded checkpoint is written into a hidden ``.NAME.tmp`` directory beside its place, then renamed
        over it (a full one goes through the trainer's AtomicCheckpointIO): a run killed mid-write never leaves a
        half-written ``last.ckpt``, nor a mix of two steps' shards."""
        if self.checkpoint_format != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp, old = staging(path)
        if self.global_rank == 0:
            for stale in (tmp, old):
                _remove(stale)
        self.barrier()
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except BaseException as err:  # a failed write (a full disk) leaves no partial directory
            if self.global_rank == 0:
                _remove(tmp)
            refused = refused_write(err)
            if refused is not None:  # the one paragraph of a full disk, naming the checkpoint (not its staging)
                raise OSError(refused.errno, refused.strerror, str(path)) from err
            raise
        self.barrier()  # every shard and meta.pt written
        if self.global_rank == 0:
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            _remove(old)
        self.barrier()

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Lightning's own steps for a resume, the sharded folder read through builder/sharded.py: torch's reader
        would unpickle its ``.metadata`` and every stored value that is not a tensor, running any code they name.
        The model's shards, then each optimizer's, then ``meta.pt`` (``weights_only=True``, as a full checkpoint)."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=True)
        orders = self._row_orders()  # tensor parallelism: the q/k/v rows read as built, then put in training's order
        module = {"state_dict": tensor_parallel.reorder(get_model_state_dict(self.model), orders, "model.")}
        sharded.load(module, path, "ckpt_path", SHARDED)
        self.model.load_state_dict(tensor_parallel.reorder(module["state_dict"], orders, "model.", back=True),
                                   strict=self.lightning_module.strict_loading)
        for i, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{i}": tensor_parallel.reorder(get_optimizer_state_dict(self.model, optimizer), orders,
                                                               "model.")}
            sharded.load(state, path, "ckpt_path", SHARDED)
            set_optimizer_state_dict(self.model, optimizer,
                                     optim_state_dict=tensor_parallel.reorder(state[f"optimizer_{i}"], orders,
                                                                              "model.", back=True),
                                     options=StateDictOptions(cpu_offload=True))
        return torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)

    def setup_environment(self) -> None:
        # Lightning's private API, the one use here: with both sizes "auto" ModelParallelStrategy makes the data-
        # parallel size the node count (tensor parallel within a node); plain FSDP wants every process data-parallel,
        # and the process count is known only now (devices="auto"), so the two private sizes are set before its
        # set-up reads them (pyproject pins Lightning's minor version)
        if self._data_parallel_size == "auto" and self._tensor_parallel_size == "auto":
            processes = self.num_nodes * self.num_processes
            refused = process_problem(self.tensor_parallel, processes)
            if refused is not None:  # (devices=auto / -1: the count is known only now)
                raise ConfigError(*refused)
            self._data_parallel_size, self._tensor_parallel_size = processes // self.tensor_parallel, self.tensor_parallel
        super().setup_environment()


def refused_write(err: BaseException) -> OSError | None:
    """The write the file system refused (an OSError with an errno: full, capped, read-only) behind a failed sharded
    save: torch's CheckpointException gathers every process's failure (each pickled, so without its chain), where
    one process's may be torch's zip writer's RuntimeError and another's the OSError of the file it was writing."""
    failures = getattr(err, "failures", None)
    found = [exc for exc, _ in failures.values()] if isinstance(failures, dict) else [err]
    return next((exc for exc in found if isinstance(exc, OSError) and exc.errno is not None), None)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


_STAGING = re.compile(r"\.(?P<name>.+\.ckpt)\.(?:tmp|old)")


def staging(path: Path) -> tuple[Path, Path]:
    """Where the sharded checkpoint ``path`` is written (``.NAME.tmp``), and where the one it replaces waits while
    it is renamed into place (``.NAME.old``)."""
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


def clear_staging(folder: Path) -> list[Path]:
    """Remove the staging directories (:func:`staging`) a killed sharded save left in ``folder``; return them. A
    save killed between its two renames (``.NAME.old`` and ``.NAME.tmp`` there, no ``NAME``) is finished instead:
    every shard was written before the first rename."""
    folder = Path(folder)
    found = sorted(p for p in folder.iterdir() if _STAGING.fullmatch(p.name) and p.is_dir()) if folder.is_dir() else []
    removed = []
    for entry in found:
        target = entry.with_name(_STAGING.fullmatch(entry.name)["name"])
        tmp, old = staging(target)
        if old.is_dir() and tmp.is_dir() and not target.exists():
            tmp.rename(target)
            rank_zero_info(f"{target}: a sharded save killed between its renames, put in place")
        for stale in (tmp, old):
            if stale.is_dir():
                _remove(stale)
                removed.append(stale)
    return removed


# --------------------------------------------------------------------------------------------------
# the initialisation a single process would draw, replayed one tensor at a time
# --------------------------------------------------------------------------------------------------


class _InitRecorder(TorchFunctionMode):
    """Writes down every in-place initialisation call on a tensor: ``(tensor, function, args, kwargs)``."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # nn.init.* pass the tensor by keyword
        if isinstance(target, torch.Tensor) and name.endswith("_") and not name.startswith("_") and \
                name != "requires_grad_":
            self.calls.append((target, func, args, kwargs))
        return func(*args, **kwargs)


def record_init(model_cfg: dict) -> tuple[nn.Module, list[tuple]]:
    """The model built with fake tensors (shapes, no storage, no random draws) and its initialisation calls."""

    with FakeTensorMode(), _InitRecorder() as recorder:
        fake = build_model(model_cfg)
    return fake, recorder.calls


def _overwrites(func, args, kwargs) -> bool:
    name = func.__name__
    if getattr(func, "__module__", None) == "torch.nn.init":
        return True  # every nn.init function fills the whole tensor
    if name == "copy_":
        source = args[1] if len(args) > 1 else kwargs.get("src")
        return isinstance(source, torch.Tensor) and not _is_fake(source)
    return name in _OVERWRITE


def _is_fake(t: torch.Tensor) -> bool:

    return isinstance(t, FakeTensor) or t.is_meta


def materialize(model: nn.Module, fake: nn.Module, calls: list[tuple], rng_state: torch.Tensor | None = None,
                orders: dict[str, torch.Tensor] | None = None) -> None:
    """Fill ``model``'s parameters (already allocated, possibly sharded DTensors) with the values ``calls`` draw.

    The calls run in their order on full-size temporaries, from ``rng_state`` (the CPU generator's state when the
    single-process model would have been built; the current one if None), so the random stream is consumed exactly
    as a real build consumes it; a tensor's temporary lives from its last overwriting call to its last call, then its
    slice of it is copied into this process's shard (``orders``: parameter name -> the order of its rows held, the
    tensor-parallel q/k/v layout of builder/training/tensor_parallel.py)."""

    names: dict[int, list[str]] = {}
    for name, p in fake.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    if any(True for _ in fake.buffers()):
        raise NotImplementedError("fsdp2 materialises parameters only; this model has buffers")
    last = {id(t): i for i, (t, *_rest) in enumerate(calls)}
    params = dict(model.named_parameters(remove_duplicate=False))
    filled: set[str] = set()
    live: dict[int, torch.Tensor] = {}
    if rng_state is not None:
        torch.set_rng_state(rng_state)
    with torch.no_grad():
        for i, (target, func, args, kwargs) in enumerate(calls):
            key = id(target)
            if _overwrites(func, args, kwargs) or key not in live:
                live[key] = torch.empty(target.shape, dtype=target.dtype)
            tmp = live[key]
            func(*[tmp if a is target else a for a in args], **{k: tmp if v is target else v for k, v in kwargs.items()})
            if last[key] != i:
                continue
            built = live.pop(key)
            for name in names.get(key, []):
                p = params[name]
                full = built[orders[name]] if orders and name in orders else built
                if isinstance(p.data, DTensor):
                    shard = distribute_tensor(full.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
                    p.data.to_local().copy_(shard.to_local())
                else:
                    p.data.copy_(full)
                filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise RuntimeError(f"fsdp2: no initialisation was recorded for {', '.join(missing)}")


def build_sharded(model_cfg: dict, mesh, device: torch.device, precision: str = "32-true",
                  rng_state: torch.Tensor | None = None, tp_mesh=None) -> nn.Module:
    """The model of ``model_cfg``: each Block then the whole model ``fully_shard``-ed over ``mesh``, its shards on
    ``device`` holding the values a single process builds from ``rng_state``. bf16-mixed: the shards stay fp32,
    forward and backward run in bf16 (gathered in bf16), gradients are reduced in fp32. ``tp_mesh`` (of more than
    one process): each block's linear maps split over it first (builder/training/tensor_parallel.py)."""

    fake, calls = record_init(model_cfg)
    with torch.device("meta"):
        model = build_model(model_cfg)
    orders = None
    if tp_mesh is not None and tp_mesh.size() > 1:
        orders = tensor_parallel.row_orders(model_cfg, tp_mesh.size())
        tensor_parallel.parallelize(model, tp_mesh)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if str(precision).startswith("bf16-mixed") else MixedPrecisionPolicy()
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)  # the root is used again at once
    model.to_empty(device=device)
    materialize(model, fake, calls, rng_state, orders)
    return model


def clip_sharded_gradients(parameters, max_value: float, algorithm: str = "norm") -> None:
    """Clip gradients that may be DTensor shards: the norm is of the whole model (every process's shard). Under
    tensor parallelism the shards live on two meshes (the data-parallel one; data x tensor parallel), which one
    norm cannot mix: each mesh's gradients are measured apart, then combined."""

    params = [p for p in parameters if p.grad is not None]
    if algorithm != "norm":
        torch.nn.utils.clip_grad_value_(params, max_value, foreach=False)
        return
    by_mesh: dict = {}
    for p in params:
        by_mesh.setdefault(getattr(p.grad, "device_mesh", None), []).append(p.grad)
    norms = []
    for grads in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms), 2.0)
    # torch's default (foreach where it can) for one mesh; one tensor at a time across two: foreach cannot mix meshes
    torch.nn.utils.clip_grads_with_norm_(params, max_value, total, foreach=None if len(norms) == 1 else False)
