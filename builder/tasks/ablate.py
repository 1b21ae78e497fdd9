"""task=ablate: knock out each head, then each MLP, in turn, and measure what the model loses."""

from __future__ import annotations

import json
from pathlib import Path

from ..config.plain import to_plain
from ..config.printing import inputs_checked
from ..errors import ConfigError
from ..files import atomic_write
from ..interp.interventions import ablate, ablation_figure, answer_ids
from ..interp.pictures import encode_text
from ..interp.plots import save_figure
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    model, tokenizer, model_cfg = read_model(cfg, "text='...' [ablation=zero] [answers=[right,wrong]]",
                                             checked=False)
    if cfg.get("split") == "val":
        texts, inputs = [f"validation windows of data.source={cfg.data.source}"], validation_windows(cfg, tokenizer, model)
    else:
        texts = to_plain(cfg.get("texts")) or [cfg.text]
        inputs = [encode_text(tokenizer, text, model) for text in texts]
    answers = answer_ids(tokenizer, to_plain(cfg.get("answers")))
    if answers is None and all(ids.shape[1] < 2 for ids in inputs):
        raise ConfigError("texts" if cfg.get("texts") else "text", texts, "texts of at least two tokens (the loss "
                          "is of the next token), or answers=[right,wrong] to measure a logit difference")
    inputs_checked(model_cfg, f"checkpoint={cfg.checkpoint}")
    result = ablate(model, inputs, cfg.ablation, answers)
    result.update(texts=texts, answers=to_plain(cfg.get("answers")), checkpoint=str(cfg.checkpoint))
    out_dir = Path(out_dir)
    what = "loss" if answers is None else f"logit({cfg.answers[0]}) - logit({cfg.answers[1]})"
    title = f"{Path(str(cfg.checkpoint)).name}: {cfg.ablation} ablation ({what} {result['baseline']:.3f} unablated)"
    png = save_figure(ablation_figure(result, title=title), out_dir / "ablate.png")
    atomic_write(out_dir / "ablate.json", json.dumps(result, indent=2) + "\n")
    on = texts[0] if cfg.get("split") == "val" else f"{len(texts)} text(s)"
    print(f"{cfg.ablation}-ablating each head and each MLP on {on}, {result['tokens']} tokens: "
          f"{what} is {result['baseline']:.4f} with nothing ablated")
    ranked = sorted(((abs(v), f"L{layer}H{h}", v) for layer, row in enumerate(result["heads"])
                     for h, v in enumerate(row)), reverse=True)[:5]
    print("  largest changes: " + ", ".join(f"{name} {v:+.4f}" for _, name, v in ranked))
    print("  MLPs: " + ", ".join(f"L{layer} {v:+.4f}" for layer, v in enumerate(result["mlps"])))
    print(f"  {png}\n  {out_dir / 'ablate.json'}")
    return 0


def validation_windows(cfg, tokenizer, model) -> list:
    """The data config's validation windows (``data.val_batches`` batches of ``data.batch_size``), as ``[B, T]``
    token tensors cut to the model's context; refused when the data's tokenizer is not the checkpoint's."""
    from .train import make_datamodule  # (reason: Lightning's datamodule, only for split=val)

    data = make_datamodule(cfg)
    data.setup()
    theirs = getattr(data, "tokenizer", None)
    if tokenizer is None or theirs is None or theirs.to_dict() != tokenizer.to_dict():
        raise ConfigError("data", cfg.data.source, "the data the checkpoint was trained on (the same data=... and "
                          "data.* keys): this data's tokenizer is not the checkpoint's, so its token ids mean other "
                          "words")
    limit = model.context_length
    return [x[:, :limit] if limit else x for x, _ in data.val_dataloader()]
