"""The flat rows Parquet holds, from de-identified FHIR, without servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcloud_analytics import flatten
from medcloud_analytics.lake import httpfs_extension

DATA = Path(__file__).parents[2] / "data"


def test_a_blood_pressure_row() -> None:
    bp = json.loads((DATA / "analytics" / "observation-bloodpressure.json").read_text())
    row = flatten.row(bp)
    assert row["month"] == "2004-12"
    assert row["patient"] == "ex-patient"
    assert (row["systolic"], row["diastolic"]) == (140.0, 90.0)
    assert row["code"] == "85354-9"
    assert row["category"] == "vital-signs"
    assert json.loads(row["resource"]) == bp


def test_a_referral_row_names_both_organisations() -> None:
    referral = {
        "resourceType": "ServiceRequest",
        "id": "r",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}],
        "subject": {"reference": "Patient/abc"},
        "requester": {"reference": "Organization/township-maple"},
        "performer": [{"reference": "Organization/county-people"}],
        "authoredOn": "2026-11",
    }
    row = flatten.row(referral)
    assert (row["from_org"], row["to_org"], row["month"], row["category"]) == (
        "township-maple",
        "county-people",
        "2026-11",
        "3457005",
    )


@pytest.mark.parametrize(
    ("resource", "month"),
    [
        ({"resourceType": "Appointment", "start": "2026-11-01T00:00:00Z"}, "2026-11"),
        ({"resourceType": "Coverage", "period": {"start": "2026-01"}}, "2026-01"),
        ({"resourceType": "Patient"}, flatten.UNKNOWN_MONTH),
    ],
)
def test_month_of(resource: dict[str, object], month: str) -> None:
    assert flatten.month_of(resource) == month


def test_the_table_has_the_schema_and_one_row_each() -> None:
    rows = [{"resourceType": "Patient", "id": str(i)} for i in range(3)]
    table = flatten.table(rows)
    assert table.schema == flatten.SCHEMA
    assert table.num_rows == 3


def test_the_httpfs_extension_ships_in_the_wheel() -> None:
    assert httpfs_extension().stat().st_size > 1_000_000


def test_a_requester_given_as_a_contained_practitioner_role_is_its_organization() -> None:
    referral = {
        "resourceType": "ServiceRequest",
        "contained": [
            {"resourceType": "PractitionerRole", "id": "requester", "organization": {"reference": "Organization/a"}}
        ],
        "requester": {"reference": "#requester"},
        "performer": [{"reference": "Organization/b"}],
    }
    assert (flatten.row(referral)["from_org"], flatten.row(referral)["to_org"]) == ("a", "b")
