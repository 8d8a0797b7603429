"""FHIR in and out without servers: what a publish and a Consent must carry, the blind index, BALP events."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.documentreference import DocumentReference

from medcloud.models.consortium import ConsortiumSpec
from medcloud_exchange.audit import AuditStore, Interaction, Requester, decision_event, patient_of, rest_event
from medcloud_exchange.blind import blind_index
from medcloud_exchange.capability import capability_statement
from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.resources import (
    consent_out,
    document_out,
    parse_consent,
    parse_patient_token,
    parse_publication,
)
from tests.exchange_support import INSURANCE_CARD, RESIDENT_ID, consent, contained_patient, document

SPEC = ConsortiumSpec.model_validate(
    {"displayName": "R", "leadHospital": "city", "members": ["city", "county"], "sharing": []}
)
KEY = bytes(range(32))


def test_a_publish_names_the_patient_category_type_and_content() -> None:
    body = document("emr", b"note", contained_patient((RESIDENT_ID, "110101"), (INSURANCE_CARD, "RV1")))
    publication = parse_publication(body, 1024)
    assert publication.identifiers == ((RESIDENT_ID, "110101"), (INSURANCE_CARD, "RV1"))
    assert publication.category == "emr"
    assert (publication.type_system, publication.type_code) == ("http://loinc.org", "18842-5")
    assert publication.content == b"note"
    assert "data" not in publication.metadata["content"][0]["attachment"]
    out = document_out(publication.metadata, uuid.uuid4(), uuid.uuid4(), "county", "/fhir")
    DocumentReference.model_validate(out)
    assert out["content"][0]["attachment"]["url"].startswith("/fhir/Binary/")


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"resourceType": "Patient"}, 422),
        ({"status": "final"}, 422),
        ({"category": [{"coding": [{"system": "urn:other", "code": "emr"}]}]}, 422),
        (
            {
                "category": [
                    {"coding": [{"system": "https://medcloud.io/fhir/CodeSystem/sharing-category", "code": "x"}]}
                ]
            },
            422,
        ),
        ({"type": None}, 422),
        ({"date": None}, 422),
        ({"subject": None, "contained": None}, 422),
        ({"content": [{"attachment": {"contentType": "text/plain"}}]}, 422),
        (
            {
                "content": [
                    {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"x" * 2000).decode()}}
                ]
            },
            413,
        ),
        ({"date": "yesterday"}, 422),
    ],
)
def test_a_publish_that_lacks_what_the_exchange_needs_is_refused(change: dict[str, Any], status: int) -> None:
    body = document("emr", b"note", {"subject": {"identifier": {"system": RESIDENT_ID, "value": "1"}}})
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(FhirError) as refused:
        parse_publication(body, 1024)
    assert refused.value.status == status


def test_a_consent_reduces_to_its_terms_and_comes_back_as_fhir() -> None:
    body = consent({"identifier": {"system": RESIDENT_ID, "value": "1"}}, actors=("city",), purposes=("TREAT",))
    parsed = parse_consent(body, SPEC, "c-1")
    assert parsed.identifiers == ((RESIDENT_ID, "1"),)
    assert parsed.terms.actors == {"city"}
    assert parsed.terms.permit
    patient = uuid.uuid4()
    out = consent_out(parsed.terms, patient, 3, "county")
    Consent.model_validate(out)
    assert out["patient"] == {"reference": f"Patient/{patient}"}
    assert RESIDENT_ID not in str(out), "the identifier is not kept"


@pytest.mark.parametrize(
    "change",
    [
        {"scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]}},
        {"status": "approved"},
        {"provision": {"type": "permit", "actor": [{"reference": {"reference": "Organization/stranger"}}]}},
        {"provision": {"type": "permit", "purpose": [{"system": "urn:x", "code": "TREAT"}]}},
        {"provision": {"type": "maybe"}},
        {"patient": {"display": "someone"}},
        {"provision": {"type": "permit", "period": {"start": "2026-02-01", "end": "2026-01-01"}}},
    ],
)
def test_a_consent_outside_the_exchange_vocabulary_is_refused(change: dict[str, Any]) -> None:
    body = consent({"identifier": {"system": RESIDENT_ID, "value": "1"}}, actors=("city",))
    body.update(change)
    with pytest.raises(FhirError) as refused:
        parse_consent(body, SPEC, "c-1")
    assert refused.value.status == 422


def test_the_blind_index_is_keyed_and_exact() -> None:
    one = blind_index(KEY, RESIDENT_ID, "110101")
    assert len(one) == 32
    assert one == blind_index(KEY, f" {RESIDENT_ID} ", "110101 ")
    assert one != blind_index(bytes(32), RESIDENT_ID, "110101")
    assert one != blind_index(KEY, INSURANCE_CARD, "110101")
    assert b"110101" not in one
    with pytest.raises(ValueError, match="system and a value"):
        blind_index(KEY, RESIDENT_ID, " ")
    assert parse_patient_token(f"{RESIDENT_ID}|110101") == (RESIDENT_ID, "110101")
    with pytest.raises(FhirError):
        parse_patient_token("110101")


def test_audit_events_are_balp_shaped_r4_and_carry_no_identifier() -> None:
    requester = Requester(
        "system:serviceaccount:hospital-city:emr", "city", "Practitioner/li", "ETREAT", "10.0.0.1", "coma"
    )
    patient = uuid.uuid4()
    search = rest_event(
        Interaction.SEARCH,
        "ITI-67",
        requester,
        "exchange/r",
        ok=True,
        description="1",
        patient=patient,
        query="category=emr",
    )
    decision = decision_event(
        requester,
        "exchange/r",
        permit=False,
        description="no consent",
        patient=patient,
        consents=["c1"],
        categories=["emr"],
    )
    for event in (search, decision):
        AuditEvent.model_validate(event)
        assert patient_of(event) == str(patient)
        assert AuditStore.object_name(event).startswith(f"patient/{patient}/")
    assert decision["type"]["code"] == "110113"
    assert decision["outcome"] == "4"
    assert {"type": "break-glass-reason", "valueString": "coma"} in decision["entity"][0]["detail"]
    assert search["subtype"][1]["code"] == "ITI-67"
    assert [a["requestor"] for a in search["agent"]] == [False, True, False, False]


def test_the_capability_statement_is_r4() -> None:
    statement = CapabilityStatement.model_validate(capability_statement("riverton", "2026-12-01T00:00:00+00:00"))
    assert statement.fhirVersion == "4.0.1"
