"""task=sample: continue a prompt with a trained model (KV cache, temperature, top-k, a seed)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config.printing import inputs_checked
from ..errors import ConfigError, compile_refusal
from ..files import atomic_write
from ..generate import encode_prompt, generate
from ..memory import check_generation_memory
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    model, tokenizer, model_cfg = read_model(cfg, "prompt='The '", checked=False)
    if tokenizer is None:
        raise ConfigError("checkpoint", cfg.checkpoint, "a checkpoint that carries its tokenizer")
    ids = torch.tensor([encode_prompt(tokenizer, cfg.prompt)])
    limit = model.context_length
    if limit and ids.shape[1] > limit:
        raise ConfigError("prompt", f"<{ids.shape[1]} tokens>", f"at most model.context_length={limit} tokens")
    check_generation_memory(model, ids.shape[1], int(cfg.max_new_tokens))
    inputs_checked(model_cfg, f"checkpoint={cfg.checkpoint}")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    if cfg.compile and int(cfg.max_new_tokens) > 1:
        print("compile=true: compiling the decoding step first (tens of seconds on a CPU; seconds once torch's "
              "compile cache holds it)", file=sys.stderr, flush=True)
    try:
        out = generate(model, ids, int(cfg.max_new_tokens), float(cfg.temperature), cfg.top_k, generator=gen,
                       compile=cfg.compile)
    except FloatingPointError as err:  # NaN or inf weights: the checkpoint is at fault, not the code
        raise ConfigError("checkpoint", cfg.checkpoint, f"a checkpoint with finite weights: {err}") from None
    except RuntimeError as err:
        refusal = compile_refusal("compile", "the decoding step's kernels", err) if cfg.compile else None
        if refusal is None:
            raise
        raise refusal from None
    text = tokenizer.decode(out[0].tolist())
    print(text)
    atomic_write(Path(out_dir) / "sample.txt", text + "\n")
    return 0
