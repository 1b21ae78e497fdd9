"""task=lens: the final vector — each layer's top next-token guesses for a phrase, and who wrote the prediction."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import load_model
from ..errors import ConfigError
from ..files import atomic_write
from ..interp.lens import direct_attribution, logit_lens
from ..interp.pictures import encode_text, token_strings
from ..interp.plots import attribution_figure, lens_figure, save_figure


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint, export or Hugging Face directory: "
                          "python run.py task=lens checkpoint=PATH text='...'")
    model, tokenizer, _ = load_model(cfg.checkpoint, dtype=cfg.get("dtype"))
    ids = encode_text(tokenizer, cfg.text, model)
    tokens = token_strings(tokenizer, ids[0].tolist())
    lens = logit_lens(model, ids)
    word = lambda i: token_strings(tokenizer, [i])[0]  # noqa: E731
    guesses = [[word(row[0]) for row in stream] for stream in lens["top_ids"]]
    probs = [[row[0] for row in stream] for stream in lens["top_probs"]]
    prediction = [word(i) for i in lens["prediction"]]
    out_dir = Path(out_dir)
    title = f"{Path(str(cfg.checkpoint)).name}: {cfg.text!r}"
    lens_png = save_figure(lens_figure(tokens, guesses, probs, lens["labels"], prediction, title), out_dir / "lens.png")
    attribution = direct_attribution(model, ids, position=-1)
    attribution_png = save_figure(attribution_figure(attribution["parts"], attribution["logit"],
                                                     word(attribution["token"]), tokens[-1]), out_dir / "attribution.png")
    report = {"text": cfg.text, "tokens": tokens, "lens": {**lens, "guesses": guesses},
              "attribution": {**attribution, "token_text": word(attribution["token"])}}
    atomic_write(out_dir / "lens.json", json.dumps(report, indent=2) + "\n")
    agree = sum(g == p for g, p in zip(guesses[-1], prediction))
    print(f"the last layer's top guess equals the model's prediction at {agree} of {len(prediction)} positions")
    top = sorted(attribution["parts"].items(), key=lambda kv: -abs(kv[1]))[:5]
    print(f"after {tokens[-1]!r} the model predicts {word(attribution['token'])!r} (logit {attribution['logit']:.3f}; "
          f"the parts sum to {attribution['total']:.3f}); largest parts: "
          + ", ".join(f"{k} {v:+.3f}" for k, v in top))
    print(f"  {lens_png}\n  {attribution_png}\n  {out_dir / 'lens.json'}")
    return 0
