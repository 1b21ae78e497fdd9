"""One self-contained HTML page that shows what every attention head looks at.

Why not bertviz or CircuitsVis: their pages fetch from a CDN and freeze on long inputs; this one works offline on 1,024 tokens.

    path = write_attention_html("attention.html", tokens, patterns, masks=masks)

``patterns`` is ``[L, H, T, T]`` (rows = queries, columns = keys, each row sums to 1, masked
cells exactly 0); ``masks`` (optional, ``[L, T, T]``, ``[L, 1, T, T]`` or ``[T, T]``, True = may
attend) lets the page draw masked cells (hatched grey) differently from cells whose weight is ~0.

The page works offline from disk: CSS, JavaScript and data are inline, nothing is fetched. The template,
CSS and JavaScript are files under ``assets/`` (``attention.html``, ``.css``, ``.js``), inlined at render time.
Weights are stored as uint16 (1/65535 steps, base64) for the cells that can be non-zero only
(the mask's allowed cells, or the cells non-zero in some head when no mask is given), so a
causal L=2, H=4, T=1024 page is about 11 MB. Token text is only ever set with ``textContent``
and ``<``, ``>``, ``&`` are escaped inside the embedded JSON.

Tests and scripts can drive the page through ``window.__hf``: ``select(layer, head)`` (real
ids), ``hover(tokenIndex)``, ``info()`` (the info text), ``view("single" | "grid")``,
``cell(q, k)``, ``cellRect(q, k)``, ``state()``; ``document.body.dataset.ready`` is ``"1"`` once
the first render is done (``"error"`` if it failed).
"""

from __future__ import annotations

import base64
import functools
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..files import atomic_write

QUANT = 65535  # weights are stored as round(w * QUANT) in uint16


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


def attention_page_data(tokens, patterns, masks=None, title: str = "", layer_ids=None, head_ids=None) -> dict:
    """The JSON object the page embeds (exposed for tests and for other writers)."""
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

    if masks is not None:
        keep = _masks_array(masks, L, T)
        leak = np.abs(p) * ~keep[:, None]
        if leak.max() > 1e-6:
            li, hi, q, k = np.unravel_index(int(np.argmax(leak)), leak.shape)
            raise ValueError(f"patterns are non-zero where masks forbid attending: layer {li}, head {hi}, query {q}, key {k} "
                             f"has weight {float(p[li, hi, q, k]):.4g} (are masks and patterns aligned?)")
    else:  # store only cells that are non-zero in some head (e.g. the lower triangle of causal patterns)
        keep = (p != 0).any(axis=1)

    q16 = np.rint(np.clip(p, 0.0, 1.0) * QUANT).astype("<u2")
    keep_b64, weights = [], []
    for li in range(L):
        k = keep[li]
        keep_b64.append(None if k.all() else _b64(np.packbits(k.reshape(-1)).tobytes()))
        flat = k.reshape(-1)
        weights.append([_b64(q16[li, hi].reshape(-1)[flat].tobytes()) for hi in range(H)])
    return {
        "v": 1, "title": str(title or ""), "tokens": tokens, "T": T, "L": L, "H": H,
        "layer_ids": _ids(layer_ids, L, "layer_ids"), "head_ids": _ids(head_ids, H, "head_ids"),
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


def render_attention_html(tokens, patterns, masks=None, title: str = "", layer_ids=None, head_ids=None) -> str:
    data = attention_page_data(tokens, patterns, masks, title, layer_ids, head_ids)
    page_title = html.escape(title or "Attention patterns")
    # Our own CSS and JS go in first. The user's text goes in last, and it cannot contain a placeholder
    # (each one has '<', which html.escape and _script_json never leave in), so no title or token is read as one.
    return (_asset("attention.html").replace("/*__CSS__*/", _asset("attention.css"))
            .replace("/*__JS__*/", _asset("attention.js"))
            .replace("<!--__TITLE__-->", page_title)
            .replace("<!--__DATA__-->", _script_json(data)))


def write_attention_html(path, tokens: list[str], patterns, masks=None, title: str = "", layer_ids=None,
                         head_ids=None) -> Path:
    """Write the page to ``path`` atomically (temporary file beside it, then ``os.replace``); returns the path."""
    text = render_attention_html(tokens, patterns, masks, title, layer_ids, head_ids)
    return atomic_write(Path(path), text.encode("utf-8"))

