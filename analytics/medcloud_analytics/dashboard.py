"""The dashboard document: the suppressed indicators as Vega-Lite charts, written beside the lake for the API.

The control API may not import the analytics (they deploy apart), so the analytics publishes one JSON
document, ``dashboard/indicators.json`` in its own bucket, and the API only renders what it finds there.
Every value in it has already been suppressed: a suppressed cell carries no count, only the label ``<5``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from medcloud_analytics.indicators import MIN_PATIENTS
from medcloud_analytics.lake import Lake

DOCUMENT_KEY = "dashboard/indicators.json"
SUPPRESSED = f"<{MIN_PATIENTS}"
Cells = Sequence[Mapping[str, Any]]
VEGA_LITE = "https://vega.github.io/schema/vega-lite/v5.json"  # the schema's name; nothing is fetched


def _label(value: Any, share: bool) -> str:
    if value is None:
        return SUPPRESSED
    return f"{value:.0%}" if share else str(value)


def _rows(cells: Cells, category: Any, group: Any, value: str, share: bool = False) -> list[dict[str, Any]]:
    """(category, group, value, label) per cell; a suppressed value stays None, its label says so."""
    return [
        {
            "category": category(c),
            "group": group(c),
            "value": c.get(value),
            "at": c.get(value) or 0,  # the bar's height and where the label sits: a suppressed cell's at the axis
            "label": _label(c.get(value), share),
            "suppressed": c.get(value) is None,
        }
        for c in cells
    ]


def bar_chart(title: str, rows: list[dict[str, Any]], x: str, y: str, share: bool = False) -> dict[str, Any]:
    """Grouped bars of ``value`` with each bar's label above it; a suppressed cell gets only a grey ``<5``."""
    axis = {"format": ".0%"} if share else {"tickMinStep": 1}
    scale = {"domain": [0, 1]} if share else {}
    return {
        "$schema": VEGA_LITE,
        "description": title,
        "width": 400,
        "height": 200,
        "data": {"values": rows},
        "encoding": {
            "x": {"field": "category", "type": "nominal", "title": x, "axis": {"labelAngle": 0}},
            "xOffset": {"field": "group", "type": "nominal"},
        },
        "layer": [
            {
                # A suppressed cell's bar has no height (an empty layer would leave the chart unbounded).
                "mark": "bar",
                "encoding": {
                    "y": {"field": "at", "type": "quantitative", "title": y, "axis": axis, "scale": scale},
                    "color": {"field": "group", "type": "nominal", "title": None},
                },
            },
            {
                "mark": {"type": "text", "dy": -6, "fontSize": 10},
                "encoding": {
                    "y": {"field": "at", "type": "quantitative"},
                    "text": {"field": "label"},
                    "color": {
                        "condition": {"test": "datum.suppressed", "value": "#888888"},
                        "value": "#222222",
                    },
                },
            },
        ],
    }


def charts(indicators: Mapping[str, Cells]) -> list[dict[str, Any]]:
    """The four charts the commission reads, each ``{name, title, spec}``."""
    referrals = indicators.get("referrals", [])
    recognition = indicators.get("recognition", [])
    consultations = indicators.get("consultations", [])
    monitoring = indicators.get("monitoring", [])
    specs = [
        (
            "referrals",
            "Referrals by tier and direction",
            _rows(
                referrals, lambda c: f"{c.get('from_tier')} → {c.get('to_tier')}", lambda c: c.get("month"), "referrals"
            ),
            "from → to tier",
            "referrals",
            False,
        ),
        (
            "recognition",
            "Exam results recognised: share of patients whose tests were not repeated",
            _rows(recognition, lambda c: c.get("month"), lambda _c: "not repeated", "not_repeated_share", True),
            "month",
            "share of patients",
            True,
        ),
        (
            "consultations",
            "Remote consultations by specialty",
            _rows(consultations, lambda c: c.get("specialty"), lambda c: c.get("month"), "consultations"),
            "specialty",
            "consultations",
            False,
        ),
        (
            "bp_control",
            "Blood pressure controlled (<140/90), share by institution and month",
            _rows(monitoring, lambda c: c.get("institution"), lambda c: c.get("month"), "bp_controlled_share", True),
            "institution",
            "share of patients",
            True,
        ),
        (
            "glucose_control",
            "Glucose controlled (<7 mmol/L), share by institution and month",
            _rows(
                monitoring, lambda c: c.get("institution"), lambda c: c.get("month"), "glucose_controlled_share", True
            ),
            "institution",
            "share of patients",
            True,
        ),
    ]
    return [
        {"name": name, "title": title, "spec": bar_chart(title, rows, x, y, share)}
        for name, title, rows, x, y, share in specs
    ]


def document(indicators: Mapping[str, Cells], generated_at: str) -> dict[str, Any]:
    """The whole document the API serves; ``indicators`` must be suppressed already (indicators.compute)."""
    return {
        "kind": "MedCloudIndicators",
        "version": 1,
        "generatedAt": generated_at,
        "minPatients": MIN_PATIENTS,
        "suppressedLabel": SUPPRESSED,
        "charts": charts(indicators),
    }


def publish(lake: Lake, doc: Mapping[str, Any]) -> str:
    """Write the document to the analytics bucket (replacing the previous one); its key."""
    data = json.dumps(doc, indent=1, default=str, ensure_ascii=False).encode()
    with lake.filesystem().open_output_stream(f"{lake.bucket}/{DOCUMENT_KEY}") as out:
        out.write(data)
    return DOCUMENT_KEY
