"""Every view as a value a notebook displays: matplotlib Figures, and the attention page as an object with
``_repr_html_`` (Jupyter, JupyterLab and VS Code show it inline; nothing is fetched from the network).

    from builder.interp import views
    model, tokenizer, _ = builder.load_model("outputs/adj/checkpoints/last.ckpt")
    views.patterns(model, tokenizer, "a fluffy blue creature roamed the verdant forest")   # a Figure
    views.page(model, tokenizer, "a fluffy blue creature ...")                             # the interactive page
    views.lens(model, tokenizer, "a fluffy blue creature")                                 # the final vector
    views.attribution(model, tokenizer, "a fluffy blue creature")
    views.nearest(model, tokenizer, ["cat", "fluffy"]); views.direction(...); views.word_map(...)
    views.context(model, tokenizer, "mole", ["the mole dug", "a mole of carbon"])

The page is embedded as an ``<iframe srcdoc=...>`` with ``sandbox="allow-scripts"``: it runs in its own sandboxed
document (as notebook outputs are), and tells the notebook it is drawn (or what failed) with ``postMessage``.
"""

from __future__ import annotations

import html as html_lib
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..files import atomic_write
from .capture import head_layout, head_mask, record
from .context import context_views
from .embed import embedding_map, nearest_tokens, pair_direction
from .lens import direct_attribution, logit_lens
from .page import render_attention_html
from .pictures import encode_text, pick, token_strings
from .plots import attribution_figure, context_figure, direction_figure, lens_figure, map_figure, nearest_figure, patterns_figure

# posted to the notebook by the embedded page: {"hydraformer": "ready" | "error", "detail": ...}
_REPORT = """<script>
(function () {
  var tell = function (state, detail) { try { parent.postMessage({hydraformer: state, detail: detail}, "*"); } catch (e) {} };
  window.addEventListener("error", function (e) { tell("error", String(e.message)); });
  var wait = function () {
    var s = document.body && document.body.dataset.ready;
    if (s === "1") { tell("ready", document.title); } else if (s === "error") { tell("error", "the page could not be drawn"); }
    else { setTimeout(wait, 50); }
  };
  wait();
})();
</script>"""


class Page:
    """A self-contained HTML page: shown inline by notebooks, written to disk by ``save``."""

    def __init__(self, html: str, height: int = 760):
        self.html = html
        self.height = height

    def _repr_html_(self) -> str:
        inner = self.html.replace("</body>", _REPORT + "</body>", 1)
        return (f'<iframe class="hydraformer-page" sandbox="allow-scripts" style="width:100%;height:{self.height}px;'
                f'border:1px solid #ddd" srcdoc="{html_lib.escape(inner, quote=True)}"></iframe>')

    def save(self, path) -> Path:
        return atomic_write(Path(path), self.html.encode("utf-8"))


def _record(model, tokenizer, text: str, layers=None, heads=None):
    ids = encode_text(tokenizer, text, model)
    tokens = token_strings(tokenizer, ids[0].tolist())
    layers = pick(layers, len(model.blocks), "layers")
    heads = pick(heads, model.blocks[0].attention.n_heads, "heads")
    rec = record(model, ids, fields=("mask", "pattern"), layers=layers)
    patterns = torch.stack([rec.pattern(layer)[0, heads].float().cpu() for layer in layers])
    masks = torch.stack([head_mask(rec, layer, len(tokens)) for layer in layers])
    return tokens, rec, layers, heads, patterns, masks


def page(model, tokenizer, text: str, layers=None, heads=None, title: str = "") -> Page:
    """The interactive attention page for ``text`` (every head of every layer unless chosen)."""
    tokens, rec, layers, heads, patterns, masks = _record(model, tokenizer, text, layers, heads)
    layouts = head_layout(model)
    kv = [layouts[i] for i in layers] if all(layouts[i] for i in layers) else None
    return Page(render_attention_html(tokens, patterns.numpy(), masks.numpy(), title=title or text, layer_ids=layers,
                                      head_ids=heads, kv_heads=kv, layer_notes=[rec.mask_note(i) for i in layers]))


def patterns(model, tokenizer, text: str, layers=None, heads=None, title: str = "") -> Figure:
    """The grid of every chosen head's pattern, tokens on both axes."""
    tokens, rec, layers, heads, pats, masks = _record(model, tokenizer, text, layers, heads)
    return patterns_figure(tokens, pats, masks, layers, heads, title=title or repr(text),
                           layer_notes=[rec.mask_note(i) for i in layers])


def lens_words(model, tokenizer, ids: torch.Tensor) -> dict:
    """The logit lens (``interp.lens.logit_lens``: ``raw``) in words: the ``tokens``, each layer's top ``guesses``
    and their ``probs`` at every position, and the model's own ``prediction``."""
    out = logit_lens(model, ids)
    return {"raw": out, "tokens": token_strings(tokenizer, ids[0].tolist()),
            "guesses": [[_word(tokenizer, row[0]) for row in stream] for stream in out["top_ids"]],
            "probs": [[row[0] for row in stream] for stream in out["top_probs"]],
            "prediction": [_word(tokenizer, i) for i in out["prediction"]]}


def lens_picture(words: dict, title: str) -> Figure:
    return lens_figure(words["tokens"], words["guesses"], words["probs"], words["raw"]["labels"], words["prediction"],
                       title)


def lens(model, tokenizer, text: str, title: str = "") -> Figure:
    """Each layer's top next-token guess at every position (the logit lens)."""
    return lens_picture(lens_words(model, tokenizer, encode_text(tokenizer, text, model)), title or repr(text))


def attribution_words(model, tokenizer, ids: torch.Tensor, position: int = -1) -> dict:
    """``interp.lens.direct_attribution`` with the predicted token (``token_text``) and the one it follows
    (``after``) in words."""
    out = direct_attribution(model, ids, position)
    return {**out, "token_text": _word(tokenizer, out["token"]),
            "after": token_strings(tokenizer, ids[0].tolist())[out["position"]]}


def attribution_picture(words: dict) -> Figure:
    return attribution_figure(words["parts"], words["logit"], words["token_text"], words["after"])


def attribution(model, tokenizer, text: str, position: int = -1) -> Figure:
    """Who wrote the predicted token's logit at ``position``: embeddings, each head, each MLP."""
    return attribution_picture(attribution_words(model, tokenizer, encode_text(tokenizer, text, model), position))


def nearest_words(model, tokenizer, words, k: int = 8, space: str = "embedding") -> dict:
    """{word: [(token, cosine), ...]}: each word's ``k`` nearest tokens in ``space``, in words."""
    return {w: [(_word(tokenizer, i), c) for i, c in nearest_tokens(model, tokenizer, w, k, space)] for w in words}


def nearest(model, tokenizer, words, k: int = 8, space: str = "embedding") -> Figure:
    return nearest_figure(nearest_words(model, tokenizer, words, k, space), space)


def _word(tokenizer, token_id: int) -> str:
    return token_strings(tokenizer, [token_id])[0]


def direction(model, tokenizer, pairs, words=(), space: str = "embedding") -> Figure:
    d = pair_direction(model, tokenizer, pairs, words, space)
    return direction_figure(d["projections"], d["alignment"])


def word_map(model, tokenizer, groups: dict, space: str = "embedding") -> Figure:
    m = embedding_map(model, tokenizer, groups, space)
    return map_figure(m["words"], m["groups"], m["xy"], m["explained"])


def context(model, tokenizer, word: str, contexts) -> Figure:
    return context_figure(context_views(model, tokenizer, word, list(contexts)))
