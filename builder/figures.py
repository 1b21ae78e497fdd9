"""Every picture the project makes leaves through here: a PNG written atomically (``save_png``) or encoded for a
notebook (``png_bytes``), and on the way its text is checked.

The check (``text_problems``) asks matplotlib where each piece of text it drew lies (``Text.get_window_extent``
with a renderer at the figure's resolution): titles, axis labels, the tick labels actually drawn, legends, labels
placed by hand. Two of them overlapping, one lying on a plotted point (a marker), or one reaching past the canvas
(a colour bar's ticks cut at the right edge, a title cut at the top) is reported as a ``CrowdedText`` warning that
names the picture and the texts, so a picture that went wrong is said out loud and the tests can catch the whole
class at once. ``place_labels`` puts the labels of a scatter's points where none of that happens.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text

from .files import atomic_path

OVERLAP_PX = 1.0  # texts may touch: an overlap counts when it is more than this in both directions
OUTSIDE_PX = 0.5  # how far past the canvas a text may reach (rounding)
GAP_PX = 3.0  # labels placed by place_labels keep this far from each other and from points


class CrowdedText(UserWarning):
    """A picture's text overlaps other text or a plotted point, or is cut at the edge of the canvas."""


def _drawn_tick_labels(axis) -> set[int]:
    """The ids of the tick labels ``axis`` draws: one tick per location, only locations in the view."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9 + 1e-12
    drawn = set()
    for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks),
                        (axis.get_minorticklocs(), axis.get_minor_ticks)):
        if len(locs) == 0:
            continue
        for tick, loc in zip(ticks(len(locs)), locs):
            if tick.get_visible() and lo - span <= loc <= hi + span:
                drawn.update(id(label) for label in (tick.label1, tick.label2) if label.get_visible())
    return drawn


def shown_texts(fig: Figure) -> list[Text]:
    """The texts a render of ``fig`` draws, with something in them."""
    hidden = set()
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            if not (ax.get_visible() and ax.axison and axis.get_visible()):
                hidden.update(id(t) for t in axis.findobj(Text))
                continue
            labels = {id(lab) for t in axis.get_major_ticks() + axis.get_minor_ticks() for lab in (t.label1, t.label2)}
            hidden.update(labels - _drawn_tick_labels(axis))  # ticks kept from an earlier draw, or out of view
        if not ax.get_visible():
            hidden.update(id(t) for t in ax.findobj(Text))
    texts = {id(t): t for t in fig.findobj(Text)}
    return [t for key, t in texts.items() if key not in hidden and t.get_visible() and t.get_text().strip()
            and t.get_alpha() != 0]


def renderer_for(fig: Figure) -> RendererAgg:
    """A renderer at the figure's resolution, to measure text with (nothing is drawn)."""
    return RendererAgg(int(fig.bbox.width), int(fig.bbox.height), fig.dpi)


def _name(text: Text) -> str:
    words = " ".join(text.get_text().split())
    return repr(words if len(words) <= 40 else words[:39] + "\u2026")


def _extent(text: Text, renderer) -> np.ndarray | None:
    """The pixels ``text`` covers (an annotation's text, not its arrow); None when it is not drawn."""
    box = text.get_window_extent(renderer)
    if box.width <= 1 and box.height <= 1:  # an annotation whose point lies outside its axes is not drawn
        return None
    return (Text.get_window_extent(text, renderer) if isinstance(text, Annotation) else box).extents


def marker_boxes(fig: Figure) -> list[np.ndarray]:
    """The pixels each drawn marker covers (plotted points and scatter points inside their axes)."""
    out = []
    scale = fig.dpi / 72
    for ax in fig.get_axes():
        if not ax.get_visible():
            continue
        x0, y0, x1, y1 = ax.bbox.extents
        found = []
        for line in ax.get_lines():
            if line.get_visible() and line.get_marker() not in (None, "None", "", " ") and len(line.get_xydata()):
                r = line.get_markersize() * scale / 2
                found += [(p, r) for p in line.get_transform().transform(line.get_xydata())]
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and coll.get_visible() and len(coll.get_offsets()):
                sizes = coll.get_sizes() if len(coll.get_sizes()) else [36.0]
                points = coll.get_offset_transform().transform(coll.get_offsets())
                found += [(p, np.sqrt(sizes[i % len(sizes)]) * scale / 2) for i, p in enumerate(points)]
        out += [np.array([x - r, y - r, x + r, y + r]) for (x, y), r in found if x0 <= x <= x1 and y0 <= y <= y1]
    return out


def _overlapping(b: np.ndarray, others: np.ndarray) -> np.ndarray:
    dx = np.minimum(b[2], others[:, 2]) - np.maximum(b[0], others[:, 0])
    dy = np.minimum(b[3], others[:, 3]) - np.maximum(b[1], others[:, 1])
    return np.flatnonzero((dx > OVERLAP_PX) & (dy > OVERLAP_PX))


def text_problems(fig: Figure) -> list[str]:
    """What is wrong with ``fig``'s text as its last draw laid it out (call after ``savefig``, at its resolution):
    each pair of texts that overlap, each text that lies on a plotted point, and each text that reaches past the
    canvas, in words. Empty when all is well."""
    renderer = renderer_for(fig)
    texts, boxes = [], []
    for text in shown_texts(fig):
        box = _extent(text, renderer)
        if box is not None:
            texts.append(text)
            boxes.append(box)
    problems = []
    width, height = fig.bbox.width, fig.bbox.height
    for text, (x0, y0, x1, y1) in zip(texts, boxes):
        sides = [side for side, out in (("left", x0 < -OUTSIDE_PX), ("right", x1 > width + OUTSIDE_PX),
                                        ("bottom", y0 < -OUTSIDE_PX), ("top", y1 > height + OUTSIDE_PX)) if out]
        if sides:
            problems.append(f"{_name(text)} is cut at the {' and '.join(sides)} edge")
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    for i in range(len(texts) - 1):
        problems += [f"{_name(texts[i])} overlaps {_name(texts[i + 1 + j])}" for j in _overlapping(b[i], b[i + 1:])]
    markers = np.asarray(marker_boxes(fig), dtype=float).reshape(-1, 4)
    for i in range(len(texts)):
        if len(_overlapping(b[i], markers)):
            problems.append(f"{_name(texts[i])} lies on a plotted point")
    return problems


def _checked(fig: Figure, dpi: float, where: str) -> None:
    """Warn of ``text_problems`` as the last ``savefig`` at ``dpi`` laid the figure out (axis labels and legends
    are placed in pixels at draw time: measured at another resolution they would seem to move)."""
    shown = fig.dpi
    fig.dpi = dpi
    try:
        problems = text_problems(fig)
    finally:
        fig.dpi = shown
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        warnings.warn(f"{where}: {shown}", CrowdedText, stacklevel=3)


def png_bytes(fig: Figure, dpi: int = 100, where: str = "a picture") -> bytes:
    """``fig`` as PNG bytes (a notebook's inline image, a page's inlined picture), its text checked."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _checked(fig, dpi, where)
    return buf.getvalue()


def save_png(fig: Figure, path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically), its text checked."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _checked(fig, dpi, str(path))
    return path


def wrapped(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` with each line broken at spaces to fit ``width_inches`` at ``fontsize`` points (a character taken
    as 0.6 em wide: DejaVu Sans averages less), for a title that is longer than its figure is wide."""
    chars = max(12, int(width_inches * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_long_words=True) if line else line for line in text.split("\n"))


class ShownFigure(Figure):
    """A Figure that notebooks display inline (``_repr_png_``) without pyplot or an inline backend."""

    def _repr_png_(self) -> bytes:
        title = self._suptitle.get_text() if self._suptitle is not None else ""
        return png_bytes(self, where=f"an inline picture {title.splitlines()[0][:60]!r}" if title else "an inline picture")


def _free(box, taken: list, inside) -> float:
    """How much of ``box`` (x0, y0, x1, y1 in pixels) lies on boxes already taken, or outside ``inside``: 0 when
    it is free."""
    x0, y0, x1, y1 = box
    cost = 0.0
    for a0, b0, a1, b1 in taken:
        dx, dy = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if dx > -GAP_PX and dy > -GAP_PX:
            cost += (dx + GAP_PX) * (dy + GAP_PX)
    i0, j0, i1, j1 = inside
    cost += 1e3 * (max(0, i0 - x0) + max(0, x1 - i1) + max(0, j0 - y0) + max(0, y1 - j1))
    return cost


def place_labels(ax, xy, labels: list[str], fontsize: float = 7, avoid: list | None = None, **text_kw) -> list:
    """Label the points ``xy`` (data coordinates) of ``ax`` so that no label overlaps another label, a point, a text
    already in the axes, or a box of ``avoid`` (pixel extents), and all stay inside the axes: each label takes the
    nearest free place among eight directions at growing distances (a thin line joins it to its point when it had
    to move away). Call after the figure's layout is final (``tight_layout``), and do not lay it out again."""
    fig = ax.get_figure(root=True)
    renderer = renderer_for(fig)
    inside = ax.get_window_extent(renderer).extents
    points = ax.transData.transform(np.asarray(xy, dtype=float).reshape(-1, 2))
    r = 3.0 * fig.dpi / 72  # a small marker's half width: where a leader line stops short of its point
    taken = [tuple(box) for box in marker_boxes(fig)]
    taken += [t.get_window_extent(renderer).extents for t in ax.texts if t.get_visible() and t.get_text().strip()]
    taken += list(avoid or [])
    px = fig.dpi / 72
    order = np.argsort(points[:, 0])
    made = [None] * len(labels)
    for i in order:
        (x, y), label = points[i], labels[i]
        probe = ax.text(0, 0, label, fontsize=fontsize, transform=None, **text_kw)
        w, h = probe.get_window_extent(renderer).size
        probe.remove()
        best = None
        for distance in (2, 5, 9, 14, 20, 28, 38):
            d = distance * px + r
            for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)):
                x0 = x + dx * d - (w if dx < 0 else w / 2 if dx == 0 else 0)
                y0 = y + dy * d - (h if dy < 0 else h / 2 if dy == 0 else 0)
                box = (x0, y0, x0 + w, y0 + h)
                cost = _free(box, taken, inside)
                if best is None or cost < best[0]:
                    best = (cost, box, dx, dy, distance)
            if best[0] == 0:
                break
        _, box, dx, dy, distance = best
        taken.append(box)
        ha = "left" if dx > 0 else "right" if dx < 0 else "center"
        va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
        offset = ((box[0] if dx >= 0 else box[2]) - x, (box[1] if dy >= 0 else box[3]) - y)
        if dx == 0:
            offset = ((box[0] + box[2]) / 2 - x, offset[1])
        if dy == 0:
            offset = (offset[0], (box[1] + box[3]) / 2 - y)
        at = tuple(ax.transData.inverted().transform(points[i]))
        made[i] = ax.annotate(label, at, xytext=(offset[0] / px, offset[1] / px), textcoords="offset points",
                              ha=ha, va=va, fontsize=fontsize, annotation_clip=False,
                              arrowprops=dict(arrowstyle="-", lw=0.4, color="#999999", shrinkA=0, shrinkB=r / px)
                              if distance >= 9 else None, **text_kw)
    return made
