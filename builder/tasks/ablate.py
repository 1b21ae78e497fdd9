"""task=ablate: knock out each head, then each MLP, in turn, and measure what the model loses."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import load_model
from ..config.plain import to_plain
from ..errors import ConfigError
from ..files import atomic_write
from ..interp.interventions import ablate, ablation_figure, answer_ids
from ..interp.pictures import encode_text
from ..interp.plots import save_figure


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint, export or Hugging Face directory: python run.py "
                          "task=ablate checkpoint=PATH text='...' [ablation=zero] [answers=[right,wrong]]")
    model, tokenizer, _ = load_model(cfg.checkpoint, dtype=cfg.get("dtype"))
    texts = to_plain(cfg.get("texts")) or [cfg.text]
    inputs = [encode_text(tokenizer, text, model) for text in texts]
    answers = answer_ids(tokenizer, to_plain(cfg.get("answers")))
    if answers is None and all(ids.shape[1] < 2 for ids in inputs):
        raise ConfigError("texts" if cfg.get("texts") else "text", texts, "texts of at least two tokens (the loss "
                          "is of the next token), or answers=[right,wrong] to measure a logit difference")
    result = ablate(model, inputs, cfg.ablation, answers)
    result.update(texts=texts, answers=to_plain(cfg.get("answers")), checkpoint=str(cfg.checkpoint))
    out_dir = Path(out_dir)
    what = "loss" if answers is None else f"logit({cfg.answers[0]}) - logit({cfg.answers[1]})"
    title = f"{Path(str(cfg.checkpoint)).name}: {cfg.ablation} ablation ({what} {result['baseline']:.3f} unablated)"
    png = save_figure(ablation_figure(result, title=title), out_dir / "ablate.png")
    atomic_write(out_dir / "ablate.json", json.dumps(result, indent=2) + "\n")
    print(f"{cfg.ablation}-ablating each head and each MLP on {len(texts)} text(s), {result['tokens']} tokens: "
          f"{what} is {result['baseline']:.4f} with nothing ablated")
    ranked = sorted(((abs(v), f"L{layer}H{h}", v) for layer, row in enumerate(result["heads"])
                     for h, v in enumerate(row)), reverse=True)[:5]
    print("  largest changes: " + ", ".join(f"{name} {v:+.4f}" for _, name, v in ranked))
    print("  MLPs: " + ", ".join(f"L{layer} {v:+.4f}" for layer, v in enumerate(result["mlps"])))
    print(f"  {png}\n  {out_dir / 'ablate.json'}")
    return 0
