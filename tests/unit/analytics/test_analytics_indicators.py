"""The indicators over an in-process DuckDB (no servers), each checked against counts made in Python from the
same resources, and every cell under five patients suppressed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest

from medcloud_analytics import flatten
from medcloud_analytics.indicators import BY_NAME, MIN_PATIENTS, compute_all, suppress

SNOMED = "http://snomed.info/sct"
TIERS = {"city-general": "city", "county-people": "county", "township-maple": "township", "community-east": "community"}
_ids = itertools.count()


def _sr(category: str, src: str, dst: str, patient: str, month: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{next(_ids)}",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": category}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": f"Organization/{src}"},
        "performer": [{"reference": f"Organization/{dst}"}],
        "authoredOn": month,
        **extra,
    }


def _bp(org: str, patient: str, month: str, day: int, systolic: float, diastolic: float) -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        quantity = {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "valueQuantity": quantity}

    return {
        "resourceType": "Observation",
        "id": f"o{next(_ids)}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": f"Organization/{org}"}],
        "effectiveDateTime": f"{month}-{day:02d}T08:00:00Z",
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


def _glucose(org: str, patient: str, month: str, mmol: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"g{next(_ids)}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": f"Organization/{org}"}],
        "effectiveDateTime": f"{month}-10T07:00:00Z",
        "valueQuantity": {"value": mmol, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }


def _activity() -> Iterator[dict[str, Any]]:
    month = "2026-11"
    for i in range(7):  # township -> county: up, 7 patients, one of them twice
        yield _sr("3457005", "township-maple", "county-people", f"up{i}", month)
    yield _sr("3457005", "township-maple", "county-people", "up0", month)
    for i in range(3):  # county -> township: down, 3 patients: suppressed
        yield _sr("3457005", "county-people", "township-maple", f"down{i}", month)
    for i in range(6):  # township -> community: across
        yield _sr("3457005", "township-maple", "community-east", f"across{i}", month)
    for i in range(8):  # lab orders, 6 of them closed by a recognised result (2 repeated: a small rest)
        yield _sr("108252007", "township-maple", "county-people", f"lab{i}", month)
    for i in range(6):
        yield {
            "resourceType": "Task",
            "id": f"t{i}",
            "status": "completed",
            "intent": "order",
            "for": {"reference": f"Patient/lab{i}"},
            "authoredOn": month,
            "output": [
                {"type": {"coding": [{"code": "x"}]}, "valueReference": {"reference": f"DiagnosticReport/d{i}"}}
            ],
        }
    for i in range(5):  # consultations: cardiology (5 patients) and dermatology (2: suppressed)
        yield _sr(
            "11429006",
            "county-people",
            "city-general",
            f"c{i}",
            month,
            performerType={"coding": [{"code": "394579002"}]},
        )
    for i in range(2):
        yield _sr(
            "11429006",
            "county-people",
            "city-general",
            f"d{i}",
            month,
            performerType={"coding": [{"code": "394582007"}]},
        )
    for i in range(12):  # 12 monitored at the county; the last reading counts: 7 controlled
        yield _bp("county-people", f"m{i}", month, 1, 160, 100)
        yield _bp("county-people", f"m{i}", month, 20, 130 if i < 7 else 150, 80)
    for i in range(12):
        yield _glucose("county-people", f"m{i}", month, 6.0 if i < 6 else 8.5)
    for i in range(3):  # a small clinic's three monitored patients: suppressed
        yield _bp("community-east", f"s{i}", month, 3, 120, 70)


@pytest.fixture(scope="module")
def cells() -> dict[str, list[dict[str, Any]]]:
    conn = duckdb.connect()
    conn.register("lake", flatten.table(list(_activity())))
    conn.execute("CREATE VIEW records AS SELECT * FROM lake")
    return compute_all(conn, TIERS)


def _cell(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any]:
    (found,) = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    return found


def test_referrals_by_direction(cells: dict[str, list[dict[str, Any]]]) -> None:
    resources = list(_activity())
    up = [
        r
        for r in resources
        if r["resourceType"] == "ServiceRequest" and r["id"] and r["subject"]["reference"].startswith("Patient/up")
    ]
    cell = _cell(cells["referrals"], direction="up")
    assert (cell["referrals"], cell["patients"]) == (len(up), len({r["subject"]["reference"] for r in up}))
    assert (cell["from_tier"], cell["to_tier"]) == ("township", "county")
    across = _cell(cells["referrals"], direction="across")
    assert across["patients"] == 6
    down = _cell(cells["referrals"], direction="down")
    assert down["suppressed"] is True
    assert down["referrals"] is None
    assert down["patients"] is None


def test_tests_not_repeated(cells: dict[str, list[dict[str, Any]]]) -> None:
    (cell,) = cells["recognition"]
    assert (cell["orders"], cell["patients"]) == (8, 8)
    # 6 of 8 recognised, but the 2 repeated are a small rest: the share and what would reveal it suppressed.
    assert (cell["recognised"], cell["recognised_patients"], cell["not_repeated_share"]) == (None, None, None)


def test_consultations_by_specialty(cells: dict[str, list[dict[str, Any]]]) -> None:
    cardiology = _cell(cells["consultations"], specialty="394579002")
    assert (cardiology["consultations"], cardiology["patients"]) == (5, 5)
    assert _cell(cells["consultations"], specialty="394582007")["patients"] is None


def test_monitoring_shares_by_institution(cells: dict[str, list[dict[str, Any]]]) -> None:
    county = _cell(cells["monitoring"], institution="county-people")
    assert (county["patients"], county["bp_patients"], county["bp_controlled"]) == (12, 12, 7)
    assert county["bp_controlled_share"] == round(7 / 12, 4)
    assert (county["glucose_patients"], county["glucose_controlled"]) == (12, 6)
    assert county["glucose_controlled_share"] == 0.5
    clinic = _cell(cells["monitoring"], institution="community-east")
    assert clinic["suppressed"] is True
    assert clinic["patients"] is None
    assert clinic["bp_controlled_share"] is None


def test_no_output_cell_counts_fewer_than_five_patients(cells: dict[str, list[dict[str, Any]]]) -> None:
    for name, rows in cells.items():
        for row in rows:
            for measure in BY_NAME[name].patient_counts:
                assert row[measure] is None or row[measure] >= MIN_PATIENTS, (name, row)


def test_suppression_rules() -> None:
    indicator = BY_NAME["monitoring"]
    row = {"patients": 20, "bp_patients": 20, "bp_controlled": 17, "glucose_patients": 4, "glucose_controlled": 4}
    (cell,) = suppress([row], indicator)
    assert cell["bp_controlled_share"] is None  # 3 uncontrolled: the rest would be small
    assert cell["bp_controlled"] is None
    assert cell["glucose_patients"] is None
    assert cell["patients"] == 20


def test_a_share_with_large_parts_is_shown() -> None:
    row = {"month": "2026-11", "orders": 24, "patients": 20, "recognised": 11, "recognised_patients": 10}
    (cell,) = suppress([row], BY_NAME["recognition"])
    assert (cell["not_repeated_share"], cell["recognised"], cell["suppressed"]) == (0.5, 11, False)
