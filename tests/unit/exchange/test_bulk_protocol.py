"""The FHIR Bulk Data kick-off parameters and manifest, and the relinking of a resource's patient, without servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from medcloud_exchange.bulk.protocol import (
    BULK_DATA_SERVER,
    KickOffError,
    choose_purpose,
    manifest,
    parse_format,
    parse_since,
    parse_types,
)
from medcloud_exchange.bulk.service import relink
from medcloud_exchange.bulk.sources import RESOURCE_TYPES
from medcloud_exchange.capability import capability_statement


def test_no_type_means_every_type_and_types_come_in_the_exchanges_order() -> None:
    assert parse_types(None) == RESOURCE_TYPES
    assert parse_types(["Task,Patient", "Coverage"]) == ("Patient", "Coverage", "Task")


def test_an_unknown_type_is_named_in_the_refusal() -> None:
    with pytest.raises(KickOffError, match="does not export: Claim, Medication"):
        parse_types(["Medication,Claim,Patient"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-01T00:00:00Z", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:00:00+08:00", datetime(2026, 11, 1, 8, tzinfo=timezone(timedelta(hours=8)))),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        (None, None),
        ("  ", None),
    ],
)
def test_since(raw: str | None, expected: datetime | None) -> None:
    assert parse_since(raw) == expected


def test_a_bad_since_is_a_clear_refusal() -> None:
    with pytest.raises(KickOffError, match="_since must be a FHIR instant"):
        parse_since("last week")


def test_only_ndjson_is_written() -> None:
    parse_format(None)
    parse_format("application/fhir+ndjson")
    with pytest.raises(KickOffError, match="not supported"):
        parse_format("text/csv")


def test_the_purpose_is_the_policys() -> None:
    assert choose_purpose(None, ["indicators"]) == "indicators"
    assert choose_purpose("research", ["indicators", "research"]) == "research"
    with pytest.raises(KickOffError, match="name the export's purpose"):
        choose_purpose(None, ["indicators", "research"])
    with pytest.raises(KickOffError, match="not one of the policy's purposes"):
        choose_purpose("marketing", ["indicators"])


def test_the_manifest_lists_only_types_with_resources() -> None:
    when = datetime(2026, 12, 2, 3, 4, 5, 678000, tzinfo=UTC)
    out = manifest(when, "https://x/fhir/$export", [("Patient", "https://x/p.ndjson", 3), ("Task", "https://x/t", 0)])
    assert out["transactionTime"] == "2026-12-02T03:04:05.678Z"
    assert out["output"] == [{"type": "Patient", "url": "https://x/p.ndjson", "count": 3}]
    assert out["requiresAccessToken"] is True


def test_relink_points_the_patient_elements_at_the_exchange_patient() -> None:
    patient = uuid.uuid4()
    resource = {
        "resourceType": "DocumentReference",
        "subject": {"identifier": {"system": "urn:oid:2.16.156.10011.1.2", "value": "110101199001011234"}},
    }
    assert relink(resource, patient)["subject"] == {"reference": f"Patient/{patient}"}
    local = {"resourceType": "Coverage", "beneficiary": {"reference": "#p"}}
    assert relink(local, patient) == local


def test_the_capability_statement_announces_the_three_exports() -> None:
    statement = capability_statement("riverton", "2026-12-02")
    CapabilityStatement.model_validate(statement)
    assert BULK_DATA_SERVER in statement["instantiates"]
    definitions = {o["definition"].rsplit("/", 1)[1] for o in statement["rest"][0]["operation"]}
    assert definitions == {"export", "patient-export", "group-export"}
