"""Deciding a batch before anything is stored: each bad reading named by its index; the validated-shape
shortcut gives exactly what fhir.resources gives, and still refuses what it would refuse (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.observation import Observation

from medcloud_gateway import normalize
from medcloud_gateway.hl7v2 import Hl7Error
from medcloud_gateway.ingest import MAX_BATCH, Ingestor
from medcloud_gateway.mdc import Vocabulary
from medcloud_gateway.metrics import GatewayMetrics
from medcloud_gateway.normalize import TARGETS, to_observation, validated
from medcloud_gateway.pcd01 import parse_pcd01
from medcloud_gateway.readings import Kind, ReadingError, parse_reading

HL7 = Path(__file__).parents[2] / "data" / "devices" / "hl7v2"


def deciding() -> Ingestor:
    # Deciding never writes: no record client is needed, so none is given.
    return Ingestor(cast(Any, None), GatewayMetrics())


def reading(n: int, **changes: Any) -> dict[str, Any]:
    body = {"deviceId": "hr-1", "patient": "Patient/p-1", "kind": "heart-rate", "value": 60 + n, "unit": "/min"}
    return {**body, "time": f"2024-05-01T08:{n:02d}:00Z", **changes}


def full(document: dict[str, Any]) -> dict[str, Any]:
    return Observation.model_validate(document).model_dump(mode="json", exclude_none=True)


def test_a_batch_with_bad_readings_names_each_by_index() -> None:
    batch: list[Any] = [reading(n) for n in range(8)]
    batch[2] = reading(2, unit="furlongs")
    batch[5] = "not a reading"
    observations, errors = deciding().decide_payload(batch)
    assert [i for i, _ in errors] == [2, 5]
    assert "unit 'furlongs'" in errors[0][1]
    assert len(observations) == 6


def test_a_bundle_is_a_batch_of_its_entries_and_empty_or_huge_batches_are_refused() -> None:
    observation = to_observation(parse_reading(reading(1)))
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation}] * 3}
    observations, errors = deciding().decide_payload(bundle)
    assert errors == []
    assert len(observations) == 3
    assert deciding().decide_payload([])[1][0][1].startswith("an empty batch")
    (error,) = deciding().decide_payload([reading(1)] * (MAX_BATCH + 1))[1]
    assert f"at most {MAX_BATCH}" in error[1]


def test_a_reading_sent_for_another_device_in_a_batch_is_refused() -> None:
    _, errors = deciding().decide_payload([reading(1), reading(2, deviceId="other")], device_id="hr-1")
    assert [i for i, _ in errors] == [1]


@pytest.mark.parametrize(("kind", "ucum"), [(k, u) for k, units in TARGETS.items() for u in units])
def test_the_shape_shortcut_gives_what_full_validation_gives(kind: Kind, ucum: str) -> None:
    offsets = [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]
    for n, tz in enumerate(offsets * 2):
        when = datetime(2024, 5, 1, 8, n, 7, n * 1000 if n % 2 else 0, tzinfo=tz)
        values = {"systolic": 110.0 + n, "diastolic": 70.5} if kind is Kind.BLOOD_PRESSURE else {"value": 37.25 + n}
        body = {"deviceId": f"d-{n}", "patient": f"Patient/p-{n}", "kind": kind, "unit": ucum, **values}
        document = to_observation(parse_reading({**body, "time": when.isoformat()}))
        assert document == full(document)


def test_device_messages_validated_by_shape_are_what_full_validation_gives() -> None:
    for path in sorted(HL7.glob("*.hl7")):
        for _ in range(2):  # the second time their shapes are known
            try:
                result = parse_pcd01(path.read_text(), Vocabulary(), local=ZoneInfo("UTC"))
            except Hl7Error:
                continue  # refused whole (its type, no PID-3): no Observation to validate
            for item in result.observations:
                assert item.document == full(item.document)


def test_a_known_shape_with_a_bad_value_is_still_refused() -> None:
    good = to_observation(parse_reading(reading(1)))
    validated(good)
    assert normalize.shape_of(good) in normalize._TRUSTED_SHAPES
    for bad in (
        {**good, "effectiveDateTime": "2024-13-01T08:00:00Z"},
        {**good, "id": "not an id!"},
        {**good, "subject": {"reference": ""}},
        {**good, "valueQuantity": {**good["valueQuantity"], "value": float("nan")}},
    ):
        assert normalize.shape_of(bad) is None
        with pytest.raises(ReadingError, match="not a valid FHIR Observation"):
            validated(bad)


def test_shapes_tell_booleans_integers_and_lists_of_pairs_apart() -> None:
    good = to_observation(parse_reading(reading(1)))
    assert normalize.shape_of({**good, "x": True}) != normalize.shape_of({**good, "x": 1})
    assert normalize.shape_of({**good, "x": 1}) != normalize.shape_of({**good, "x": 1.0})
    assert normalize.shape_of({**good, "x": {"a": "b"}}) != normalize.shape_of({**good, "x": [["a", "b"]]})
    assert normalize.shape_of({**good, "x": ["a"]}) != normalize.shape_of({**good, "x": "a"})
    assert normalize.shape_of({**good, "id": "other-id"}) == normalize.shape_of(good)
