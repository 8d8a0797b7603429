"""Readings to FHIR R4 Observations: LOINC codes, UCUM units, conversions, and refusals that name the problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from medcloud.models import DeviceClass
from medcloud_gateway.normalize import (
    CATEGORY_SYSTEM,
    DEVICE_ID_SYSTEM,
    LOINC,
    UCUM,
    check_accepted,
    from_observation,
    observation_id,
    to_observation,
)
from medcloud_gateway.readings import Kind, Reading, ReadingError, parse_reading

WHEN = "2024-05-01T08:30:00+08:00"


def reading(kind: str, unit: str, **values: float) -> Reading:
    return parse_reading(
        {"deviceId": "dev-1", "patient": "Patient/p-1001", "kind": kind, "unit": unit, "time": WHEN, **values}
    )


def codes(observation: dict[str, Any]) -> list[str]:
    return [c["code"] for c in observation["code"]["coding"]]


def category(observation: dict[str, Any]) -> str:
    coding = observation["category"][0]["coding"][0]
    assert coding["system"] == CATEGORY_SYSTEM
    return str(coding["code"])


@pytest.mark.parametrize(
    ("kind", "unit", "value", "loinc", "ucum"),
    [
        ("heart-rate", "bpm", 72, ["8867-4"], "/min"),
        ("heart-rate", "/min", 72, ["8867-4"], "/min"),
        ("ecg-heart-rate", "beats/min", 64, ["8867-4", "76282-3"], "/min"),
        ("spo2", "%", 97, ["2708-6", "59408-5"], "%"),
        ("respiratory-rate", "breaths/min", 16, ["9279-1"], "/min"),
        ("glucose", "mg/dl", 105, ["2339-0"], "mg/dL"),
        ("glucose", "mmol/L", 5.8, ["15074-8"], "mmol/L"),
        ("body-temperature", "°C", 36.8, ["8310-5"], "Cel"),
        ("body-temperature", "℃", 36.8, ["8310-5"], "Cel"),
        ("body-temperature", "°F", 98.2, ["8310-5"], "[degF]"),
        ("body-weight", "kg", 70.5, ["29463-7"], "kg"),
        ("body-weight", "lbs", 155.4, ["29463-7"], "[lb_av]"),
    ],
)
def test_each_kind_gets_its_loinc_code_and_ucum_unit(
    kind: str, unit: str, value: float, loinc: list[str], ucum: str
) -> None:
    observation = to_observation(reading(kind, unit, value=value))
    assert codes(observation) == loinc
    assert all(c["system"] == LOINC for c in observation["code"]["coding"])
    assert observation["valueQuantity"] == {"value": value, "unit": ucum, "system": UCUM, "code": ucum}
    Observation.model_validate(observation)  # a valid FHIR Observation as it is stored


def test_observation_carries_subject_device_time_and_vital_signs_profile() -> None:
    observation = to_observation(reading("heart-rate", "bpm", value=72))
    assert observation["resourceType"] == "Observation"
    assert observation["status"] == "final"
    assert category(observation) == "vital-signs"
    assert observation["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/heartrate"]
    assert observation["subject"] == {"reference": "Patient/p-1001"}
    assert observation["device"] == {"identifier": {"system": DEVICE_ID_SYSTEM, "value": "dev-1"}}
    assert observation["effectiveDateTime"] == WHEN


def test_glucose_is_a_laboratory_result_without_a_vital_signs_profile() -> None:
    observation = to_observation(reading("glucose", "mg/dL", value=105))
    assert category(observation) == "laboratory"
    assert "meta" not in observation


def test_blood_pressure_is_a_panel_with_systolic_and_diastolic_components() -> None:
    observation = to_observation(reading("blood-pressure", "mmHg", systolic=120, diastolic=80))
    assert codes(observation) == ["85354-9"]
    assert "valueQuantity" not in observation
    parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in observation["component"]}
    assert parts == {
        "8480-6": {"value": 120, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
        "8462-4": {"value": 80, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
    }
    assert observation["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]


def test_blood_pressure_in_kpa_is_converted_to_mm_hg() -> None:
    observation = to_observation(reading("blood-pressure", "kPa", systolic=16, diastolic=10.5))
    values = [c["valueQuantity"] for c in observation["component"]]
    assert [v["value"] for v in values] == [120.0, 78.8]
    assert {v["code"] for v in values} == {"mm[Hg]"}


def test_unknown_unit_is_refused_naming_the_unit_and_what_is_accepted() -> None:
    with pytest.raises(
        ReadingError, match=r"unit 'furlongs' is not known for heart-rate \(UCUM units accepted: /min\)"
    ):
        to_observation(reading("heart-rate", "furlongs", value=72))


def test_unit_of_another_kind_is_refused() -> None:
    with pytest.raises(ReadingError, match="unit 'mmHg' is not known for glucose"):
        to_observation(reading("glucose", "mmHg", value=100))


def test_unknown_kind_is_refused_naming_the_kinds() -> None:
    with pytest.raises(ReadingError, match=r"kind: Input should be 'blood-pressure', 'heart-rate'"):
        reading("steps", "{steps}", value=1000)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"kind": "blood-pressure", "value": 120}, "systolic and diastolic, and no value"),
        ({"kind": "heart-rate", "systolic": 120, "diastolic": 80}, "a heart-rate reading has a value"),
        ({"kind": "heart-rate", "value": "fast"}, "value: Input should be a valid number"),
        ({"kind": "heart-rate", "value": float("nan")}, "value: Input should be a finite number"),
        ({"kind": "heart-rate", "value": 72, "time": "2024-05-01T08:30:00"}, "time: Input should have timezone info"),
        ({"kind": "heart-rate", "value": 72, "patient": "Jane Doe"}, "patient: String should match pattern"),
        ({"kind": "heart-rate", "value": 72, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_malformed_readings_are_refused_with_the_field_named(fields: dict[str, Any], problem: str) -> None:
    base = {"deviceId": "dev-1", "patient": "Patient/p-1", "unit": "bpm", "time": WHEN}
    with pytest.raises(ReadingError, match=problem):
        parse_reading({**base, **fields})


def test_payload_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(ReadingError, match="not JSON"):
        parse_reading(b"{nope")
    with pytest.raises(ReadingError, match="a reading is a JSON object, got list"):
        parse_reading(b"[1, 2]")


def test_a_device_reports_only_for_itself() -> None:
    payload = {"deviceId": "dev-2", "patient": "Patient/p-1", "kind": "spo2", "value": 97, "unit": "%", "time": WHEN}
    with pytest.raises(ReadingError, match="deviceId 'dev-2' does not match the sending device 'dev-1'"):
        parse_reading(payload, device_id="dev-1")
    without = {k: v for k, v in payload.items() if k != "deviceId"}
    assert parse_reading(without, device_id="dev-1").device_id == "dev-1"


def test_observation_id_is_stable_per_device_kind_and_instant() -> None:
    one = reading("heart-rate", "bpm", value=72)
    same_instant = one.model_copy(update={"time": one.time.astimezone(UTC), "value": 73})
    later = one.model_copy(update={"time": one.time + timedelta(seconds=1)})
    assert observation_id(one) == observation_id(same_instant)
    assert observation_id(one) != observation_id(later)
    assert "dev-1" not in observation_id(one)


def test_device_classes_gate_the_kinds_a_gateway_accepts() -> None:
    check_accepted(Kind.HEART_RATE, frozenset({DeviceClass.WEARABLE}))
    with pytest.raises(
        ReadingError, match="glucose readings come from glucose devices; this gateway accepts ecg, spo2"
    ):
        check_accepted(Kind.GLUCOSE, frozenset({DeviceClass.SPO2, DeviceClass.ECG}))


@pytest.mark.parametrize(
    "source",
    [
        reading("blood-pressure", "mm[Hg]", systolic=121, diastolic=79),
        reading("ecg-heart-rate", "/min", value=64),
        reading("glucose", "mmol/L", value=5.8),
        reading("body-temperature", "Cel", value=36.8),
    ],
)
def test_an_observation_reads_back_as_the_same_reading(source: Reading) -> None:
    assert from_observation(to_observation(source)) == source


def _fhir(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "subject": {"reference": "Patient/p-9"},
        "effectiveDateTime": "2024-05-01T00:00:00Z",
        "device": {"reference": "Device/hub-3"},
        "valueQuantity": {"value": 88, "system": UCUM, "code": "/min", "unit": "beats/minute"},
    }
    document.update(overrides)
    return document


def test_a_device_coded_observation_becomes_a_reading() -> None:
    got = from_observation(_fhir())
    assert (got.device_id, got.patient, got.kind, got.value, got.unit) == (
        "hub-3",
        "Patient/p-9",
        Kind.HEART_RATE,
        88,
        "/min",
    )
    assert got.time == datetime(2024, 5, 1, tzinfo=timezone.utc)  # noqa: UP017 - the same instant, spelled plainly


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"code": {"coding": [{"system": LOINC, "code": "8478-0"}]}}, "LOINC code 8478-0 is not a LOINC code"),
        (
            {
                "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
                "valueQuantity": {"value": 5.8, "system": UCUM, "code": "mmol/L"},
            },
            "LOINC code 2339-0 does not fit the unit",
        ),
        ({"device": None}, "Observation.device is required"),
        ({"effectiveDateTime": None}, "effectiveDateTime is required"),
        ({"valueQuantity": None}, "has no valueQuantity"),
        ({"subject": "Patient/p-9"}, "not a valid FHIR Observation"),
        ({"resourceType": "Patient"}, "expected an Observation"),
    ],
)
def test_observations_that_cannot_be_readings_are_refused(overrides: dict[str, Any], problem: str) -> None:
    document = {k: v for k, v in _fhir(**overrides).items() if v is not None}
    with pytest.raises(ReadingError, match=problem):
        from_observation(document)
