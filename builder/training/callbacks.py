"""Callbacks and plugins the train task assembles: text samples, atomic checkpoint writes."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..files import atomic_path
from ..generate import encode_prompt, generate
from ..interp.capture import head_mask, record
from ..interp.plots import draw_patterns
from .loggers import log_image, log_text


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
        try:
            text = self.sample(pl_module.model, pl_module.device)
        except FloatingPointError as err:
            text = f"(no sample: {err})"
        step = trainer.global_step
        self.rows.append([step, self.prompt, text])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"--- step {step} ---\n{text}\n\n")
        log_text(trainer.loggers, "samples", ["step", "prompt", "text"], self.rows, step=step)


class AttentionProbe(pl.Callback):
    """At every validation, draw every head's pattern on a fixed probe phrase, so a person watches heads form.

    The picture goes to ``<run dir>/attention/patterns_step<N>.png`` and to the loggers (a wandb image)."""

    def __init__(self, tokenizer, out_dir: Path, text: str):
        self.tokenizer, self.out_dir, self.text = tokenizer, Path(out_dir), text
        self.ids = encode_prompt(tokenizer, text, key="train.probe_text")
        self.tokens = [tokenizer.decode([i]) for i in self.ids]
        self.paths: list[Path] = []

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        model = pl_module.model
        ids = torch.tensor([self.ids[-model.context_length:] if model.context_length else self.ids])
        rec = record(model, ids)
        n = len(model.blocks)
        t = ids.shape[1]
        patterns = torch.stack([rec.pattern(layer)[0] for layer in range(n)]).float().cpu()
        masks = torch.stack([head_mask(rec, layer, t) for layer in range(n)])
        step = trainer.global_step
        path = draw_patterns(self.out_dir / "attention" / f"patterns_step{step}.png", self.tokens[-t:], patterns, masks,
                             title=f"step {step}: {self.text!r}")
        self.paths.append(path)
        log_image(trainer.loggers, "attention/patterns", path, step=step, caption=f"step {step}")


class SaveOnInterrupt(pl.Callback):
    """Ctrl-C or SIGTERM during training: write ``last.ckpt`` (atomically) before the run exits.

    A failure of the run itself (a NaN loss, a bug) saves nothing, so the last good checkpoint stays."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saved: Path | None = None

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.path)
        self.saved = self.path
        if trainer.is_global_zero:
            print(f"\ninterrupted at step {trainer.global_step}: saved {self.path}; resume with ckpt_path={self.path}",
                  flush=True)
