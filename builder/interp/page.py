"""One self-contained HTML page that shows what every attention head looks at.

Why not bertviz or CircuitsVis: their pages fetch from a CDN and freeze on long inputs; this one works offline on 1,024 tokens.

    path = write_attention_html("attention.html", tokens, patterns, masks=masks)

``patterns`` is ``[L, H, T, T]`` (rows = queries, columns = keys, each row sums to 1, masked
cells exactly 0); ``masks`` (optional, ``[L, T, T]``, ``[L, 1, T, T]`` or ``[T, T]``, True = may
attend) lets the page draw masked cells (hatched grey) differently from cells whose weight is ~0.

The page works offline from disk: CSS, JavaScript and data are inline, nothing is fetched. The template,
CSS and JavaScript are files under ``assets/`` (``attention.html``, ``.css``, ``.js``), inlined at render time.
Weights are stored as uint16 (1/65535 steps) for the cells that can be non-zero only (the mask's
allowed cells, or the cells non-zero in some head when no mask is given), split into a low-byte and a
high-byte plane and deflated (zlib; the page inflates them with the browser's own ``DecompressionStream``),
then base64. Pages of 2 layers x 8 heads on 1,024 causal tokens: about 6 MB for a random-weight Llama-shaped
model (near-uniform rows), 8 MB for softmax(3·N(0, 1)) scores, 1.8 MB for sharply peaked heads
(softmax(8·N(0, 1))); the raw uint16 base64 of before was 22 MB whatever the weights.

Grouped-query attention: ``kv_heads`` gives each layer's ``(n_heads, n_kv_heads)``; the page then labels every
head with the key/value head it reads (``head 5 · kv 1``) and lists the query heads that share it.
``layer_notes`` describes each layer's mask in words (``"causal"``, ``"band 4"`` for a sliding-window layer,
...); without them they are read off ``masks``. A banded layer says so in the layer menu, and its masked
cells (outside the band) are drawn grey.

Tests and scripts can drive the page through ``window.__hf``: ``select(layer, head)`` (real
ids), ``hover(tokenIndex)``, ``info()`` (the info text), ``view("single" | "grid")``,
``cell(q, k)``, ``cellRect(q, k)``, ``state()`` (with ``kv``, the key/value head, ``mates``, the query
heads sharing it, and ``note``, the layer's mask), ``times()`` (ms from navigation to: the script starting,
the data parsed, inflated, first drawn); ``document.body.dataset.ready`` is ``"1"`` once
the first render is done (``"error"`` if it failed).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from ..files import atomic_write

QUANT = 65535  # weights are stored as round(w * QUANT) in uint16
LEVEL = 6  # zlib level: 1 is ~2x faster to write and ~10% larger


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach()
        if x.dtype.is_floating_point:
            x = x.float()
        x = x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - odd inputs
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}") from err


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _packed(data: bytes) -> str:
    """Deflated (zlib) and base64: what the page's ``inflate`` reads."""
    return _b64(zlib.compress(data, LEVEL))


def _planes(q16: np.ndarray) -> bytes:
    """uint16 values as their low bytes then their high bytes: deflate packs the (mostly zero) high bytes well."""
    v = np.ascontiguousarray(q16, dtype="<u2").view(np.uint8).reshape(-1, 2)
    return v[:, 0].tobytes() + v[:, 1].tobytes()


def _kv_layout(kv_heads, L: int, head_ids: list[int]) -> list | None:
    """``[(n_heads, n_kv_heads)] * L`` from one pair or one per layer (None: every head has its own K/V)."""
    if kv_heads is None:
        return None
    pairs = list(kv_heads)
    if len(pairs) == 2 and all(isinstance(x, (int, np.integer)) for x in pairs):
        pairs = [pairs] * L
    if len(pairs) != L:
        raise ValueError(f"kv_heads has {len(pairs)} entries but patterns have {L} layers")
    out = []
    for li, pair in enumerate(pairs):
        if pair is None:
            out.append(None)
            continue
        n_heads, n_kv = (int(x) for x in pair)
        if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
            raise ValueError(f"kv_heads[{li}] = ({n_heads}, {n_kv}): n_kv_heads must divide n_heads")
        if max(head_ids) >= n_heads:
            raise ValueError(f"head id {max(head_ids)} is not a head of a layer with n_heads={n_heads}")
        out.append([n_heads, n_kv])
    return out


def _notes(layer_notes, keep_masks, L: int) -> list[str]:
    if layer_notes is not None:
        notes = ["" if n is None else str(n) for n in layer_notes]
        if len(notes) != L:
            raise ValueError(f"layer_notes has {len(notes)} entries but patterns have {L} layers")
        return notes
    if keep_masks is None:
        return [""] * L
    from .capture import describe_grid  # torch: only when notes are read off the masks

    return [describe_grid(keep_masks[li]) for li in range(L)]


def _masks_array(masks, L: int, T: int) -> np.ndarray:
    m = _to_numpy(masks, "masks")
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = np.broadcast_to(m, (L, *m.shape))
    if m.ndim != 3 or m.shape != (L, T, T):
        shape = tuple(_to_numpy(masks, "masks").shape)
        raise ValueError(f"masks must have shape [L, T, T], [L, 1, T, T] or [T, T] with L={L}, T={T}; got {shape}")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("masks must be boolean (True = may attend)")
        m = m.astype(bool)
    return m


def _ids(ids, n: int, name: str) -> list[int]:
    if ids is None:
        return list(range(n))
    ids = [int(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{name} has {len(ids)} entries but patterns have {n}")
    if len(set(ids)) != n:
        raise ValueError(f"{name} has repeated entries: {ids}")
    return ids


def attention_page_data(tokens, patterns, masks=None, title: str = "", layer_ids=None, head_ids=None,
                        kv_heads=None, layer_notes=None) -> dict:
    """The JSON object the page embeds (exposed for tests and for other writers).

    ``kv_heads``: ``(n_heads, n_kv_heads)`` for every layer, or one such pair per layer (grouped-query attention:
    head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``; ``head_ids`` are the model's head numbers).
    ``layer_notes``: each layer's mask in words (``"band 4"``, ...); default: read off ``masks``.
    """
    p = _to_numpy(patterns, "patterns")
    if p.ndim == 3:  # one layer [H, T, T]
        p = p[None]
    if p.ndim != 4 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"patterns must have shape [L, H, T, T] (square: queries x keys); got {tuple(p.shape)}")
    L, H, T, _ = p.shape
    if L == 0 or H == 0 or T == 0:
        raise ValueError(f"patterns must not be empty; got shape {tuple(p.shape)}")
    tokens = [str(t) for t in tokens]
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} tokens but patterns cover T={T} positions")
    p = p.astype(np.float32, copy=False)
    if not np.isfinite(p).all():
        raise ValueError("patterns contain NaN or infinite values")
    if p.min() < -1e-4 or p.max() > 1 + 1e-4:
        raise ValueError(f"patterns must be attention weights in [0, 1]; got min {p.min():.4g}, max {p.max():.4g}")

    layer_ids, head_ids = _ids(layer_ids, L, "layer_ids"), _ids(head_ids, H, "head_ids")
    groups = _kv_layout(kv_heads, L, head_ids)
    if masks is not None:
        keep = _masks_array(masks, L, T)
        leak = np.abs(p) * ~keep[:, None]
        if leak.max() > 1e-6:
            li, hi, q, k = np.unravel_index(int(np.argmax(leak)), leak.shape)
            raise ValueError(f"patterns are non-zero where masks forbid attending: layer {li}, head {hi}, query {q}, key {k} "
                             f"has weight {float(p[li, hi, q, k]):.4g} (are masks and patterns aligned?)")
    else:  # store only cells that are non-zero in some head (e.g. the lower triangle of causal patterns)
        keep = (p != 0).any(axis=1)

    notes = _notes(layer_notes, keep if masks is not None else None, L)
    q16 = np.rint(np.clip(p, 0.0, 1.0) * QUANT).astype("<u2")
    keep_b64, weights = [], []
    for li in range(L):
        k = keep[li]
        keep_b64.append(None if k.all() else _packed(np.packbits(k.reshape(-1)).tobytes()))
        flat = k.reshape(-1)
        weights.append([_packed(_planes(q16[li, hi].reshape(-1)[flat])) for hi in range(H)])
    return {
        "v": 2, "title": str(title or ""), "tokens": tokens, "T": T, "L": L, "H": H,
        "layer_ids": layer_ids, "head_ids": head_ids, "groups": groups, "notes": notes,
        "q": QUANT, "masked": masks is not None, "keep": keep_b64, "w": weights,
    }


def _script_json(data: dict) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can appear literally."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def _asset(name: str) -> str:
    """One file of ``assets/`` (read once per process)."""
    return (resources.files("builder.interp") / "assets" / name).read_text(encoding="utf-8")


def render_attention_html(tokens, patterns, masks=None, title: str = "", layer_ids=None, head_ids=None,
                          kv_heads=None, layer_notes=None) -> str:
    data = attention_page_data(tokens, patterns, masks, title, layer_ids, head_ids, kv_heads, layer_notes)
    page_title = html.escape(title or "Attention patterns")
    # Our own CSS and JS go in first. The user's text goes in last, and it cannot contain a placeholder
    # (each one has '<', which html.escape and _script_json never leave in), so no title or token is read as one.
    return (_asset("attention.html").replace("/*__CSS__*/", _asset("attention.css"))
            .replace("/*__JS__*/", _asset("attention.js"))
            .replace("<!--__TITLE__-->", page_title)
            .replace("<!--__DATA__-->", _script_json(data)))


def write_attention_html(path, tokens: list[str], patterns, masks=None, title: str = "", layer_ids=None,
                         head_ids=None, kv_heads=None, layer_notes=None) -> Path:
    """Write the page to ``path`` atomically (temporary file beside it, then ``os.replace``); returns the path."""
    text = render_attention_html(tokens, patterns, masks, title, layer_ids, head_ids, kv_heads, layer_notes)
    return atomic_write(Path(path), text.encode("utf-8"))

