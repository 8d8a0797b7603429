"""The dashboard page: the analytics' published charts (Vega-Lite) rendered to inline SVG, one HTML page.

The page loads nothing: no script, no stylesheet, no font from anywhere, so it shows the same offline,
behind a strict CSP, and in a headless browser. The document is the analytics' own
(``dashboard/indicators.json``, suppressed there); this module only checks its shape and lays it out.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

Render = Callable[[dict[str, Any]], str]
"""A Vega-Lite spec to an SVG document."""

DOCUMENT_KIND = "MedCloudIndicators"


class InvalidIndicatorsError(ValueError):
    """The published document is not one this API can show."""


def charts_of(document: Any) -> list[dict[str, Any]]:
    """The document's charts, each with a name, a title and a Vega-Lite spec; InvalidIndicatorsError otherwise."""
    if not isinstance(document, Mapping) or document.get("kind") != DOCUMENT_KIND or document.get("version") != 1:
        raise InvalidIndicatorsError(f"not a {DOCUMENT_KIND} document of version 1")
    charts = document.get("charts")
    if not isinstance(charts, list) or not charts:
        raise InvalidIndicatorsError("the document has no charts")
    for chart in charts:
        if not (
            isinstance(chart, Mapping)
            and isinstance(chart.get("name"), str)
            and isinstance(chart.get("title"), str)
            and isinstance(chart.get("spec"), Mapping)
        ):
            raise InvalidIndicatorsError("every chart needs a name, a title and a spec")
    return [dict(c) for c in charts]


def _strip_xml_prolog(svg: str) -> str:
    return svg[svg.index("<svg") :] if "<svg" in svg else svg


def page(document: Mapping[str, Any], render: Render) -> str:
    """The HTML page of every chart of ``document``, each rendered by ``render``."""
    charts = charts_of(document)
    label = html.escape(str(document.get("suppressedLabel", "<5")))
    minimum = html.escape(str(document.get("minPatients", 5)))
    generated = html.escape(str(document.get("generatedAt", "")))
    sections = "\n".join(
        f'<section class="chart" id="chart-{html.escape(c["name"])}">'
        f"<h2>{html.escape(c['title'])}</h2>{_strip_xml_prolog(render(dict(c['spec'])))}</section>"
        for c in charts
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>MedCloud indicators</title>
<style>
body {{ font-family: sans-serif; margin: 16px; background: #ffffff; color: #222222; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; align-items: start; }}
.chart svg {{ display: block; max-width: 100%; height: auto; }}
.chart {{ border: 1px solid #dddddd; padding: 8px; }}
h2 {{ font-size: 14px; margin: 0 0 4px; }}
</style></head>
<body>
<h1>City medical alliance indicators</h1>
<p class="note">De-identified. Cells counting fewer than {minimum} patients are suppressed and shown as
<strong>{label}</strong>, never as a count. Generated {generated}.</p>
<main>
{sections}
</main>
</body></html>
"""
