"""The one table renderer: aligned plain text for the terminal, or Markdown for files and loggers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> Any:
    """A numpy or torch scalar as a Python number; anything else as it is."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], markdown: bool = False, align: str | None = None) -> str:
    """``header`` and ``rows`` as text. ``align``: one letter per column, ``l`` or ``r`` (default: the first
    column left, the others right). Markdown escapes ``|`` and writes line breaks as ``<br>``."""
    header = [str(h) for h in header]
    rows = [[str(cell(v)) for v in row] for row in rows]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} values for {len(header)} columns")
    align = align or "l" + "r" * (len(header) - 1)
    if markdown:
        def line(values):
            return "| " + " | ".join(v.replace("|", "\\|").replace("\n", "<br>") for v in values) + " |"

        rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
        return "\n".join([line(header), rule] + [line(r) for r in rows])
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def line(values):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])
