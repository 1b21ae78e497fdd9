"""task=patch: activation patching from a clean prompt into a corrupted one of the same length."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config.plain import to_plain
from ..config.printing import inputs_checked
from ..errors import ConfigError
from ..files import atomic_write
from ..interp.interventions import answer_ids, patch, patching_figure
from ..interp.pictures import encode_text
from ..interp.plots import save_figure
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    usage = ("python run.py task=patch checkpoint=PATH clean='near the garden , the mole' "
             "corrupted='in the lab , the mole' [answers=[dug,reacted]]")
    for key in ("clean", "corrupted"):
        if not cfg.get(key):
            raise ConfigError(key, cfg.get(key), f"a prompt: {usage}")
    model, tokenizer, model_cfg = read_model(cfg, usage.split("PATH ", 1)[1], checked=False,
                                             texts={"clean": cfg.clean, "corrupted": cfg.corrupted})
    clean, corrupted = encode_text(tokenizer, cfg.clean, model), encode_text(tokenizer, cfg.corrupted, model)
    words = [[tokenizer.decode([i]) for i in ids[0].tolist()] for ids in (clean, corrupted)]
    if clean.shape != corrupted.shape:
        raise ConfigError("corrupted", cfg.corrupted, f"a prompt of as many tokens as clean: clean is "
                          f"{clean.shape[1]} tokens {words[0]}, corrupted {corrupted.shape[1]} {words[1]}")
    answers = answer_ids(tokenizer, to_plain(cfg.get("answers")))
    if answers is None:  # each prompt's own prediction
        with torch.no_grad():
            answers = (int(model(clean)[0, -1].argmax()), int(model(corrupted)[0, -1].argmax()))
        if answers[0] == answers[1]:
            raise ConfigError("answers", None, f"[right, wrong]: both prompts predict "
                              f"{tokenizer.decode([answers[0]])!r}, so there is no difference to restore; name "
                              "the two tokens to compare, e.g. answers=[dug,reacted]")
    names = [tokenizer.decode([a]) for a in answers]
    inputs_checked(model_cfg, f"checkpoint={cfg.checkpoint}")
    result = patch(model, clean, corrupted, answers)
    result.update(clean=cfg.clean, corrupted=cfg.corrupted, tokens=words[0], corrupted_tokens=words[1],
                  answers=names, checkpoint=str(cfg.checkpoint))
    out_dir = Path(out_dir)
    png = save_figure(patching_figure(result, words[0], title=f"patching {cfg.clean!r} into {cfg.corrupted!r}: "
                                      f"share of logit({names[0]}) - logit({names[1]}) restored"),
                      out_dir / "patch.png")
    atomic_write(out_dir / "patch.json", json.dumps(result, indent=2) + "\n")
    print(f"logit({names[0]!r}) - logit({names[1]!r}): clean {result['clean_diff']:+.4f}, "
          f"corrupted {result['corrupted_diff']:+.4f}")
    best = max(((v, f"L{layer}H{h}") for layer, row in enumerate(result["heads"]) for h, v in enumerate(row)))
    print(f"  the head that restores most: {best[1]} ({best[0]:.0%} of the difference)")
    for stream in ("resid_pre", "attn_out", "mlp_out"):
        top = max((v, layer, p) for layer, row in enumerate(result[stream]) for p, v in enumerate(row))
        print(f"  {stream:9s}: most at layer {top[1]}, {words[0][top[2]]!r} (position {top[2]}): {top[0]:.0%}")
    print(f"  {png}\n  {out_dir / 'patch.json'}")
    return 0
