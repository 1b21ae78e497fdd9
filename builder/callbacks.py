"""Callbacks and plugins the train task assembles: text samples, atomic checkpoint writes."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from .io import atomic_path
from .sample import encode_prompt, generate


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file beside the target, then renamed over it:
    a run killed mid-write never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class SampleText(pl.Callback):
    """At every validation, continue a fixed prompt with a fixed seed; log it and append it to samples.txt."""

    def __init__(self, tokenizer, out_dir: Path, prompt: str, max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: int | None = 40, seed: int = 0):
        self.tokenizer, self.out_dir = tokenizer, Path(out_dir)
        self.prompt, self.max_new_tokens, self.temperature, self.top_k, self.seed = (
            prompt, max_new_tokens, temperature, top_k, seed)
        self.prompt_ids = encode_prompt(tokenizer, prompt, key="train.sample_prompt")
        self.rows: list[list] = []

    @property
    def path(self) -> Path:
        return self.out_dir / "samples.txt"

    def sample(self, model: torch.nn.Module, device) -> str:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
        out = generate(model, ids, self.max_new_tokens, self.temperature, self.top_k, generator=gen
                       if device.type == "cpu" else None)
        return self.tokenizer.decode(out[0].tolist())

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        text = self.sample(pl_module.model, pl_module.device)
        step = trainer.global_step
        self.rows.append([step, self.prompt, text])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"--- step {step} ---\n{text}\n\n")
        from .loggers import log_text

        log_text(trainer.loggers, "samples", ["step", "prompt", "text"], self.rows, step=step)
