"""Plain-text and CSV tables: the sweep summary, evaluation results and comparisons print and
save theirs with these."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence


def text_table(rows: Sequence[Sequence[str]], rule: bool = True) -> str:
    """``rows`` (the header first) in left-aligned columns two spaces apart; ``rule``: a line of
    dashes under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as CSV, a header of the first row's keys."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
