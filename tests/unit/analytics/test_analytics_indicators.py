"""The indicators over an in-process DuckDB (no servers), each checked against counts made in Python from the
same resources, and every cell under five patients suppressed."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from medcloud_analytics import flatten
from medcloud_analytics.indicators import BY_NAME, MIN_PATIENTS, compute_all, suppress
from tests.analytics_activity import TIERS, activity, service_request


@pytest.fixture(scope="module")
def cells() -> dict[str, list[dict[str, Any]]]:
    conn = duckdb.connect()
    conn.register("lake", flatten.table(list(activity())))
    conn.execute("CREATE VIEW records AS SELECT * FROM lake")
    return compute_all(conn, TIERS)


def _cell(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any]:
    (found,) = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    return found


def test_referrals_by_direction(cells: dict[str, list[dict[str, Any]]]) -> None:
    resources = list(activity())
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


def test_a_recognised_order_counts_in_the_month_of_the_order_it_closed() -> None:
    """The exchange's Tasks carry no date: a Task counts where its focus ServiceRequest (the order) does."""
    resources = list(activity())
    lab = [
        r
        for r in resources
        if r["resourceType"] == "ServiceRequest" and r["category"][0]["coding"][0]["code"] == "108252007"
    ]
    # Six more orders no result closed: 14 orders, 6 recognised, a rest of 8: the share can be shown.
    more = [{**lab[0], "id": f"more-{i}", "subject": {"reference": f"Patient/more{i}"}} for i in range(6)]
    conn = duckdb.connect()
    conn.register("lake", flatten.table(resources + more))
    conn.execute("CREATE VIEW records AS SELECT * FROM lake")
    (cell,) = compute_all(conn, TIERS)["recognition"]
    assert (cell["month"], cell["orders"], cell["patients"]) == ("2026-11", 14, 14)
    assert (cell["recognised"], cell["recognised_patients"], cell["not_repeated_share"]) == (6, 6, round(6 / 14, 4))


def _appointment(n: int, host: str, status: str, referral: str | None = None) -> dict[str, Any]:
    """An Appointment as the exchange exports it: the patient, then the host (and the booker) as participants."""
    return {
        "resourceType": "Appointment",
        "id": f"a{n}",
        "status": status,
        "start": "2026-11-01T00:00:00Z",
        "participant": [
            {"actor": {"reference": f"Patient/v{n}"}, "status": "accepted"},
            {"actor": {"reference": f"Organization/{host}"}, "status": "accepted"},
            {"actor": {"reference": "Organization/township-maple"}, "status": "accepted"},
        ],
        **({"basedOn": [{"reference": f"ServiceRequest/{referral}"}]} if referral else {}),
    }


def test_visits_by_tier_and_direction_a_referral_carries_its_way() -> None:
    """Seven referral-carried visits at the county (two cancelled or no-shows: no visit), three direct ones at the
    township: the county's up cell counts five, the township's direct cell is suppressed."""
    referral = {**service_request("3457005", "township-maple", "county-people", "v0", "2026-11"), "id": "ref"}
    statuses = ["booked", "arrived", "fulfilled", "fulfilled", "booked", "cancelled", "noshow"]
    carried = [_appointment(n, "county-people", status, "ref") for n, status in enumerate(statuses)]
    direct = [_appointment(10 + n, "township-maple", "fulfilled") for n in range(3)]
    conn = duckdb.connect()
    conn.register("lake", flatten.table([referral, *carried, *direct]))
    conn.execute("CREATE VIEW records AS SELECT * FROM lake")
    visits = compute_all(conn, TIERS)["visits"]
    up = _cell(visits, tier="county", direction="up")
    assert (up["month"], up["visits"], up["patients"], up["suppressed"]) == ("2026-11", 5, 5, False)
    home = _cell(visits, tier="township", direction="direct")
    assert (home["visits"], home["patients"], home["suppressed"]) == (None, None, True)
    assert len(visits) == 2
