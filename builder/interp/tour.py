"""The lecture as one page, drawn with this model's own numbers: ``lecture.html``.

Tokens → embedding directions → one head's query·key grid, the mask, the softmax and the weighted update → many
heads (the interactive page, embedded) → meaning refined by context → the final vector → the parameter count.
Self-contained: every picture is inlined as PNG, the attention page as a sandboxed ``<iframe srcdoc>``; no network,
opens from disk. Every piece of text (the phrase, token strings, the title) is escaped.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import torch

from ..budget import parameter_budget
from ..data import adjectives, senses
from ..files import atomic_write
from ..report import render
from . import views
from .capture import head_mask, record
from .causal import sense_causal, sense_figure
from .pictures import encode_text, focused_head, head_title, score_label, token_strings
from .plots import steps_figure
from .probes import lens_agreement, sense_head, sense_probes, word_classes
from .routing import capture_routing_on, draw_routing, moe_layers

PROBE_SENTENCES = 600  # senses-language sentences the measurements use (seeded: the same every time)

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
img{max-width:100%;border:1px solid #eee}table.tokens td{border:1px solid #ccc;padding:2px 6px;text-align:center}
pre{background:#f6f6f6;padding:.8em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em}.note{color:#666;font-size:.9em}"""


def _png(fig) -> str:
    """A view's Figure (plots.ShownFigure: it encodes its own PNG) as an inline image."""
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(fig._repr_png_()).decode()}">'


def _section(title: str, text: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2><p>{text}</p>{body}"


def _words_in(tokenizer, words) -> list[str]:
    """The words that are one token of this tokenizer (word-level and BPE models; none for character models)."""
    out = []
    for w in words:
        try:
            if len(tokenizer.encode(w)) == 1:
                out.append(w)
        except (ValueError, KeyError):
            continue
    return out


def speaks_lecture(tokenizer) -> bool:
    """True when every word of the senses and adjectives languages is one token: a model of data=lecture."""
    words = sorted(set(senses.VOCABULARY) | set(adjectives.VOCABULARY))
    return len(_words_in(tokenizer, words)) == len(words)


def measure(model, tokenizer) -> dict:
    """The lecture's claims, measured (builder/interp/probes.py): sense probes by layer, the sense head, word
    classes in the embedding, and the lens against the prediction."""
    probe = senses.generate(PROBE_SENTENCES, seed=1234)
    return {"sense_probes": sense_probes(model, tokenizer, probe), "sense_head": sense_head(model, tokenizer, probe),
            "word_classes": word_classes(model, tokenizer),
            "lens_agreement": lens_agreement(model, tokenizer, probe[:100]),
            "causal": sense_causal(model, tokenizer, probe)}


def tour_html(model, tokenizer, model_cfg: dict, text: str, title: str = "", measured: dict | None = None,
              name: str | None = None) -> str:
    """The whole page as a string; ``measured`` (``measure``'s numbers) adds them where the lecture makes each claim;
    ``name``: the model's, in the parameter budget's heading."""
    ids = encode_text(tokenizer, text, model)
    tokens = token_strings(tokenizer, ids[0].tolist())
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title or 'The lecture')}</title>"
             f"<style>{STYLE}</style><script>window.__messages = []; window.addEventListener('message', "
             "function (e) { window.__messages.push(e.data); });</script></head>"
             f"<body><h1>{html.escape(title or 'The lecture, with this model')}</h1>"
             f"<p>Every picture below is this model's own, on the phrase <b>{html.escape(text)}</b>.</p>"]
    cells = "".join(f"<td>{html.escape(t)}<br><small>{i}</small></td>" for t, i in zip(tokens, ids[0].tolist()))
    parts.append(_section("1. Tokens", "The text is cut into tokens; each becomes an id, and each id a vector.",
                          f"<table class='tokens'><tr>{cells}</tr></table>"))

    known = _words_in(tokenizer, [*adjectives.ADJECTIVES[:4], *adjectives.NOUNS[:4], *adjectives.NEUTRAL_VERBS[:2]])
    if len(known) >= 3:
        groups = {"adjectives": [w for w in known if w in adjectives.ADJECTIVES],
                  "nouns": [w for w in known if w in adjectives.NOUNS],
                  "verbs": [w for w in known if w in adjectives.NEUTRAL_VERBS]}
        groups = {g: ws for g, ws in groups.items() if ws}
        body = _png(views.nearest(model, tokenizer, known[:2], k=6)) + _png(views.word_map(model, tokenizer, groups))
        if measured:
            wc = measured["word_classes"]
            body += (f"<p>Measured: of an adjective's 5 nearest tokens (among adjectives and nouns), "
                     f"{100 * wc['adjectives']:.0f}% are adjectives; of a noun's, {100 * wc['nouns']:.0f}% are nouns.</p>")
    else:
        body = "<p class='note'>This model's tokens are not words (a character-level model): see a word-level model " \
               "(experiment=lecture) for word vectors.</p>"
    parts.append(_section("2. Directions in embedding space", "Tokens that play the same part end up pointing the "
                          "same way: the nearest tokens of a word, and a map of word classes.", body))

    rec = record(model, ids, fields=("scores", "mask", "pattern", "result"))
    layer, head = focused_head(rec, list(range(len(model.blocks))), list(range(model.blocks[0].attention.n_heads)))
    steps = _png(steps_figure(tokens, rec.scores(layer)[0, head].float().cpu(), head_mask(rec, layer, len(tokens)),
                              rec.pattern(layer)[0, head].float().cpu(),
                              rec.result(layer)[0, head].float().norm(dim=-1).cpu(), title=head_title(rec, layer, head),
                              score_label=score_label(model.blocks[layer].attention)))
    parts.append(_section("3. One head: query·key, the mask, the softmax, the update",
                          f"Each token asks a question (its query); every earlier token answers (its key). Their dot "
                          f"products are the scores; the mask forbids looking ahead; the softmax turns each row into "
                          f"weights that sum to one; the weighted values, through W_o, are the update this head adds "
                          f"to each token. Shown: {html.escape(head_title(rec, layer, head))}, the head that looks "
                          "hardest at one other token.", steps))
    parts.append(_section("4. Many heads", "Every head of every layer does this at once, each looking for something "
                          "else. Pick a layer and a head; hover a token.",
                          _png(views.patterns(model, tokenizer, text)) + views.page(model, tokenizer, text)._repr_html_()))

    homonym = next((w for w in ("mole", "bank", "bat", "crane") if _words_in(tokenizer, [w])), None)
    if homonym is not None:
        examples = [s for s in senses.generate(60, seed=7) if s.word == homonym]
        by_sense = {s.sense: s.text for s in examples}
        contexts = list(by_sense.values())[:3]
        body = _png(views.context(model, tokenizer, homonym, contexts)) if len(contexts) >= 2 else ""
        if measured:
            sp, sh = measured["sense_probes"], measured["sense_head"]
            rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{100 * a:.1f}%</td></tr>"
                           for label, a in zip(sp["labels"], sp["accuracy"]))
            body += (f"<p>Measured: a linear probe for the sense, on the homonym's vector (held-out accuracy, "
                     f"mean over {len(sp['per_homonym'])} homonyms; chance {100 * sp['chance']:.1f}%):</p>"
                     f"<table class='tokens'>{rows}</table><p>The head that carries the sense: layer "
                     f"{sh['layer']} head {sh['head']}, which puts {100 * sh['score']:.1f}% of the homonym's "
                     "attention on its cue word.</p>")
    else:
        body = "<p class='note'>This model has no word of several senses: train experiment=lecture to see one.</p>"
    parts.append(_section("5. Meaning refined by context", "The same word starts as the same vector; attention moves "
                          "meaning into it from its neighbours, so after a few layers its vectors differ by sense.",
                          body))
    parts.append(_section("6. The final vector", "The prediction is read off the last vector (final norm, then the "
                          "unembedding). Read the stream after each layer the same way, and split the winning logit "
                          "into what each head and MLP wrote.", _png(views.lens(model, tokenizer, text)) +
                          _png(views.attribution(model, tokenizer, text)) + (
                              f"<p>Measured: the last layer's lens guess is the model's prediction at "
                              f"{100 * measured['lens_agreement']:.1f}% of positions.</p>" if measured else "")))
    budget = parameter_budget(model_cfg, name)
    parts.append(_section("7. Where the parameters go", f"{budget['total_params']:,} parameters; attention holds "
                          f"{100 * budget['attention_share']:.1f}% of them.", f"<pre>{html.escape(render(budget))}</pre>"))
    parts.append(_section("8. Test it: ablate and patch", "Looking is not proving. Knock a head out (replace what "
                          "it writes by its mean) and see whether the model still tells the senses apart; swap what it "
                          "writes at the homonym for what it writes in a sentence of the other sense, and see whether "
                          "the prediction follows.", _causal_body(measured)))
    if moe_layers(model):
        parts.append(_routing_section(model, tokens, ids))
    parts.append("</body></html>")
    return "".join(parts)


def _routing_section(model, tokens: list[str], ids) -> str:
    """A mixture of experts' routing on the phrase: which experts each token goes to, per layer, and the load."""
    layers = moe_layers(model)
    moe = model.blocks[layers[0]].mlp
    shared = f", plus {moe.shared.up.out_features // moe.hidden} shared expert(s) every token uses" if moe.shared else ""
    return _section("9. Experts: where each token goes", f"In {len(layers)} of this model's {len(model.blocks)} "
                    f"layers the MLP is a mixture of {moe.n_experts} experts{shared}: a router scores the experts for "
                    f"each token and sends it to {moe.top_k} of them, whose outputs it adds up weighted by those "
                    "scores. So each token uses only part of the weights. Below, per layer, the weight each chosen "
                    "expert gets on the phrase, and the share of the choices each expert took (the hook points "
                    "blocks.{l}.mlp.hook_expert_indices / hook_expert_weights).",
                    _png(draw_routing(tokens, capture_routing_on(model, ids))))


def _causal_body(measured: dict | None) -> str:
    commands = "<pre>" + html.escape(
        "python run.py task=ablate checkpoint=CKPT \"texts=['near the garden , the small mole dug again .']\"\n"
        "python run.py task=patch checkpoint=CKPT \"clean='near the garden , the mole'\" "
        "\"corrupted='in the lab , the mole'\" \"answers=[dug,reacted]\"") + "</pre>"
    if not measured or "causal" not in measured:
        return "<p class='note'>The measurements below need a model of the lecture's language (experiment=lecture); " \
               f"any model takes the two tasks:</p>{commands}"
    c = measured["causal"]
    by_word = ", ".join(f"{html.escape(w)} {100 * a:.0f}%" for w, a in c["sense_head_ablated_by_homonym"].items())
    second = (f" With {html.escape(str(c['second_head']))} ablated as well: {100 * c['both_ablated']:.1f}%."
              if c.get("second_head") else "")
    return (f"<p>Measured on {c['sentences']} sentences: the model picks the right sense for the word after the "
            f"homonym in {100 * c['trained']:.1f}% of them (chance {100 * c['chance']:.1f}%). With the sense head "
            f"{html.escape(c['sense_head'])} ablated: {100 * c['sense_head_ablated']:.1f}% (by homonym: {by_word}); "
            f"any other single head costs at most {100 * c['largest_other_drop']:.1f} points.{second} Patching "
            f"{html.escape(c['sense_head'])}'s output at the homonym from the same sentence with another sense's cue "
            f"flips the choice to that sense in {100 * c['sense_head_flipped']:.1f}% of pairs (any other head: at "
            f"most {100 * c['largest_other_flipped']:.1f}%).</p>" + _png(sense_figure(c))
            + f"<p>The same, on any text and any model:</p>{commands}")


def write_tour(path, model, tokenizer, model_cfg: dict, text: str, title: str = "",
               name: str | None = None) -> tuple[Path, dict | None]:
    """lecture.html at ``path``, and for a model of the lecture's language its measurements (also returned) in
    lecture.json beside it; ``name``: the model's (tour_html)."""
    path = Path(path)
    with torch.no_grad():
        measured = measure(model, tokenizer) if speaks_lecture(tokenizer) else None
        page = tour_html(model, tokenizer, model_cfg, text, title, measured, name)
    if measured is not None:
        atomic_write(path.with_name("lecture.json"), json.dumps(measured, indent=2) + "\n")
    return atomic_write(path, page.encode("utf-8")), measured


def summary(measured: dict) -> str:
    """The measurements in a few lines."""
    sp, sh, wc, c = measured["sense_probes"], measured["sense_head"], measured["word_classes"], measured["causal"]
    probes = ", ".join(f"{label} {100 * a:.1f}%" for label, a in zip(sp["labels"], sp["accuracy"]))
    return (f"sense probe (held-out accuracy; chance {100 * sp['chance']:.1f}%): {probes}; >= 95% from "
            f"{sp['rises_at'] or 'no layer'}\n"
            f"sense head: L{sh['layer']}H{sh['head']} ({100 * sh['score']:.1f}% of the homonym's attention on its cue)\n"
            f"word classes: {100 * wc['adjectives']:.0f}% of an adjective's nearest tokens are adjectives, "
            f"{100 * wc['nouns']:.0f}% of a noun's are nouns\n"
            f"lens: the last layer's guess is the model's prediction at {100 * measured['lens_agreement']:.1f}% of "
            "positions\n"
            f"test it: sense choice {100 * c['trained']:.1f}%, with the sense head {c['sense_head']} ablated "
            f"{100 * c['sense_head_ablated']:.1f}% (chance {100 * c['chance']:.1f}%); patching it flips "
            f"{100 * c['sense_head_flipped']:.1f}% of cue-swapped pairs")
