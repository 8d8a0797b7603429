"""The indicators as text tables for a terminal (what `medcloud analytics indicators` prints).

Suppressed values print as ``<5``: the reader sees that a cell exists and is small, never its count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medcloud_analytics.indicators import BY_NAME, MIN_PATIENTS

SUPPRESSED = f"<{MIN_PATIENTS}"


def _value(value: Any) -> str:
    if value is None:
        return SUPPRESSED
    if isinstance(value, float):
        return f"{value:.1%}"
    return str(value)


def table(name: str, cells: Sequence[Mapping[str, Any]]) -> str:
    """One indicator as an aligned text table, its title first."""
    indicator = BY_NAME[name]
    columns = [*indicator.dimensions, *indicator.measures, *(s[0] for s in indicator.shares)]
    rows = [
        [str(c.get(col) or "-") if col in indicator.dimensions else _value(c.get(col)) for col in columns]
        for c in cells
    ]
    widths = [max(len(col), *(len(r[i]) for r in rows)) if rows else len(col) for i, col in enumerate(columns)]
    lines = [indicator.title, "  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if not rows:
        lines.append("(no data)")
    return "\n".join(line.rstrip() for line in lines)


def report(indicators: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    return "\n\n".join(table(name, cells) for name, cells in indicators.items())
