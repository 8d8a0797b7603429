"""The Consortium's recognition rule and what a published exam result must be, without servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from medcloud.models.consortium import ExamRecognition, RecognitionWindow
from medcloud.models.hospital import Tier
from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.workflows.exam_results import parse_report
from medcloud_exchange.workflows.recognition import (
    Candidate,
    Producer,
    longest_window,
    not_recognised,
    recognised,
    window,
)
from tests.workflows_data import RESIDENT_ID, cbc_report

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
RULE = ExamRecognition(
    producer_tiers=[Tier.CITY, Tier.COUNTY],
    require_accreditation=True,
    windows=[
        RecognitionWindow(test="58410-2", days=7),
        RecognitionWindow(test="24627-2", days=180),
        RecognitionWindow(category="LAB", days=30),
    ],
)
COUNTY = Producer(Tier.COUNTY, accredited=True)


def result(
    days_ago: float, *, test: str = "58410-2", publisher: str = "county", categories: tuple[str, ...] = ("LAB",)
) -> Candidate:
    return Candidate(uuid.uuid4(), publisher, test, categories, NOW - timedelta(days=days_ago))


def test_a_tests_own_window_wins_over_its_category() -> None:
    assert window(RULE, "58410-2", ["LAB"]) == timedelta(days=7)
    assert window(RULE, "2345-7", ["LAB"]) == timedelta(days=30)
    assert window(RULE, "24627-2", ["RAD"]) == timedelta(days=180)
    assert window(RULE, "2345-7", ["RAD"]) is None
    assert longest_window(RULE, "58410-2") == timedelta(days=7)
    assert longest_window(RULE, "2345-7") == timedelta(days=30)
    assert longest_window(ExamRecognition(), "58410-2") is None


def test_a_blood_count_is_recognised_for_seven_days_a_chest_ct_for_180() -> None:
    assert not_recognised(RULE, result(6.9), COUNTY, NOW) is None
    assert "outside its 7-day window" in (not_recognised(RULE, result(7.1), COUNTY, NOW) or "")
    assert not_recognised(RULE, result(170, test="24627-2", categories=("RAD",)), COUNTY, NOW) is None
    assert not_recognised(RULE, result(181, test="24627-2", categories=("RAD",)), COUNTY, NOW) is not None


def test_the_producers_tier_and_accreditation_decide() -> None:
    fresh = result(1)
    assert "township" in (not_recognised(RULE, fresh, Producer(Tier.TOWNSHIP, True), NOW) or "")
    assert "not accredited" in (not_recognised(RULE, fresh, Producer(Tier.COUNTY, False), NOW) or "")
    lenient = RULE.model_copy(update={"require_accreditation": False})
    assert not_recognised(lenient, fresh, Producer(Tier.COUNTY, False), NOW) is None
    assert "no longer a Hospital" in (not_recognised(RULE, fresh, None, NOW) or "")
    assert "no recognition window" in (not_recognised(RULE, result(1, test="2345-7", categories=()), COUNTY, NOW) or "")


def test_recognised_keeps_the_good_ones_newest_first() -> None:
    old, new, stale, elsewhere = result(5), result(1), result(9), result(1, publisher="township")
    producers = {"county": COUNTY, "township": Producer(Tier.TOWNSHIP, True)}
    assert recognised(RULE, [old, stale, new, elsewhere], producers, NOW) == [new, old]


def test_a_published_result_is_final_loinc_ucum_and_performed_by_its_publisher() -> None:
    subject = {"identifier": {"system": RESIDENT_ID, "value": "110101199003077777"}}
    good = cbc_report("county", subject, "2026-12-01T09:00:00+08:00")
    parsed = parse_report(good, "county", ["county", "township"])
    assert parsed.test_code == "58410-2"
    assert parsed.categories == ("LAB",)
    assert parsed.subject.identifier == (RESIDENT_ID, "110101199003077777")

    with pytest.raises(FhirError, match="own results") as raised:
        parse_report(good, "township", ["county", "township"])
    assert raised.value.status == 403
    cases = {
        "final": {**good, "status": "preliminary"},
        "LOINC": {**good, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "26604007"}]}},
        "issued": {k: v for k, v in good.items() if k != "issued"},
        "contained Observation": {**good, "result": [{"reference": "Observation/elsewhere"}]},
    }
    for says, body in cases.items():
        with pytest.raises(FhirError, match=says):
            parse_report(body, "county", ["county"])
    not_ucum = cbc_report("county", subject, "2026-12-01T09:00:00+08:00")
    not_ucum["contained"][0]["valueQuantity"]["system"] = "http://example.org/units"
    with pytest.raises(FhirError, match="UCUM"):
        parse_report(not_ucum, "county", ["county"])
