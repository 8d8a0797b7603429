"""The insurance card's pure rules: what a card looks like, what a registration must carry, when a card is refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.workflows.insurance import (
    CoverageRow,
    card_problem,
    coverage_out,
    parse_card,
    parse_registration,
    refusal,
)
from tests.workflows_data import INSURANCE_CARD, RESIDENT_ID, coverage

NOW = datetime(2026, 12, 2, tzinfo=UTC)


@pytest.mark.parametrize("value", ["RV0123456789", "AB12345678", "ZZ" + "1" * 18])
def test_well_formed_cards_pass(value: str) -> None:
    assert card_problem(INSURANCE_CARD, value) is None


@pytest.mark.parametrize(
    ("system", "value", "says"),
    [
        (INSURANCE_CARD, "rv0123456789", "two capital letters"),
        (INSURANCE_CARD, "RV0123", "8 to 18 digits"),
        (INSURANCE_CARD, "RV0123456789X", "two capital letters"),
        (RESIDENT_ID, "RV0123456789", "urn:medcloud:insurance-card:"),
        ("urn:medcloud:insurance-card:", "RV0123456789", "does not name a province"),
    ],
)
def test_malformed_cards_say_why(system: str, value: str, says: str) -> None:
    problem = card_problem(system, value)
    assert problem is not None
    assert says in problem


def test_presenting_a_malformed_card_is_a_400() -> None:
    with pytest.raises(FhirError) as raised:
        parse_card(f"{INSURANCE_CARD}|12-34")
    assert raised.value.status == 400
    assert "malformed insurance card" in raised.value.diagnostics
    with pytest.raises(FhirError):
        parse_card("RV0123456789")  # no system


def _row(status: str = "active", start: datetime | None = None, end: datetime | None = None) -> CoverageRow:
    return CoverageRow(uuid.uuid4(), uuid.uuid4(), status, start, end, "county-people")


def test_unknown_expired_cancelled_and_not_yet_valid_cards_are_refused_clearly() -> None:
    unknown = refusal(None, NOW)
    assert unknown is not None
    assert unknown.status == 404
    expired = refusal(_row(end=NOW - timedelta(days=1)), NOW)
    assert expired is not None
    assert expired.status == 422
    assert "expired on 2026-12-01" in expired.diagnostics
    cancelled = refusal(_row(status="cancelled"), NOW)
    assert cancelled is not None
    assert "cancelled" in cancelled.diagnostics
    early = refusal(_row(start=NOW + timedelta(days=3)), NOW)
    assert early is not None
    assert "valid from 2026-12-05" in early.diagnostics
    assert refusal(_row(start=NOW - timedelta(days=1), end=NOW + timedelta(days=1)), NOW) is None


def test_a_registration_carries_exactly_one_card_in_a_contained_beneficiary() -> None:
    parsed = parse_registration(coverage("RV0123456789", "110101199003077777"))
    assert parsed.card == (INSURANCE_CARD, "RV0123456789")
    assert (RESIDENT_ID, "110101199003077777") in parsed.identifiers
    assert parsed.end == datetime(2026, 12, 31, tzinfo=UTC)

    no_card = coverage("RV0123456789", "110101199003077777")
    no_card["contained"][0]["identifier"] = no_card["contained"][0]["identifier"][1:]
    with pytest.raises(FhirError, match="exactly one"):
        parse_registration(no_card)
    bad_card = coverage("RV01", "110101199003077777")
    with pytest.raises(FhirError, match="malformed insurance card"):
        parse_registration(bad_card)
    elsewhere = coverage("RV0123456789", "110101199003077777")
    elsewhere["beneficiary"] = {"reference": "Patient/123"}
    with pytest.raises(FhirError, match="contained Patient") as raised:
        parse_registration(elsewhere)
    assert raised.value.status == 422
    backwards = coverage("RV0123456789", "110101199003077777", start="2027-01-01", end="2026-01-01")
    with pytest.raises(FhirError, match="ends before"):
        parse_registration(backwards)


def test_the_answer_names_the_exchange_patient_and_no_longer_contains_it() -> None:
    parsed = parse_registration(coverage("RV0123456789", "110101199003077777"))
    row = _row()
    out, patient = coverage_out({**parsed.resource, "id": str(row.id)}, row)
    assert "contained" not in out
    assert out["beneficiary"] == {"reference": f"Patient/{row.patient_id}"}
    assert out["payor"] == [{"display": "Riverton Province Medical Insurance Bureau"}]
    assert patient["id"] == str(row.patient_id)
    assert patient["name"][0]["family"] == "Chen"
