"""The dashboard document (Vega-Lite specs over suppressed cells) and the API's page of it, with no servers:
the specs compile and render to SVG, and a suppressed cell shows ``<5``, never its count."""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb
import pytest
import vl_convert

from medcloud_analytics import flatten
from medcloud_analytics.dashboard import SUPPRESSED, document
from medcloud_analytics.indicators import BY_NAME, compute_all, prepare
from medcloud_api.dashboard import InvalidIndicatorsError, charts_of, page
from tests.analytics_activity import TIERS, activity


@pytest.fixture(scope="module")
def conn() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.register("lake", flatten.table(list(activity())))
    conn.execute("CREATE VIEW records AS SELECT * FROM lake")
    return conn


@pytest.fixture(scope="module")
def doc(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    # Through JSON, as the API reads it from the bucket.
    published: dict[str, Any] = json.loads(
        json.dumps(document(compute_all(conn, TIERS), "2026-12-02T04:00:00+00:00"), default=str)
    )
    return published


def _chart(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (chart,) = [c for c in doc["charts"] if c["name"] == name]
    return dict(chart)


def test_the_document_has_the_four_indicators_as_charts(doc: dict[str, Any]) -> None:
    assert [c["name"] for c in doc["charts"]] == [
        "referrals",
        "recognition",
        "consultations",
        "bp_control",
        "glucose_control",
    ]
    referrals = {r["group"] + " " + r["category"]: r for r in _chart(doc, "referrals")["spec"]["data"]["values"]}
    assert referrals["2026-11 township → county"]["value"] == 8
    assert referrals["2026-11 township → county"]["label"] == "8"
    bp = _chart(doc, "bp_control")["spec"]["data"]["values"]
    assert {r["label"] for r in bp if r["category"] == "county-people"} == {"58%"}


def test_a_suppressed_cell_carries_no_count_only_the_label(
    conn: duckdb.DuckDBPyConnection, doc: dict[str, Any]
) -> None:
    prepare(conn, TIERS)
    raw = conn.execute(BY_NAME["referrals"].sql).fetchall()
    (down,) = [row for row in raw if row[3] == "down"]
    hidden = down[4]  # the real number of downward referrals, under five patients
    (row,) = [r for r in _chart(doc, "referrals")["spec"]["data"]["values"] if "county → township" in r["category"]]
    assert (row["value"], row["at"], row["label"], row["suppressed"]) == (None, 0, SUPPRESSED, True)
    assert hidden > 0
    assert str(hidden) not in (row["label"], str(row["value"]), str(row["at"]))
    # The recognition share is suppressed as a whole (its small rest would give it away).
    (share,) = _chart(doc, "recognition")["spec"]["data"]["values"]
    assert (share["value"], share["label"]) == (None, SUPPRESSED)


def test_the_page_renders_every_chart_as_inline_svg_with_suppressed_labels(doc: dict[str, Any]) -> None:
    html = page(doc, lambda spec: str(vl_convert.vegalite_to_svg(spec)))
    assert html.count("<svg") == len(doc["charts"])
    assert "<script" not in html
    # Nothing is loaded from anywhere: the only URLs are the SVG namespaces.
    assert set(re.findall(r"https?://[^\"' ]*", html)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    referrals = html[html.index('id="chart-referrals"') : html.index('id="chart-recognition"')]
    assert re.search(r'class="mark-rect role-mark', referrals), "no bars drawn"
    marks = referrals[referrals.index("mark-text role-mark") :]
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", marks[: marks.index("</g>")])
    assert sorted(labels) == ["&lt;5", "6", "8"]


def test_a_document_of_another_shape_is_refused() -> None:
    for bad in ({}, {"kind": "MedCloudIndicators", "version": 1, "charts": []}, {"kind": "x", "version": 1}):
        with pytest.raises(InvalidIndicatorsError):
            charts_of(bad)
    with pytest.raises(InvalidIndicatorsError):
        charts_of({"kind": "MedCloudIndicators", "version": 1, "charts": [{"name": "a", "title": "b"}]})
