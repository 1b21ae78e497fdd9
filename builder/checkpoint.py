"""Load what training and export write: a Lightning checkpoint or an exported directory.

Everything loads with ``torch.load(weights_only=True)`` or safetensors: a file that would run
code when unpickled is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .data.tokenizers import tokenizer_from_dict
from .errors import ConfigError
from .files import atomic_path, atomic_write
from .hf import load_hf_gpt2
from .model import build_model, load_state

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "hydraformer.json"


def _read_checkpoint(path: Path, key: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a zip/pickle at all, or a pickle that wants to run code
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(key, str(path), "a hydraformer checkpoint (.ckpt written by task=train) or an export "
                          f"directory; this file could not be loaded safely with weights_only=True: {reason}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in ckpt.get("hyper_parameters", {}):
        raise ConfigError(key, str(path), "a hydraformer checkpoint: this file holds no model config and state_dict")
    return ckpt


def load_model(path, key: str = "checkpoint"):
    """A trained model from a checkpoint or export: returns ``(model, tokenizer_or_None, model_config)``."""
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise ConfigError(key, str(path), "an existing checkpoint file or export directory")
    if path.is_dir():
        if (path / EXPORT_CONFIG).is_file():
            meta = json.loads((path / EXPORT_CONFIG).read_text())
            model = build_model(meta["model"])
            state = load_file(path / EXPORT_WEIGHTS)
            if model.tie_embeddings:
                state.setdefault("unembedding.weight", state.get("token_embedding.weight"))
            load_state(model, state, key, path)
            tok = meta.get("tokenizer")
            return model.eval(), (tokenizer_from_dict(tok) if tok else None), meta["model"]
        if (path / "config.json").is_file():  # a Hugging Face directory: GPT-2 imports, others get a clear error
            return load_hf_gpt2(path, key)
        raise ConfigError(key, str(path), f"a checkpoint file or a directory holding {EXPORT_CONFIG}")
    ckpt = _read_checkpoint(path, key)
    hp = ckpt["hyper_parameters"]
    model = build_model(hp["model"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_state(model, state, key, path)
    tok = hp.get("tokenizer")
    return model.eval(), (tokenizer_from_dict(tok) if tok else None), hp["model"]


def export_model(checkpoint, out_dir: Path) -> Path:
    """Write ``model.safetensors`` and ``hydraformer.json`` (model config + tokenizer) to ``out_dir/export``."""
    model, tokenizer, model_cfg = load_model(checkpoint)
    dest = Path(out_dir) / "export"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.tie_embeddings:
        state.pop("unembedding.weight", None)  # the same tensor as token_embedding.weight
    with atomic_path(dest / EXPORT_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    meta = {"format": "hydraformer-export-v1", "model": model_cfg,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None}
    atomic_write(dest / EXPORT_CONFIG, json.dumps(meta, indent=2) + "\n")
    return dest
