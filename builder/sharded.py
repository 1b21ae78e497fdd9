"""Sharded checkpoints (torch distributed checkpoint: ``trainer.checkpoint_format=sharded``), read without running code.

torch's own reader unpickles a folder's ``.metadata`` with ``pickle.load``, and its planner reads every value that is
not a tensor (an optimizer's learning rate, its betas) with ``torch.load(weights_only=False)``: a folder from a
stranger would run whatever code it names. Here ``.metadata`` is read by an unpickler that builds only the classes
torch's distributed checkpoint writes there (any other name is refused before anything is called) and then checked:
a ``Metadata``, every shard file it names a plain file name in the folder, a regular file holding the bytes it says
it holds. Every value that is not a tensor is read with ``weights_only=True``. ``builder.load_model`` (one process)
and ``FullyShardedStrategy.load_checkpoint`` (a resume, every process) read through :class:`Reader` and
:class:`Planner`; ``check`` refuses a folder before a run writes anything.

builder.checkpoint imports it only when it reads a sharded checkpoint: torch.distributed.checkpoint takes about a
second to import.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta, TensorStorageMetadata

from .errors import ConfigError, first_line
from .files import special_file

INDEX = ".metadata"  # torch distributed checkpoint's index of the shards (a pickle)

# what torch's FileSystemWriter pickles into .metadata: its metadata dataclasses, the shard records, torch.Size, a
# dtype, a layout (by name), the checkpoint's path; nothing else is looked up, so nothing else can be called
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"} | {name for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
    "torch.serialization": {"_get_layout"},  # a layout from its name (torch.strided)
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "pathlib._local": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},  # Python >= 3.13's module
}


class _IndexUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that looks up only the names in ``_ALLOWED``: a pickle naming anything else (``os.system``,
    ``builtins.eval``, a class whose ``__reduce__`` runs code) is refused before any of it is called."""

    def find_class(self, module: str, name: str):
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, not one of the metadata's classes")


def read_index(path: Path, key: str, what: str) -> Metadata:
    """A sharded checkpoint's ``.metadata``, read with :class:`_IndexUnpickler` and checked against the folder:
    ConfigError naming ``key``, the folder and the file for anything else."""
    index = path / INDEX
    where = f"{what} whose {INDEX} holds only torch distributed checkpoint's metadata"
    if kind := special_file(index):
        raise ConfigError(key, str(path), f"{where}; {index} is {kind}")
    try:
        with open(index, "rb") as f:
            meta = _IndexUnpickler(f).load()
    except Exception as err:  # a name outside the allow-list, a truncated file, another program's
        raise ConfigError(key, str(path), f"{where} (read without running code); {index} was refused: "
                          f"{first_line(err)}") from None
    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict) \
            or not isinstance(meta.storage_data, dict):
        raise ConfigError(key, str(path), f"{where}; {index} holds a {type(meta).__name__}, not the metadata of a "
                          "checkpoint")
    bad = [k for k, v in meta.state_dict_metadata.items() if not isinstance(k, str) or not (
           isinstance(v, BytesStorageMetadata) or isinstance(v, TensorStorageMetadata) and _is_size(v.size)
           and isinstance(getattr(v.properties, "dtype", None), torch.dtype))]
    if bad:
        raise ConfigError(key, str(path), f"{where}; {index} describes {bad[0]!r} as neither a tensor (a size and a "
                          "dtype) nor a value")
    _check_shards(path, meta.storage_data, key, what)
    return meta


def _is_size(size) -> bool:
    return isinstance(size, tuple) and all(isinstance(n, int) and n >= 0 for n in size)


def _check_shards(path: Path, storage: dict, key: str, what: str) -> None:
    """Every shard file the index names is a plain file name in the folder (never a path out of it), a regular file,
    and long enough for the bytes the index says it holds."""
    sizes: dict[str, int] = {}
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(info, _StorageInfo) or not isinstance(name, str) or name in ("", ".", "..") \
                or Path(name).name != name or "\\" in name:
            raise ConfigError(key, str(path), f"{what} whose {INDEX} names its shard files by plain file names in the "
                              f"folder; {path / INDEX} names {name!r}")
        if name not in sizes:
            shard = path / name
            if kind := special_file(shard):
                raise ConfigError(key, str(path), f"{what} of regular files; {shard} is {kind}")
            if not shard.is_file():
                raise ConfigError(key, str(path), f"{what} with every shard file present and whole; {shard} is "
                                  "missing")
            sizes[name] = shard.stat().st_size
        offset, length = info.offset, info.length
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset and 0 <= length
                and offset + length <= sizes[name]):
            raise ConfigError(key, str(path), f"{what} with every shard file present and whole; {path / name} holds "
                              f"{sizes[name]} bytes, {INDEX} reads {length!r} from byte {offset!r} (truncated?)")


class Reader(FileSystemReader):
    """torch's FileSystemReader with ``.metadata`` read by :func:`read_index` (no code run, the shards checked). Its
    ``read_metadata`` takes no ``rank``: torch then never falls back to a per-process ``__N.metadata`` file, which
    hydraformer does not write."""

    def __init__(self, path, key: str, what: str):
        super().__init__(path)
        self.key, self.what = key, what

    def read_metadata(self) -> Metadata:
        meta = read_index(Path(self.path), self.key, self.what)
        if getattr(meta, "storage_meta", None) is None:  # as torch's own reader does
            meta.storage_meta = StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class Planner(DefaultLoadPlanner):
    """torch's DefaultLoadPlanner with every stored value that is not a tensor read by ``torch.load(weights_only=True)``
    (torch's own reads them with ``weights_only=False``: a pickle in a shard would run)."""

    def load_bytes(self, read_item, value) -> None:
        data = torch.load(value, weights_only=True)  # refuses a pickle naming anything but plain data
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:  # torch's nested state dicts: the path this flat name came from
            target = self.original_state_dict
            *parents, last = self.mappings[fqn]
            for step in parents:
                target = target[step]
            target[last] = data
        else:
            self.state_dict[fqn] = data


def load(state: dict, path: Path, key: str, what: str, no_dist: bool = False) -> None:
    """``torch.distributed.checkpoint.load`` of ``state`` from the folder ``path`` through :class:`Reader` and
    :class:`Planner`; a missing, truncated or refused shard is a ConfigError naming it. ``no_dist``: in this process
    alone (``builder.load_model``); else every process of the run takes part (a resume under fsdp2)."""
    try:
        with warnings.catch_warnings():  # torch warns that it reads in one process: what we ask of it
            warnings.simplefilter("ignore", UserWarning)
            dcp_load(state, storage_reader=Reader(path, key, what), planner=Planner(), no_dist=no_dist)
    except ConfigError:
        raise
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException wrapping each
        # process's own error: ours, the first
        cause = next(iter(err.failures.values()))[0] if isinstance(err, CheckpointException) else err
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, pickle.UnpicklingError):
            raise ConfigError(key, str(path), f"{what} whose shards hold tensors and plain values only (read with "
                              f"weights_only=True); a value was refused: {first_line(cause)}") from None
        raise ConfigError(key, str(path), f"{what} with every shard file present and whole: {first_line(cause)}") \
            from None


def check(path: Path, key: str, what: str) -> Metadata:
    """A sharded checkpoint refused or passed before a run writes anything: its index (:func:`read_index`) and every
    value in it that is not a tensor, read in this process with ``weights_only=True``; the tensors are not read."""
    meta = read_index(path, key, what)
    values = {k: None for k, v in meta.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    if values:
        load(values, path, key, what, no_dist=True)
    return meta


def stored_tensors(meta: Metadata, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors an index describes under ``prefix`` (the prefix taken off), as meta tensors of their shape and
    dtype: what ``builder.model.check_state`` checks before anything is read. A value that is not a tensor is left
    out (the model misses it)."""
    return {k.removeprefix(prefix): torch.empty(tuple(v.size), dtype=v.properties.dtype, device="meta")
            for k, v in meta.state_dict_metadata.items() if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}

