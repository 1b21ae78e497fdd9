"""The lecture made causal, measured: does the sense head (the adjective head) matter, or only look as if it did?

    python run.py experiment=lecture logger=csv hydra.run.dir=outputs/lecture
    python run.py experiment=adjective_head logger=csv hydra.run.dir=outputs/adj
    python benchmarks/lecture_causal.py --lecture outputs/lecture/checkpoints/last.ckpt \\
        --adjectives outputs/adj/checkpoints/last.ckpt [--json causal.json]

On 600 senses sentences (seed 1234, as the tour's probes): the sense-choice accuracy for the word after the homonym,
trained, with the sense head (found automatically) mean-ablated and with every other head; the share of cue-swapped
pairs whose choice flips when the sense head's output at the homonym is patched in. On 400 adjectives sentences: the
rise of the loss at nouns with adjectives and elsewhere, the adjective head (task=heads' best adjective_noun head)
mean-ablated against every other head. builder/interp/causal.py says how each is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.checkpoint import load_model  # noqa: E402
from builder.data import senses  # noqa: E402
from builder.interp.causal import adjective_causal, adjective_sentences, sense_causal  # noqa: E402
from builder.interp.heads import score_heads  # noqa: E402
from builder.interp.tour import PROBE_SENTENCES  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lecture", type=Path, help="a checkpoint of experiment=lecture")
    parser.add_argument("--adjectives", type=Path, help="a checkpoint of experiment=adjective_head")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()
    out = {}
    if args.lecture:
        model, tokenizer, _ = load_model(args.lecture)
        r = out["lecture"] = sense_causal(model, tokenizer, senses.generate(PROBE_SENTENCES, seed=1234))
        print(f"lecture ({args.lecture}): sense choice for the word after the homonym, {r['sentences']} sentences, "
              f"chance {r['chance']:.1%}")
        print(f"  trained {r['trained']:.1%}; sense head {r['sense_head']} mean-ablated {r['sense_head_ablated']:.1%} "
              "(by homonym: " + ", ".join(f"{w} {a:.0%}" for w, a in r["sense_head_ablated_by_homonym"].items())
              + f"); any other single head: at most {r['largest_other_drop']:.1%} lower")
        print(f"  with {r['second_head']} ablated as well: {r['both_ablated']:.1%}")
        print(f"  patching {r['sense_head']}'s output at the homonym from the cue-swapped sentence flips "
              f"{r['sense_head_flipped']:.1%} of pairs to the other sense; any other head at most "
              f"{r['largest_other_flipped']:.1%}")
    if args.adjectives:
        model, tokenizer, _ = load_model(args.adjectives)
        best = score_heads(model, tokenizer)["adjective_noun"][0]
        r = out["adjectives"] = adjective_causal(model, tokenizer, adjective_sentences(), (best["layer"], best["head"]))
        rise = r["adjective_head_rise"]
        print(f"adjectives ({args.adjectives}): adjective head {r['adjective_head']} (score {best['score']:.2f}); "
              f"loss at nouns with adjectives {r['loss_at_nouns']:.3f}, elsewhere {r['loss_elsewhere']:.3f}")
        print(f"  mean-ablated: loss at those nouns {rise['nouns']:+.3f}, elsewhere {rise['elsewhere']:+.3f}; "
              f"any other head at those nouns at most {r['largest_other_rise_at_nouns']:+.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
