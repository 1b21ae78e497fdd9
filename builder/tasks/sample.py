"""task=sample: continue a prompt with a trained model (KV cache, temperature, top-k, a seed)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_model
from ..errors import ConfigError
from ..files import atomic_write
from ..generate import encode_prompt, generate


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint path: python run.py task=sample checkpoint=PATH")
    model, tokenizer, _ = load_model(cfg.checkpoint)
    if tokenizer is None:
        raise ConfigError("checkpoint", cfg.checkpoint, "a checkpoint that carries its tokenizer")
    ids = torch.tensor([encode_prompt(tokenizer, cfg.prompt)])
    limit = model.context_length
    if limit and ids.shape[1] > limit:
        raise ConfigError("prompt", f"<{ids.shape[1]} tokens>", f"at most model.context_length={limit} tokens")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    out = generate(model, ids, int(cfg.max_new_tokens), float(cfg.temperature), cfg.top_k, generator=gen)
    text = tokenizer.decode(out[0].tolist())
    print(text)
    atomic_write(Path(out_dir) / "sample.txt", text + "\n")
    return 0
