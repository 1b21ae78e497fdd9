"""Load what training and export write: a Lightning checkpoint or an exported directory.

Everything loads with ``torch.load(weights_only=True)`` or safetensors, and a sharded checkpoint's ``.metadata``
with builder/sharded.py's restricted unpickler: a file that would run code when unpickled is refused. A file or
directory that is not what it should be (truncated, corrupt, another program's) is one ConfigError naming the
setting, the path and what is wrong — never a traceback:
``load_model`` for ``checkpoint=``, ``check_resumable`` for ``ckpt_path=`` (task=train, before it writes anything).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .data.tokenizers import tokenizer_from_dict
from .errors import ConfigError, first_line
from .files import atomic_write, special_file, write_safetensors
from .hf import hf_model_config, load_hf, read_hf_config, save_hf
from .model import build_model, check_state, load_state

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "hydraformer.json"
SHARDED_META = "meta.pt"  # Lightning's name for a sharded checkpoint's non-tensor state
CHECKPOINT = "a hydraformer checkpoint (.ckpt written by task=train) or an export directory"
EXPORT = f"an export directory written by task=export ({EXPORT_CONFIG} + {EXPORT_WEIGHTS})"
SHARDED = "a sharded checkpoint (fsdp2)"


def read_checkpoint(path, key: str = "checkpoint", *, mmap: bool = False) -> dict:
    """A hydraformer training checkpoint as a dict (``state_dict``, ``hyper_parameters.model`` ...), loaded with
    ``weights_only=True``; ConfigError for a file that is not one (truncated, another format, a pickle that
    wants to run code). ``mmap``: map the tensors instead of reading them (a check before Lightning loads it)."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: the refusal says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # not a zip/pickle at all, or a pickle that wants to run code
        if mmap:  # a legacy (non-zip) file cannot be mapped: read it, for the real answer
            return read_checkpoint(path, key)
        kind = "" if zipfile.is_zipfile(path) else " (it is not a zip archive, the form torch.save writes)"
        raise ConfigError(key, str(path), f"{CHECKPOINT}; this file could not be loaded safely with "
                          f"weights_only=True{kind}: {first_line(err)}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("hyper_parameters"), dict) \
            or "model" not in ckpt["hyper_parameters"]:
        raise ConfigError(key, str(path), "a hydraformer checkpoint: this file holds no model config and state_dict")
    return ckpt


def _build(model_cfg, key: str, path: Path, what: str):
    """The model a checkpoint or export describes; its own config refused is the file's fault, named as such."""
    try:
        return build_model(model_cfg)
    except ConfigError as err:
        raise ConfigError(key, str(path), f"{what} whose model config builds; its {err}") from None


def _tokenizer(tok, key: str, path: Path, what: str):
    if not tok:
        return None
    try:
        return tokenizer_from_dict(tok)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(key, str(path), f"{what} with a tokenizer hydraformer can rebuild: {first_line(err)}") from None


def _export_meta(path: Path, key: str) -> dict:
    """An export directory's hydraformer.json, holding a model config; ConfigError naming ``key`` otherwise."""
    try:
        meta = json.loads((path / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(key, str(path), f"{EXPORT}; its {EXPORT_CONFIG} is not readable JSON: {first_line(err)}") \
            from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ConfigError(key, str(path), f"{EXPORT}; its {EXPORT_CONFIG} holds no model config (a \"model\" object)")
    return meta


def _load_export(path: Path, key: str):
    meta = _export_meta(path, key)
    weights = path / EXPORT_WEIGHTS
    if not weights.is_file():
        raise ConfigError(key, str(path), f"{EXPORT}; {EXPORT_WEIGHTS} is missing")
    model = _build(meta["model"], key, path, "an export")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(key, str(path), f"{EXPORT}; its {EXPORT_WEIGHTS} is not a readable safetensors file "
                          f"(truncated or corrupt?): {first_line(err)}") from None
    if model.tie_embeddings:
        state.setdefault("unembedding.weight", state.get("token_embedding.weight"))
    state = {k: v for k, v in state.items() if v is not None}
    load_state(model, state, key, path)
    return model.eval(), _tokenizer(meta.get("tokenizer"), key, path, "an export"), meta["model"]


def is_sharded_checkpoint(path) -> bool:
    """A checkpoint written by ``trainer.checkpoint_format: sharded`` (fsdp2): a directory holding Lightning's
    ``meta.pt`` (step, hyperparameters) beside torch distributed checkpoint's ``.metadata`` and shard files."""
    p = Path(str(path))
    return p.is_dir() and (p / SHARDED_META).is_file() and (p / ".metadata").is_file()


SHARDED = "a sharded checkpoint (fsdp2)"


def _sharded_meta(path: Path, key: str) -> dict:
    """A sharded checkpoint's ``meta.pt`` (step, loops, hyperparameters), loaded with ``weights_only=True``, holding a
    model config; ConfigError naming ``key`` otherwise."""
    try:
        meta = torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated meta.pt, another program's, a pickle that wants to run code
        raise ConfigError(key, str(path), f"{SHARDED} whose {SHARDED_META} loads with weights_only=True: "
                          f"{first_line(err)}") from None
    hp = meta.get("hyper_parameters") if isinstance(meta, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("model"), dict):
        raise ConfigError(key, str(path), f"{SHARDED} of hydraformer: its {SHARDED_META} holds no model config")
    return meta


def _load_sharded(path: Path, key: str):
    """The model of a sharded checkpoint, read in this one process: only the model's tensors are read (no optimizer
    state), each straight into its place in the model, whatever number of processes wrote the shards. Nothing in the
    folder can run code: ``.metadata`` is read by builder/sharded.py's restricted unpickler, the rest with
    ``weights_only=True``."""
    from . import sharded  # (reason: torch.distributed.checkpoint, about a second to import, only for this format)

    hp = _sharded_meta(path, key)["hyper_parameters"]
    index = sharded.read_index(path, key, SHARDED)
    model = _build(hp["model"], key, path, SHARDED)
    saved = sharded.stored_tensors(index, "state_dict.model.")
    own = model.state_dict()
    if model.tie_embeddings and "unembedding.weight" not in saved:  # a tied weight is stored under one name
        own.pop("unembedding.weight", None)
    check_state(own, saved, key, path)  # names, shapes and dtypes (load_state's message), from the index: nothing read yet
    sharded.load({"state_dict": {f"model.{k}": v for k, v in own.items()}}, path, key, SHARDED, no_dist=True)
    return model.eval(), _tokenizer(hp.get("tokenizer"), key, path, SHARDED), hp["model"]


def check_sharded_resumable(path, model_cfg: dict, key: str = "ckpt_path") -> None:
    """Training can resume from the sharded checkpoint ``path`` (the run's strategy is the caller's to check): its
    ``meta.pt`` holds the training state and the model ``model_cfg`` describes, and its index and every value that is
    not a tensor read without running code (builder/sharded.py ``check``; the shards are read by the strategy)."""
    from . import sharded  # (reason: as in _load_sharded)

    path = Path(str(path))
    meta = _sharded_meta(path, key)
    if "global_step" not in meta:
        raise ConfigError(key, str(path), f"{SHARDED} written during training: its {SHARDED_META} holds no training "
                          "state")
    sharded.check(path, key, SHARDED)
    check_same_model(meta["hyper_parameters"]["model"], model_cfg, key, path)


def _sharded_weights(path: Path, key: str, optimizer: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """A sharded checkpoint's weights, ``(name, tensor)`` one at a time: the largest tensor is the most held; with
    ``optimizer``, then its optimizers' states (``optimizer_0.state.model.blocks.0...exp_avg_sq``, as the index
    names them). Read through builder/sharded.py (nothing in the folder runs code)."""
    from . import sharded  # (reason: as in _load_sharded)

    _sharded_meta(path, key)
    index = sharded.read_index(path, key, SHARDED)
    tensors = {f"state_dict.{k}": v for k, v in sharded.stored_tensors(index, "state_dict.").items()}
    if not tensors:
        raise ConfigError(key, str(path), f"{SHARDED} holding the model's weights: its .metadata lists none")
    if optimizer:
        tensors.update({f"optimizer_{k}": v for k, v in sharded.stored_tensors(index, "optimizer_").items()})
    for full, meta in tensors.items():
        target = torch.empty(meta.shape, dtype=meta.dtype)
        sharded.load({full: target}, path, key, SHARDED, no_dist=True)
        yield full.removeprefix("state_dict."), target


def nonfinite_tensor(tensors: Mapping | Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor of ``tensors`` (name -> tensor, or pairs; a sharded DTensor:
    this process's shard) that holds a NaN or an infinity, else None.

    One read of each tensor and no copy of it — ``torch.aminmax``: a NaN reaches both ends, an infinity one — and
    one host sync for all of them (``torch.isfinite(t).all()`` allocates a mask as large as ``t``; on a CPU it takes
    about 30 times as long)."""
    names: list[str] = []
    ends: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
    for name, t in (tensors.items() if isinstance(tensors, Mapping) else tensors):
        t = t.to_local() if hasattr(t, "to_local") else t
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not t.is_meta:
            # flat: over a 2-D tensor torch's full reduction takes ~100x as long (2304x768 on a CPU: 11 ms vs 0.1 ms)
            ends.setdefault(t.device, []).append((len(names), torch.stack(torch.aminmax(t.reshape(-1))).float()))
            names.append(name)
    bad = []
    for group in ends.values():
        finite = torch.isfinite(torch.stack([e for _, e in group])).all(dim=1).tolist()
        bad += [i for (i, _), ok in zip(group, finite) if not ok]
    return names[min(bad)] if bad else None


def training_state(ckpt: Mapping) -> Iterator[tuple[str, Any]]:
    """A training checkpoint's weights (``model.blocks.0...``) then its optimizers' states, each named as it sits in
    the checkpoint (``optimizer_states[0].state[3].exp_avg_sq``): what must be finite for training to go on from it
    (an overflowed second moment leaves the weights finite but stops that weight from ever moving again)."""
    yield from ckpt["state_dict"].items()
    for i, optimizer in enumerate(ckpt.get("optimizer_states") or ()):
        for index, state in (optimizer.get("state") or {}).items() if isinstance(optimizer, Mapping) else ():
            for name, value in state.items() if isinstance(state, Mapping) else ():
                yield f"optimizer_states[{i}].state[{index}].{name}", value


def nonfinite_weights(path, key: str = "ckpt_path") -> str | None:
    """The first weight or optimizer state of the training checkpoint at ``path`` (a file, or a sharded directory)
    that is not finite, named as the checkpoint names it; None when all are. The tensors are mapped (a
    file) or read one at a time (shards), never all held at once. ConfigError for what is not a readable
    checkpoint."""
    path = Path(str(path))
    if is_sharded_checkpoint(path):
        return nonfinite_tensor(_sharded_weights(path, key, optimizer=True))
    return nonfinite_tensor(training_state(read_checkpoint(path, key, mmap=True)))


def checkpoints_below(root, pattern: str = "**/checkpoints/*.ckpt") -> list[Path]:
    """Checkpoints below ``root``, oldest first (a hidden ``.name.ckpt.XXXX.tmp``: a write a kill cut short)."""
    root = Path(root)
    found = [p for p in root.glob(pattern) if not p.name.startswith(".")] if root.is_dir() else []
    return sorted(found, key=written_at)


def written_at(path: Path) -> float:
    """When a checkpoint was last written: a sharded one (a directory) is rewritten file by file in place."""
    return max([path.stat().st_mtime] + ([f.stat().st_mtime for f in path.iterdir()] if path.is_dir() else []))


def last_finite_checkpoint(folder, resumed=None) -> Path | None:
    """The newest checkpoint in ``folder`` (a run's ``checkpoints/``), else ``resumed`` (the one the run started
    from), whose weights are all finite — read to know, an unreadable one passed over; None when there is none."""
    for path in [*reversed(checkpoints_below(folder, "*.ckpt")), *([Path(str(resumed))] if resumed else [])]:
        try:
            if nonfinite_weights(path) is None:
                return path
        except (ConfigError, OSError):
            continue
    return None


def last_finite_sentence(folder, resumed=None) -> str:
    """A sentence naming :func:`last_finite_checkpoint`, or saying that there is none, for a NaN/inf stop."""
    path = last_finite_checkpoint(folder, resumed)
    if path is None:
        return f"No checkpoint with finite weights is kept: {folder} holds none."
    return f"The last checkpoint with finite weights: {path}."


def load_model(path, key: str = "checkpoint", *, dtype=None):
    """A trained model from a checkpoint, an export or a Hugging Face directory: returns
    ``(model, tokenizer_or_None, model_config)``. ``dtype`` (Hugging Face directories): None casts to fp32, "auto"
    keeps the checkpoint's own (bf16 stays bf16), "bfloat16" / "float16" cast to those."""
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise ConfigError(key, str(path), "an existing checkpoint file or export directory")
    if kind := special_file(path):  # a FIFO or a device: reading it would block or never end
        raise ConfigError(key, str(path), f"a checkpoint file or export directory; it is {kind}")
    if path.is_dir():
        if (path / EXPORT_CONFIG).is_file():
            return _load_export(path, key)
        if (path / "config.json").is_file():  # a Hugging Face directory: builder/hf.py's families, others refused
            return load_hf(path, key, dtype)
        if is_sharded_checkpoint(path):  # trainer=fsdp / fsdp_cpu's checkpoint_format: sharded
            return _load_sharded(path, key)
        raise ConfigError(key, str(path), f"a checkpoint file, a sharded checkpoint directory ({SHARDED_META} + "
                          f".metadata) or a directory holding {EXPORT_CONFIG}")
    ckpt = read_checkpoint(path, key)
    hp = ckpt["hyper_parameters"]
    model = _build(hp["model"], key, path, "a checkpoint")
    load_state(model, _model_tensors(ckpt), key, path)
    return model.eval(), _tokenizer(hp.get("tokenizer"), key, path, "a checkpoint"), hp["model"]


def model_config_of(path, key: str = "checkpoint") -> dict:
    """The model config a checkpoint, a sharded checkpoint, an export or a Hugging Face directory describes, its
    weights left unread (a checkpoint file's are mapped, not read); ConfigError as ``load_model``'s."""
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise ConfigError(key, str(path), "an existing checkpoint file or export directory")
    if kind := special_file(path):
        raise ConfigError(key, str(path), f"a checkpoint file or export directory; it is {kind}")
    if path.is_dir():
        if (path / EXPORT_CONFIG).is_file():
            return _export_meta(path, key)["model"]
        if (path / "config.json").is_file():
            hf_cfg = read_hf_config(path)
            if hf_cfg is None:
                raise ConfigError(key, str(path), "a Hugging Face directory; its config.json is not a JSON object")
            return hf_model_config(hf_cfg, key, path)[2]
        if is_sharded_checkpoint(path):
            return _sharded_meta(path, key)["hyper_parameters"]["model"]
        raise ConfigError(key, str(path), f"a checkpoint file, a sharded checkpoint directory ({SHARDED_META} + "
                          f".metadata) or a directory holding {EXPORT_CONFIG}")
    return read_checkpoint(path, key, mmap=True)["hyper_parameters"]["model"]


def _model_tensors(ckpt: dict) -> dict:
    """A training checkpoint's model weights, named as the model names them (the LightningModule's ``model.``
    prefix taken off)."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def _flat(node, prefix: str = "model") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}").items()}


def check_same_model(saved: dict, current: dict, key: str, path) -> None:
    """Resuming continues the model a checkpoint holds: any difference in the model config is refused, listing the
    keys (a key one side lacks counts when the other side sets it). Training settings may change."""
    old, new = _flat(saved), _flat(current)
    differ = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in differ[:6])
        more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
        raise ConfigError(key, str(path), f"a checkpoint of the model this run trains; the model config differs: "
                          f"{shown}{more}. Resume with the checkpoint's model settings (training settings such as "
                          "train.lr or trainer.max_steps may change), or leave ckpt_path out to start a new run")


def check_resumable(path, model_cfg: dict | None = None, key: str = "ckpt_path"):
    """``path`` (returned as given; None stays None) if training can resume from it: a complete hydraformer
    checkpoint with its optimizer state and, given ``model_cfg`` (the run's model, its vocab_size the tokenizer's),
    tensors of that model's shapes, all finite. Otherwise a ConfigError naming ``key`` — before the run writes anything.

    The tensors are memory-mapped, not read: Lightning reads the file right after."""
    if path in (None, ""):
        return path
    file = Path(str(path)).expanduser()
    if not file.is_file():
        kind = special_file(file)
        raise ConfigError(key, str(path), "an existing checkpoint file, or `last` (this run directory's newest "
                          "checkpoint)" + (f"; it is {kind}" if kind else ""))
    ckpt = read_checkpoint(file, key, mmap=True)
    if "optimizer_states" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(key, str(path), "a checkpoint written during training (checkpoints/last.ckpt, step-N.ckpt, "
                          "best-N.ckpt): this one holds the weights only, no optimizer state to resume")
    if model_cfg is not None:
        check_same_model(ckpt["hyper_parameters"]["model"], model_cfg, key, path)
        with torch.device("meta"):  # shapes only: nothing is allocated
            model = build_model(model_cfg)
        check_state(model.state_dict(), _model_tensors(ckpt), key, path)
    refuse_nonfinite(nonfinite_tensor(training_state(ckpt)), key, path)
    return path


class NonFiniteWeights(ConfigError):
    """The refusal to resume from a checkpoint whose weight ``tensor`` holds NaN or inf: ``ckpt_path=last`` passes
    over such a checkpoint for an earlier one, any other refusal stops."""

    def __init__(self, key: str, path, tensor: str):
        super().__init__(key, str(path), f"a checkpoint whose weights and optimizer state are finite: {tensor} holds "
                         "NaN or inf (training from it would stop at once, or never move that weight again); resume "
                         "from an earlier one, or `last` (this run's newest with finite weights)")
        self.tensor = tensor


def refuse_nonfinite(bad: str | None, key: str, path) -> None:
    """:class:`NonFiniteWeights` for the weight ``bad`` (None: all are finite, nothing raised)."""
    if bad is not None:
        raise NonFiniteWeights(key, path, bad)


EXPORT_FORMATS = ("hydraformer", "hf")


def export_model(checkpoint, out_dir: Path, format: str = "hydraformer") -> Path:
    """Write ``out_dir/export``: ``model.safetensors`` and ``hydraformer.json`` (model config + tokenizer), or with
    ``format="hf"`` a Hugging Face directory (``config.json`` + ``model.safetensors``, and ``tokenizer.json`` +
    ``tokenizer_config.json`` when the checkpoint has a tokenizer) that transformers' AutoModelForCausalLM loads."""
    if format not in EXPORT_FORMATS:
        raise ConfigError("format", format, f"one of {', '.join(EXPORT_FORMATS)}")
    return write_export(*load_model(checkpoint, dtype="auto"), Path(out_dir) / "export", format, checkpoint)


def write_export(model, tokenizer, model_cfg, dest, format: str = "hydraformer", checkpoint="",
                 shard_size: int | None = None) -> Path:
    """``load_model``'s model, tokenizer and model config written to ``dest`` in ``format`` (``export_model``'s second
    half: task=export shows its config between the two); ``shard_size`` (format hf): the most bytes per file."""
    if format == "hf":
        return save_hf(model, tokenizer, model_cfg, dest, "checkpoint", checkpoint, shard_size=shard_size)
    return save_export(model, tokenizer, model_cfg, dest)


def save_export(model, tokenizer, model_cfg, dest) -> Path:
    """Write a model (``build_model``'s, with its plain model config and tokenizer or None) as an export directory
    ``dest``: ``model.safetensors`` and ``hydraformer.json``, which ``load_model`` reads back."""
    dest = Path(dest)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.tie_embeddings:
        state.pop("unembedding.weight", None)  # the same tensor as token_embedding.weight
    write_safetensors(dest / EXPORT_WEIGHTS, state)
    meta = {"format": "hydraformer-export-v1", "model": model_cfg,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None}
    atomic_write(dest / EXPORT_CONFIG, json.dumps(meta, indent=2) + "\n")
    return dest
