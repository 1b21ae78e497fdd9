"""task=embed: directions in embedding space — nearest tokens, a direction made from word pairs, a 2-D map."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import load_model
from ..config.plain import to_plain
from ..errors import ConfigError
from ..files import atomic_write
from ..interp import views
from ..interp.embed import embedding_map, pair_direction, same_group_fraction
from ..interp.plots import direction_figure, map_figure, nearest_figure, save_figure


def run(cfg, out_dir: Path) -> int:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", None, "a checkpoint, export or Hugging Face directory: "
                          "python run.py task=embed checkpoint=PATH words=[cat,fluffy]")
    words, pairs, groups = cfg.get("words"), cfg.get("pairs"), cfg.get("groups")
    if not (words or pairs or groups):
        raise ConfigError("words", words, "at least one of words=[...] (nearest tokens), pairs=[[a,b],...] (a "
                          "direction) or groups={name: [words]} (a 2-D map), e.g. words=[cat,fluffy]")
    model, tokenizer, _ = load_model(cfg.checkpoint, dtype=cfg.get("dtype"))
    out_dir = Path(out_dir)
    space = cfg.get("space") or "embedding"
    report, files = {"space": space}, []
    if words:
        near = views.nearest_words(model, tokenizer, words, cfg.neighbours, space)
        report["nearest"] = near
        files.append(save_figure(nearest_figure(near, space), out_dir / "nearest.png"))
        for w, pairs_of in near.items():
            print(f"nearest to {w!r} ({space}): " + ", ".join(f"{t!r} {c:.2f}" for t, c in pairs_of))
    if pairs:
        d = pair_direction(model, tokenizer, [list(p) for p in pairs], words or (), space)
        report["direction"] = {"projections": d["projections"], "alignment": d["alignment"]}
        files.append(save_figure(direction_figure(d["projections"], d["alignment"]), out_dir / "direction.png"))
        print("direction from " + ", ".join(d["alignment"]) + ": " +
              ", ".join(f"{w} {v:+.2f}" for w, v in sorted(d["projections"].items(), key=lambda kv: kv[1])))
    if groups:
        groups = to_plain(groups)
        m = embedding_map(model, tokenizer, groups, space)  # checks it is {name: [words]}
        fractions = same_group_fraction(model, tokenizer, groups, k=min(cfg.neighbours, 5), space=space)
        report["map"], report["same_group_fraction"] = m, fractions
        files.append(save_figure(map_figure(m["words"], m["groups"], m["xy"], m["explained"]), out_dir / "map.png"))
        print("nearest tokens in the same group: " + ", ".join(f"{g} {100 * f:.0f}%" for g, f in fractions.items()))
    atomic_write(out_dir / "embed.json", json.dumps(report, indent=2) + "\n")
    for f in [*files, out_dir / "embed.json"]:
        print(f"  {f}")
    return 0
