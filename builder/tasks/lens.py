"""task=lens: the final vector — each layer's top next-token guesses for a phrase, and who wrote the prediction."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import load_model
from ..errors import ConfigError
from ..files import atomic_write
from ..interp import views
from ..interp.pictures import encode_text
from ..interp.plots import save_figure


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint, export or Hugging Face directory: "
                          "python run.py task=lens checkpoint=PATH text='...'")
    model, tokenizer, _ = load_model(cfg.checkpoint, dtype=cfg.get("dtype"))
    ids = encode_text(tokenizer, cfg.text, model)
    lens = views.lens_words(model, tokenizer, ids)
    tokens, guesses, prediction = lens["tokens"], lens["guesses"], lens["prediction"]
    out_dir = Path(out_dir)
    title = f"{Path(str(cfg.checkpoint)).name}: {cfg.text!r}"
    lens_png = save_figure(views.lens_picture(lens, title), out_dir / "lens.png")
    attribution = views.attribution_words(model, tokenizer, ids, position=-1)
    attribution_png = save_figure(views.attribution_picture(attribution), out_dir / "attribution.png")
    report = {"text": cfg.text, "tokens": tokens, "lens": {**lens["raw"], "guesses": guesses},
              "attribution": {k: v for k, v in attribution.items() if k != "after"}}
    atomic_write(out_dir / "lens.json", json.dumps(report, indent=2) + "\n")
    agree = sum(g == p for g, p in zip(guesses[-1], prediction))
    print(f"the last layer's top guess equals the model's prediction at {agree} of {len(prediction)} positions")
    top = sorted(attribution["parts"].items(), key=lambda kv: -abs(kv[1]))[:5]
    print(f"after {tokens[-1]!r} the model predicts {attribution['token_text']!r} (logit {attribution['logit']:.3f}; "
          f"the parts sum to {attribution['total']:.3f}); largest parts: "
          + ", ".join(f"{k} {v:+.3f}" for k, v in top))
    print(f"  {lens_png}\n  {attribution_png}\n  {out_dir / 'lens.json'}")
    return 0
