"""The export's reader of device records, without servers: single and batched records, and each reading scoped
to its member, de-identified, valid FHIR R4 and counted by institution (docs/analytics.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from medcloud.models.deidentification import DeidentificationPolicy
from medcloud.records.batches import NDJSON_CONTENT_TYPE, encode_batch
from medcloud.records.client import RecordInfo
from medcloud_analytics.flatten import row
from medcloud_exchange.bulk.deidentify import Deidentifier
from medcloud_exchange.bulk.devices import changed_between, read, scoped
from medcloud_gateway.normalize import to_observation
from medcloud_gateway.readings import parse_reading
from tests.fhir_r4 import assert_valid_r4

KEY = bytes(range(32))


def _pressure(patient: str = "Patient/p-1001", systolic: float = 150) -> dict[str, Any]:
    reading = {
        "deviceId": "bp-77",
        "patient": patient,
        "kind": "blood-pressure",
        "systolic": systolic,
        "diastolic": 95,
        "unit": "mmHg",
        "time": "2026-11-17T08:30:00+08:00",
    }
    return to_observation(parse_reading(reading))


def _glucose() -> dict[str, Any]:
    reading = {
        "deviceId": "gl-3",
        "patient": "Patient/p-1002",
        "kind": "glucose",
        "value": 6.1,
        "unit": "mmol/L",
        "time": "2026-11-18T07:00:00+08:00",
    }
    return to_observation(parse_reading(reading))


def test_the_window_is_the_records_last_change() -> None:
    def info(when: datetime | None) -> RecordInfo:
        return RecordInfo("fhir/Observation/a.json", 1, 1, 1, "application/fhir+json", last_modified=when)

    until = datetime(2026, 12, 2, tzinfo=UTC)
    since = datetime(2026, 12, 1, tzinfo=UTC)
    assert changed_between(info(datetime(2026, 11, 30, tzinfo=UTC)), until, None)
    assert not changed_between(info(datetime(2026, 11, 30, tzinfo=UTC)), until, since)
    assert changed_between(info(datetime(2026, 12, 1, 12, tzinfo=UTC)), until, since)
    assert not changed_between(info(datetime(2026, 12, 3, tzinfo=UTC)), until, since)
    assert not changed_between(info(None), until, None)


def test_a_reading_leaves_scoped_to_its_member_de_identified_and_valid() -> None:
    exported = scoped(_pressure(), "township-maple")
    assert exported.patient == "township-maple.p-1001"
    assert exported.resource["performer"] == [{"reference": "Organization/township-maple"}]
    policy = DeidentificationPolicy.model_validate({"purposes": [{"name": "indicators"}]})
    clean = Deidentifier.for_purpose(policy, KEY, "indicators", date(2026, 12, 2)).resource(
        exported.resource, patient=exported.patient
    )
    assert_valid_r4(clean)
    text = json.dumps(clean)
    for secret in ("p-1001", "bp-77", "2026-11-17", "08:30"):
        assert secret not in text, secret
    flat = row(clean)
    assert (flat["from_org"], flat["month"], flat["systolic"], flat["diastolic"]) == (
        "township-maple",
        "2026-11",
        150,
        95,
    )
    # The same local id at two hospitals is two patients; the same one at one hospital is one.
    other = scoped(_pressure(), "county-people")
    again = scoped(_pressure(systolic=120), "township-maple")
    deid = Deidentifier.for_purpose(policy, KEY, "indicators", date(2026, 12, 2))
    patients = {row(deid.resource(o.resource, patient=o.patient))["patient"] for o in (exported, other, again)}
    assert len(patients) == 2


def test_a_reading_without_a_patient_has_no_subject() -> None:
    observation = _pressure()
    observation.pop("subject")
    exported = scoped(observation, "township-maple")
    assert exported.patient == ""
    assert "subject" not in exported.resource


class _Store:
    """Records in memory, as a store lists and returns them (the reader's protocol, no server): a single
    Observation is ``<id>.json``, a batch ``<batch>.ndjson`` (medcloud.records.batches)."""

    def __init__(self, records: dict[str, tuple[datetime, list[dict[str, Any]]]]) -> None:
        self.records = records

    def list(self, prefix: str = "") -> Iterator[RecordInfo]:
        for name, (when, _) in self.records.items():
            kind = NDJSON_CONTENT_TYPE if name.endswith(".ndjson") else "application/fhir+json"
            yield RecordInfo(name, 1, 1, 1, kind, last_modified=when)

    def get_bytes(self, name: str, *, version_id: str | None = None) -> bytes:
        resources = self.records[name][1]
        if name.endswith(".ndjson"):
            return encode_batch(resources)
        (one,) = resources
        return json.dumps(one).encode()


def test_single_and_batched_records_each_reading_once_and_since_takes_the_later_records() -> None:
    one, two = _pressure(), _glucose()
    three = {**_pressure("Patient/p-1003"), "id": "another-reading"}
    early, late = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC)
    store = _Store(
        {
            f"fhir/Observation/{one['id']}.json": (early, [one]),
            "fhir/Observation/a.ndjson": (early, [two]),
            "fhir/Observation/b.ndjson": (late, [two, three]),
        }
    )
    until = datetime(2026, 12, 1, tzinfo=UTC)
    got = list(read([("township-maple", store)], until))
    assert sorted(o.resource["id"] for o in got) == sorted([one["id"], two["id"], three["id"]])
    assert {o.holder for o in got} == {"township-maple"}
    later = list(read([("township-maple", store)], until, since=datetime(2026, 11, 22, tzinfo=UTC)))
    assert [o.resource["id"] for o in later] == [two["id"], three["id"]]
    assert list(read([("township-maple", store)], datetime(2026, 11, 19, tzinfo=UTC))) == []
