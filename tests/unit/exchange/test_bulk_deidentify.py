"""The Safe Harbor de-identifier on public FHIR examples (tests/data/analytics/SOURCES.md), without servers."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from medcloud.models.deidentification import DateHandling, DeidentificationPolicy
from medcloud_exchange.bulk.deidentify import (
    AGE_BAND_URL,
    DATA_ABSENT_URL,
    Deidentifier,
    age_band,
    pseudonym,
    purpose_key,
    reduce_date,
    shift_days,
)
from tests.fhir_r4 import assert_valid_r4

DATA = Path(__file__).parents[2] / "data"
KEY = bytes(range(32))
PURPOSE = "commission-indicators"
TODAY = date(2026, 12, 2)


def _example(name: str) -> dict[str, Any]:
    folder = "analytics" if name in {"patient-example.json", "observation-bloodpressure.json"} else "workflows"
    loaded: dict[str, Any] = json.loads((DATA / folder / name).read_text(encoding="utf-8"))
    return loaded


def _policy(**changes: Any) -> DeidentificationPolicy:
    return DeidentificationPolicy.model_validate({"purposes": [{"name": PURPOSE}, {"name": "research"}], **changes})


def _deid(purpose: str = PURPOSE, **changes: Any) -> Deidentifier:
    return Deidentifier.for_purpose(_policy(**changes), KEY, purpose, TODAY)


def _coverage_with_card() -> dict[str, Any]:
    coverage = _example("coverage-min.json")
    coverage["contained"] = [
        {
            "resourceType": "Patient",
            "id": "beneficiary",
            "identifier": [
                {"system": "urn:medcloud:insurance-card:zj", "value": "ZJ33010219740101"},
                {"system": "urn:oid:2.16.156.10011.1.2", "value": "330102197401011234"},
            ],
            "name": [{"text": "Wang Xiaoming"}],
            "birthDate": "1974-01-01",
        }
    ]
    coverage["beneficiary"] = {"reference": "#beneficiary"}
    return coverage


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


EXAMPLES = [
    "patient-example.json",
    "observation-bloodpressure.json",
    "coverage-min.json",
    "diagnosticreport-cbc.json",
    "observation-hb.json",
]


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("dates", list(DateHandling))
def test_every_de_identified_example_is_valid_fhir(name: str, dates: DateHandling) -> None:
    source = _example(name)
    out = _deid(dates=dates).resource(source, patient="p-1")
    get_fhir_model_class(out["resourceType"]).model_validate(out)  # raises on anything invalid
    assert_valid_r4(out)


def test_the_patient_example_keeps_no_direct_identifier() -> None:
    source = _example("patient-example.json")
    text = json.dumps(_deid().resource(source, patient="p-1"), ensure_ascii=False)
    for value in (
        "Chalmers",
        "Peter",
        "Jim",
        "Windsor",
        "12345",
        "5555 6473",
        "3410 5613",
        "Erewhon",
        "PleasantVille",
        "Rainbow",
        "3999",
        "1974-12-25",
        "14:35:45",
        "du Marché",
        "Bénédicte",
        "998327",
        "Acme",
        '"example"',
    ):
        assert value not in text, value


def test_the_birth_date_becomes_an_age_band() -> None:
    out = _deid().resource(_example("patient-example.json"))
    assert "birthDate" not in out
    (band,) = [e for e in out["extension"] if e["url"] == AGE_BAND_URL]
    assert band["valueRange"]["low"]["value"] == 50  # born 1974-12-25, 51 on 2026-12-02
    assert band["valueRange"]["high"]["value"] == 59
    assert out["gender"] == "male"


@pytest.mark.parametrize(
    ("birth", "width", "band"),
    [
        (date(1974, 12, 25), 10, (50, 59)),
        (date(1974, 12, 1), 10, (50, 59)),  # 52 on TODAY
        (date(1975, 12, 3), 5, (50, 54)),  # 51 tomorrow, 50 today
        (date(2026, 1, 1), 10, (0, 9)),
        (date(1936, 12, 2), 10, (90, None)),  # 90 today: the top band
        (date(1936, 12, 3), 10, (80, 89)),  # 89 until tomorrow
        (date(1941, 1, 1), 30, (60, 89)),  # the last band stops below 90
    ],
)
def test_age_bands(birth: date, width: int, band: tuple[int, int | None]) -> None:
    assert age_band(birth, TODAY, width) == band


def test_the_insurance_card_and_the_contained_patient_leave_nothing() -> None:
    out = _deid().resource(_coverage_with_card(), patient="p-1")
    text = json.dumps(out)
    for value in ("ZJ33010219740101", "330102197401011234", "Wang", "97531", "1974-01-01", "example.org"):
        assert value not in text, value
    assert out["beneficiary"] == {"reference": "#beneficiary"}  # the contained link survives
    (contained,) = out["contained"]
    assert contained["id"] == "beneficiary"
    assert [e["url"] for e in contained["extension"]] == [AGE_BAND_URL]


def test_free_text_is_dropped_and_a_required_element_is_masked() -> None:
    bp = _deid().resource(_example("observation-bloodpressure.json"))
    assert "note" not in bp
    assert "a minimal blood pressure" not in json.dumps(bp)
    hb = _deid().resource(_example("observation-hb.json"))
    assert hb["code"] == {"extension": [{"url": DATA_ABSENT_URL, "valueCode": "masked"}]}


def test_references_are_pseudonymised_consistently_and_organizations_kept() -> None:
    deid = _deid()
    bp = deid.resource(_example("observation-bloodpressure.json"))
    assert bp["subject"]["reference"] == f"Patient/{deid.patient_pseudonym('ex-patient')}"
    assert bp["id"] == pseudonym(deid.key, "Observation", "ex-IHE-bloodPressure-0")
    assert "ex-author" not in json.dumps(bp)
    assert "ex-encounter" not in json.dumps(bp)
    report = deid.resource(_example("diagnosticreport-cbc.json"))
    assert report["performer"] == [{"reference": "Organization/example-lab-organization--cgrh"}]
    # Coding.display is the code system's wording, kept; Reference.display could be a name, dropped.
    assert bp["component"][0]["code"]["coding"][0]["display"] == "Systolic blood pressure"


def test_two_purposes_cannot_join_their_extracts() -> None:
    source = _example("observation-bloodpressure.json")
    a = _deid(PURPOSE).resource(source)
    b = _deid("research").resource(source)
    assert a["subject"] != b["subject"]
    assert a["id"] != b["id"]
    assert purpose_key(KEY, PURPOSE) != purpose_key(KEY, "research")
    assert _deid(PURPOSE).resource(source) == a  # and each purpose is stable across exports


def test_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="no purpose 'marketing'"):
        Deidentifier.for_purpose(_policy(), KEY, "marketing", TODAY)


@pytest.mark.parametrize(
    ("value", "month"),
    [
        ("2004-12-25T23:50:50-05:00", "2004-12-01T00:00:00Z"),
        ("2026-11-17", "2026-11"),
        ("2026-11", "2026-11"),
        ("2026", None),  # a year is Safe Harbor's allowed precision, left as it is
        ("8480-6", None),  # a LOINC code is not a date
        ("2026-13-01", None),
    ],
)
def test_dates_reduced_to_the_month(value: str, month: str | None) -> None:
    assert reduce_date(value, DateHandling.MONTH, 0) == month


def test_dates_shifted_keep_intervals_and_precision() -> None:
    assert reduce_date("2026-11-17", DateHandling.SHIFT, -20) == "2026-10-28"
    assert reduce_date("2026-11-17T08:00:00Z", DateHandling.SHIFT, 3) == "2026-11-20T08:00:00Z"
    assert reduce_date("2026-11-17T08:00:00+08:00", DateHandling.SHIFT, 1) == "2026-11-18T08:00:00+08:00"
    deid = _deid(dates="shift", dateShiftMaxDays=10)
    offsets = {shift_days(deid.key, f"p-{i}", 10) for i in range(200)}
    assert 0 not in offsets
    assert offsets <= set(range(-10, 11))
    assert len(offsets) > 10  # spread over the range, not one offset for all


def test_the_shift_is_the_patients_across_resources() -> None:
    deid = _deid(dates="shift")
    first = copy.deepcopy(_example("observation-bloodpressure.json"))
    second = copy.deepcopy(first)
    second["effectiveDateTime"] = "2004-12-26T23:50:50-05:00"
    a = deid.resource(first, patient="p-1")["effectiveDateTime"]
    b = deid.resource(second, patient="p-1")["effectiveDateTime"]
    assert (date.fromisoformat(b[:10]) - date.fromisoformat(a[:10])).days == 1


def test_a_retained_state_is_kept_and_nothing_else_of_the_address() -> None:
    out = _deid(retain=["Patient.address.state"]).resource(_example("patient-example.json"))
    assert out["address"] == [{"state": "Vic"}]
    assert "Erewhon" not in json.dumps(out)


def test_no_key_material_in_the_output() -> None:
    deid = _deid()
    text = " ".join(_strings(deid.resource(_coverage_with_card())))
    assert KEY.hex() not in text
    assert deid.key.hex() not in text
