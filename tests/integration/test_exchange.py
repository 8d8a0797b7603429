"""The consortium exchange against the real API server, MinIO, PostgreSQL, operator and key service.

Three member hospitals of one Consortium, provisioned by the operator (Hospital, RecordStore ``emr``
with its keys): the county shares its EMR documents with the city under consent, and its exam
results with the village only. The key service runs as its own identity, the exchange as its own
(a client certificate for its service account user; a real token for the key service), the hospital
systems with real service account tokens for the audience ``medcloud-exchange``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from kubernetes import client
from minio import Minio
from minio.error import S3Error
from pydantic import SecretStr

from medcloud.records.keyclient import HttpKeyProvider, KeyAccessDeniedError
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster, MinioInfo
from medcloud_cli.localcluster.exchange import AuditBucket, make_audit_bucket
from medcloud_cli.localcluster.postgres import PostgresInfo, bin_dir
from medcloud_cli.localcluster.process import free_port, port_accepts
from medcloud_exchange.app import create_app
from medcloud_exchange.s3 import minio_client
from medcloud_exchange.settings import ExchangeSettings
from tests.exchange_harness import (
    admitted_callers,
    consortium_members,
    granted_exchange,
    new_database,
    raw_objects,
    serve,
    token,
)
from tests.exchange_harness import exchange_settings as harness_settings
from tests.exchange_harness import key_service as running_key_service
from tests.exchange_support import (
    INSURANCE_CARD,
    RESIDENT_ID,
    Caller,
    consent,
    contained_patient,
    document,
    outcome_of,
    provide_bundle,
)
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    ClusterAdmin,
    RunningOperator,
    hospital_spec,
    raw,
)
from tests.support import fuzz, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.minio]

SUFFIX = uuid.uuid4().hex[:6]
COUNTY, CITY, VILLAGE = f"county-{SUFFIX}", f"city-{SUFFIX}", f"village-{SUFFIX}"
CONSORTIUM = f"riverton-{SUFFIX}"
STORE = "emr"
EXCHANGE_ACCOUNT = f"medcloud-exchange-{CONSORTIUM}"
EXCHANGE_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{EXCHANGE_ACCOUNT}"
SA_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}")
KEYSERVICE_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:medcloud-keyservice"
KEYS_AUDIENCE = "medcloud-keyservice"
EXCHANGE_AUDIENCE = "medcloud-exchange"
SPEC: dict[str, Any] = {
    "displayName": "Riverton Medical Alliance",
    "leadHospital": CITY,
    "members": [CITY, COUNTY, VILLAGE],
    "consentRequired": True,
    "sharing": [
        {"category": "emr", "from": [COUNTY], "to": [CITY]},
        {"category": "exam-results", "from": [COUNTY], "to": [VILLAGE]},
    ],
}
Json = dict[str, Any]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def admin(k8s_api_client: client.ApiClient) -> ClusterAdmin:
    return ClusterAdmin(k8s_api_client)


@pytest.fixture(scope="module")
def members(admin: ClusterAdmin, operator: RunningOperator) -> Iterator[list[str]]:
    """County, city and village, Ready with a Ready RecordStore ``emr`` each, and their Consortium."""
    hospitals = {name: hospital_spec(name) for name in (COUNTY, CITY, VILLAGE)}
    store = {"recordClass": "documents", "retention": {"mode": "GOVERNANCE", "period": "1d"}}
    with consortium_members(admin, hospitals, CONSORTIUM, SPEC, STORE, store, timeout=120) as names:
        yield names


@pytest.fixture(scope="module")
def key_service(local_cluster: Any, operator: RunningOperator) -> Iterator[str]:
    """The key service in a thread, as its own identity with deploy/keyservice-rbac.yaml."""
    with running_key_service(local_cluster) as url:
        yield url


@pytest.fixture(scope="module")
def audit_bucket(minio_server: MinioInfo) -> AuditBucket:
    # Under COMPLIANCE retention nobody can remove it before its day is over: it stays, like real audit.
    return make_audit_bucket(minio_server, f"exchange-audit-{CONSORTIUM}")


@pytest.fixture(scope="module")
def database(postgres_server: PostgresInfo) -> str:
    return new_database(postgres_server, f"exchange_{SUFFIX}")


@dataclass
class Exchange:
    url: str
    settings: ExchangeSettings
    http: httpx.Client


@pytest.fixture(scope="module")
def exchange_settings(
    local_cluster: Any,
    admin: ClusterAdmin,
    members: list[str],
    key_service: str,
    audit_bucket: AuditBucket,
    database: str,
    minio_server: MinioInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> ExchangeSettings:
    granted = granted_exchange(local_cluster, admin, CONSORTIUM)
    assert granted == {"serviceAccount": f"{OPERATOR_NAMESPACE}/{EXCHANGE_ACCOUNT}", "publishers": [COUNTY]}
    return harness_settings(
        local_cluster,
        admin,
        CONSORTIUM,
        database=database,
        audit=audit_bucket,
        minio_server=minio_server,
        key_service_url=key_service,
        folder=tmp_path_factory.mktemp("exchange"),
        database_timeout_seconds=2,
        retry_after_seconds=7,
    )


@pytest.fixture(scope="module")
def exchange(exchange_settings: ExchangeSettings) -> Iterator[Exchange]:
    with serve(create_app(exchange_settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield Exchange(url, exchange_settings, http)


@pytest.fixture(scope="module")
def callers(admin: ClusterAdmin, exchange: Exchange, members: list[str]) -> dict[str, Caller]:
    """Each member's connector (ClusterRole medcloud-exchange-client bound in its namespace), and a stranger."""
    out = admitted_callers(admin, exchange.http, members, "emr-connector")
    out["stranger"] = Caller(token(admin, f"hospital-{COUNTY}", "billing", EXCHANGE_AUDIENCE))
    return out


# --------------------------------------------------------------------------- helpers


def identifiers() -> tuple[tuple[str, str], tuple[str, str]]:
    """A fresh patient: a resident identity card number and a province insurance card number."""
    digits = str(uuid.uuid4().int)[:10]
    return (RESIDENT_ID, f"11010119{digits}"), (INSURANCE_CARD, f"RV{digits}")


def search(exchange: Exchange, caller: Caller, identifier: tuple[str, str], **params: str) -> httpx.Response:
    query = {"patient.identifier": f"{identifier[0]}|{identifier[1]}", **params}
    return exchange.http.get("/fhir/DocumentReference", params=query, headers=caller.headers())


def valid_bundle(response: httpx.Response) -> Json:
    assert response.status_code == 200, response.text
    body: Json = response.json()
    Bundle.model_validate(body)
    for entry in body.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "AuditEvent":
            AuditEvent.model_validate(resource)
        elif resource["resourceType"] == "Patient":
            Patient.model_validate(resource)
        else:
            DocumentReference.model_validate(resource)
    return body


def disclosure(exchange: Exchange, caller: Caller, patient: str) -> list[Json]:
    response = exchange.http.get("/fhir/AuditEvent", params={"patient": patient}, headers=caller.headers())
    return [e["resource"] for e in valid_bundle(response).get("entry", [])]


def decisions(events: list[Json]) -> list[Json]:
    return [e for e in events if e["type"]["code"] == "110113"]


def publish(exchange: Exchange, caller: Caller, doc: Json) -> Json:
    response = exchange.http.post(
        "/fhir/DocumentReference",
        content=json.dumps(doc),
        headers={**caller.headers(), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 201, response.text
    created: Json = response.json()
    DocumentReference.model_validate(created)
    return created


def provide(http: httpx.Client, caller: Caller, bundle: Json) -> httpx.Response:
    """ITI-65: the transaction Bundle POSTed to the FHIR base."""
    return http.post(
        "/fhir", content=json.dumps(bundle), headers={**caller.headers(), "Content-Type": "application/fhir+json"}
    )


def current_exchange_records(minio_server: MinioInfo) -> set[str]:
    """Every record the exchange's publishes keep visible (current versions under exchange/), in every bucket."""
    root = Minio(
        minio_server.endpoint, access_key=minio_server.access_key, secret_key=minio_server.secret_key, secure=False
    )
    return {
        f"{bucket.name}/{o.object_name}"
        for bucket in root.list_buckets()
        for o in root.list_objects(bucket.name, prefix="exchange/", recursive=True)
    }


def post_consent(exchange: Exchange, caller: Caller, body: Json) -> httpx.Response:
    return exchange.http.post(
        "/fhir/Consent", content=json.dumps(body), headers={**caller.headers(), "Content-Type": "application/fhir+json"}
    )


def break_glass_events(admin: ClusterAdmin) -> list[Any]:
    events = admin.core.list_namespaced_event("default").items
    return [e for e in events if e.involved_object.name == CONSORTIUM and e.reason == "BreakGlass"]


def own_audit_client(settings: ExchangeSettings) -> Minio:
    """MinIO as the exchange's own audit user (put, get and list only), the way the exchange reaches it."""
    return minio_client(
        settings.audit_endpoint,
        settings.audit_access_key,
        settings.audit_secret_key.get_secret_value(),
        settings.audit_secure,
    )


# --------------------------------------------------------------------------- the scenario


def test_metadata_is_a_capability_statement(exchange: Exchange) -> None:
    response = exchange.http.get("/fhir/metadata")
    assert response.status_code == 200
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1"
    types = {r.type for r in statement.rest[0].resource}
    assert {"DocumentReference", "Binary", "Consent", "AuditEvent"} <= types
    assert exchange.http.get("/readyz").status_code == 200, "its database and audit bucket answer"


def test_county_publishes_city_reads_only_under_consent_revocation_and_break_glass(
    exchange: Exchange, callers: dict[str, Caller], admin: ClusterAdmin
) -> None:
    resident, insurance = identifiers()
    summary = b"Discharge summary: community-acquired pneumonia, amoxicillin 7 days. MARKER-" + SUFFIX.encode()
    county, city = callers[COUNTY], callers[CITY]
    created = publish(exchange, county, document("emr", summary, contained_patient(resident, insurance)))
    patient = created["subject"]["reference"]
    assert patient.startswith("Patient/")
    assert created["custodian"] == {"reference": f"Organization/{COUNTY}"}

    # The publisher finds its own record (no consent needed for its own).
    own = valid_bundle(search(exchange, county, insurance))
    assert own["total"] == 1

    # The city, without consent: 403, and the disclosure shows a deny decision.
    refused = search(exchange, city, resident)
    assert refused.status_code == 403
    assert "consent" in outcome_of(refused)
    binary = exchange.http.get(f"/fhir/Binary/{created['id']}", headers=city.headers())
    assert binary.status_code == 403
    events = disclosure(exchange, county, patient)
    denies = [e for e in decisions(events) if e["outcome"] == "4"]
    assert denies, events
    assert any(a.get("who", {}).get("reference") == f"Organization/{CITY}" for a in denies[0]["agent"])
    assert all(e["resourceType"] == "AuditEvent" for e in events)

    # The patient consents at the county hospital: the city may read, for treatment.
    recorded = post_consent(
        exchange,
        county,
        consent({"identifier": {"system": resident[0], "value": resident[1]}}, actors=(CITY,), purposes=("TREAT",)),
    )
    assert recorded.status_code == 201, recorded.text
    Consent.model_validate(recorded.json())
    consent_id = recorded.json()["id"]
    found = valid_bundle(search(exchange, city, resident))
    assert found["total"] == 1
    entry = found["entry"][0]["resource"]
    assert entry["id"] == created["id"]
    content = exchange.http.get(f"/fhir/Binary/{created['id']}", headers=city.headers())
    assert content.status_code == 200
    assert content.content == summary
    assert content.headers["content-type"].startswith("text/plain")
    # Another purpose is not covered by that consent.
    billing = exchange.http.get(
        f"/fhir/Binary/{created['id']}", headers=city.headers(**{"X-MedCloud-Purpose-Of-Use": "HPAYMT"})
    )
    assert billing.status_code == 403

    # Revocation counts from the very next request.
    revoked = exchange.http.delete(f"/fhir/Consent/{consent_id}", headers=county.headers())
    assert revoked.status_code == 204
    assert exchange.http.get(f"/fhir/Binary/{created['id']}", headers=city.headers()).status_code == 403
    assert search(exchange, city, resident).status_code == 403
    read_back = exchange.http.get(f"/fhir/Consent/{consent_id}", headers=county.headers())
    assert read_back.json()["status"] == "inactive"
    Consent.model_validate(read_back.json())

    # Break the glass: ETREAT without a reason is refused, with one it is let through, alarmed and audited.
    emergency = Caller(city.token, purpose="ETREAT")
    no_reason = exchange.http.get(f"/fhir/Binary/{created['id']}", headers=emergency.headers())
    assert no_reason.status_code == 403
    assert "break-glass-reason" in outcome_of(no_reason).lower()
    before = len(break_glass_events(admin))
    emergency.reason = "unconscious on arrival in the emergency room"
    urgent = exchange.http.get(f"/fhir/Binary/{created['id']}", headers=emergency.headers())
    assert urgent.status_code == 200
    assert urgent.content == summary
    wait_for(lambda: len(break_glass_events(admin)) > before, "the BreakGlass Warning Event")
    assert break_glass_events(admin)[-1].type == "Warning"
    metrics = exchange.http.get("/metrics").text
    assert f'medcloud_exchange_break_glass_total{{hospital="{CITY}"}} 1.0' in metrics

    events = disclosure(exchange, county, patient)
    glass = [
        e
        for e in decisions(events)
        if e["outcome"] == "0" and any(d["type"] == "break-glass-reason" for d in e["entity"][0].get("detail", []))
    ]
    assert glass
    reads = [e for e in events if e["type"]["code"] == "rest" and e["action"] == "R" and e["outcome"] == "0"]
    assert reads
    users = [a for e in reads for a in e["agent"] if a.get("requestor")]
    assert {"Practitioner/dr-li"} == {u["who"]["display"] for u in users}
    assert {"TREAT", "ETREAT"} <= {u["purposeOfUse"][0]["coding"][0]["code"] for u in users}


def test_county_provides_a_document_bundle_city_finds_it_and_sees_the_patient_under_consent(
    exchange: Exchange, callers: dict[str, Caller]
) -> None:
    """ITI-65 end to end: the transaction-response names where everything now lives; the Patient resource
    (ITI-78 by identifier) shows another member's demographics only as far as the decision lets it."""
    resident, insurance = identifiers()
    county, city = callers[COUNTY], callers[CITY]
    family = f"Family{SUFFIX}"
    response = provide(
        exchange.http, county, provide_bundle("emr", b"Bundle summary", resident, insurance, family=family)
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    Bundle.model_validate(answer)
    assert answer["type"] == "transaction-response"
    by_kind = {e["response"]["location"].split("/")[0]: e["response"] for e in answer["entry"]}
    assert set(by_kind) == {"DocumentReference", "List", "Binary", "Patient"}
    assert all(r["status"] in ("201 Created", "200 OK") for r in by_kind.values())
    assert by_kind["Patient"]["status"] == "201 Created", "a new patient of the consortium"
    document_id = by_kind["DocumentReference"]["location"].split("/")[1]
    patient = by_kind["Patient"]["location"]
    assert by_kind["Binary"]["location"] == f"Binary/{document_id}"

    # The publisher reads its document, its content and its patient with the demographics it sent.
    doc = exchange.http.get(f"/fhir/DocumentReference/{document_id}", headers=county.headers())
    assert doc.status_code == 200, doc.text
    DocumentReference.model_validate(doc.json())
    assert doc.json()["subject"] == {"reference": patient}
    assert exchange.http.get(f"/fhir/Binary/{document_id}", headers=county.headers()).content == b"Bundle summary"
    own = exchange.http.get(f"/fhir/{patient}", headers=county.headers())
    assert own.status_code == 200, own.text
    Patient.model_validate(own.json())
    assert own.json()["id"] == patient.split("/")[1]
    assert own.json()["name"][0]["family"] == family
    assert {(i["system"], i["value"]) for i in own.json()["identifier"]} == {resident, insurance}
    submission_set = exchange.http.get(f"/fhir/{by_kind['List']['location']}", headers=county.headers())
    assert submission_set.status_code == 200, submission_set.text
    FhirList.model_validate(submission_set.json())
    assert submission_set.json()["entry"] == [{"item": {"reference": f"DocumentReference/{document_id}"}}]
    assert submission_set.json()["subject"] == {"reference": patient}
    refused_set = exchange.http.get(f"/fhir/{by_kind['List']['location']}", headers=city.headers())
    assert refused_set.status_code == 403, "the city has no consent yet"

    # The city without consent resolves the identifier it knows to the patient, and sees nothing else.
    token = f"{insurance[0]}|{insurance[1]}"
    bare = valid_bundle(exchange.http.get("/fhir/Patient", params={"identifier": token}, headers=city.headers()))
    assert bare["total"] == 1
    assert bare["entry"][0]["resource"] == {
        "resourceType": "Patient",
        "id": patient.split("/")[1],
        "identifier": [{"system": insurance[0], "value": insurance[1]}],
    }
    # With the patient's consent it sees the county's demographics, and finds and retrieves the document.
    recorded = post_consent(
        exchange, county, consent({"identifier": {"system": resident[0], "value": resident[1]}}, actors=(CITY,))
    )
    assert recorded.status_code == 201, recorded.text
    seen = valid_bundle(exchange.http.get("/fhir/Patient", params={"identifier": token}, headers=city.headers()))
    assert seen["entry"][0]["resource"]["name"][0]["family"] == family
    assert valid_bundle(search(exchange, city, resident))["total"] == 1
    assert exchange.http.get(f"/fhir/Binary/{document_id}", headers=city.headers()).content == b"Bundle summary"
    shared_set = exchange.http.get(f"/fhir/{by_kind['List']['location']}", headers=city.headers())
    assert shared_set.status_code == 200, shared_set.text
    assert len(shared_set.json()["entry"]) == 1

    # A second Bundle about the same patient links to it (200 OK), and the disclosure lists the ITI-65 writes
    # and the ITI-78 queries.
    again = provide(exchange.http, county, provide_bundle("emr", b"Follow-up", resident, family=family))
    assert again.status_code == 200, again.text
    patient_entry = next(e for e in again.json()["entry"] if e["response"]["location"].startswith("Patient/"))
    assert patient_entry["response"] == {"status": "200 OK", "location": patient}
    events = disclosure(exchange, county, patient)
    transactions = {c["code"] for e in events for c in e.get("subtype", []) if c["code"].startswith("ITI-")}
    assert {"ITI-65", "ITI-66", "ITI-78", "ITI-67", "ITI-68"} <= transactions
    assert valid_bundle(search(exchange, county, resident))["total"] == 2

    # Unknown patients and unsupported parameters are clean refusals.
    unknown = exchange.http.get(f"/fhir/Patient/{uuid.uuid4()}", headers=city.headers())
    assert unknown.status_code == 404
    outcome_of(unknown)
    nobody = exchange.http.get("/fhir/Patient", params={"identifier": f"{resident[0]}|nobody"}, headers=city.headers())
    assert valid_bundle(nobody)["total"] == 0
    by_id = valid_bundle(
        exchange.http.get("/fhir/Patient", params={"_id": patient.split("/")[1]}, headers=county.headers())
    )
    assert by_id["entry"][0]["resource"]["name"][0]["family"] == family
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        none = exchange.http.get("/fhir/Patient", params={"_id": missing}, headers=city.headers())
        assert valid_bundle(none)["total"] == 0
    both = exchange.http.get(
        "/fhir/Patient", params={"_id": patient.split("/")[1], "identifier": token}, headers=city.headers()
    )
    assert both.status_code == 400
    by_name = exchange.http.get("/fhir/Patient", params={"identifier": token, "family": family}, headers=city.headers())
    assert by_name.status_code == 400
    assert "not indexed" in outcome_of(by_name)


def test_a_document_bundle_is_stored_whole_or_not_at_all(
    exchange: Exchange,
    exchange_settings: ExchangeSettings,
    callers: dict[str, Caller],
    database: str,
    minio_server: MinioInfo,
) -> None:
    """Refused before writing (a document of a category the county does not share), or failing after the
    records are written (the audit store unreachable): no index row, no visible record, no patient."""
    county = callers[COUNTY]
    resident, _ = identifiers()

    def counts() -> tuple[Any, ...]:
        with psycopg.connect(database) as conn:
            return tuple(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - fixed names
                for table in ("document", "submission_set", "patient_record", "patient")
            )

    before, records = counts(), current_exchange_records(minio_server)
    mixed = provide_bundle("emr", b"shared", resident)
    second = json.loads(
        json.dumps(next(e for e in mixed["entry"] if e["resource"]["resourceType"] == "DocumentReference"))
    )
    second["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
    second["resource"]["category"][0]["coding"][0]["code"] = "referrals"
    second["resource"]["content"][0]["attachment"] = {"contentType": "text/plain", "data": "bm90IHNoYXJlZA=="}
    mixed["entry"].append(second)
    submission_set = next(e for e in mixed["entry"] if e["resource"]["resourceType"] == "List")
    submission_set["resource"]["entry"].append({"item": {"reference": second["fullUrl"]}})
    refused = provide(exchange.http, county, mixed)
    assert refused.status_code == 403, refused.text
    assert "referrals" in outcome_of(refused)

    dead = free_port()
    no_audit = exchange_settings.model_copy(update={"audit_endpoint": f"127.0.0.1:{dead}"})
    with serve(create_app(no_audit)) as url, httpx.Client(base_url=url, timeout=60) as http:
        failed = provide(http, county, provide_bundle("emr", b"written then hidden", resident))
    assert failed.status_code == 503, failed.text
    assert failed.headers["retry-after"] == "7"
    assert counts() == before
    assert current_exchange_records(minio_server) == records, "the records written before the failure are hidden"
    assert search(exchange, county, resident).json()["total"] == 0


def test_a_category_outside_sharing_is_never_returned_not_even_counted(
    exchange: Exchange, callers: dict[str, Caller]
) -> None:
    resident, insurance = identifiers()
    county, city, village = callers[COUNTY], callers[CITY], callers[VILLAGE]
    emr = publish(exchange, county, document("emr", b"emr note", contained_patient(resident, insurance)))
    exam = publish(
        exchange,
        county,
        document(
            "exam-results", b"HbA1c 6.1%", {"subject": {"identifier": {"system": insurance[0], "value": insurance[1]}}}
        ),
    )
    assert exam["subject"]["reference"] == emr["subject"]["reference"], "both identifiers name one patient"
    # A consent that names no category covers every category: sharing alone keeps exam results from the city.
    everything = consent({"reference": emr["subject"]["reference"]}, actors=(CITY, VILLAGE))
    assert post_consent(exchange, county, everything).status_code == 201

    found = valid_bundle(search(exchange, city, resident))
    assert found["total"] == 1
    assert [e["resource"]["id"] for e in found["entry"]] == [emr["id"]]
    only_exam = valid_bundle(search(exchange, city, resident, category="exam-results"))
    assert only_exam["total"] == 0
    assert only_exam.get("entry", []) == []
    assert exchange.http.get(f"/fhir/Binary/{exam['id']}", headers=city.headers()).status_code == 404
    assert exchange.http.get(f"/fhir/DocumentReference/{exam['id']}", headers=city.headers()).status_code == 404
    # The village sees the exam results and not the EMR note.
    seen = valid_bundle(search(exchange, village, insurance))
    assert [e["resource"]["id"] for e in seen["entry"]] == [exam["id"]]
    # The city shares nothing, so it publishes nothing through the exchange.
    refused = exchange.http.post(
        "/fhir/DocumentReference",
        content=json.dumps(document("emr", b"x", contained_patient(resident))),
        headers={**city.headers(), "Content-Type": "application/fhir+json"},
    )
    assert refused.status_code == 403


def test_refusals_are_operation_outcomes_and_store_nothing(
    exchange: Exchange, callers: dict[str, Caller], database: str
) -> None:
    county = callers[COUNTY]
    resident, insurance = identifiers()
    good = document("emr", b"fine", contained_patient(resident))
    url = "/fhir/DocumentReference"
    fhir = {"Content-Type": "application/fhir+json"}
    with psycopg.connect(database) as conn:
        before = conn.execute("SELECT count(*) FROM document").fetchone()

    cases = {
        "no token": (exchange.http.get(url, params={"patient": f"Patient/{uuid.uuid4()}"}), 401),
        "a token the cluster rejects": (
            exchange.http.get(url, headers={**county.headers(), "Authorization": "Bearer not-a-token"}),
            401,
        ),
        "no purpose of use": (
            exchange.http.post(
                url, content=json.dumps(good), headers={**county.headers(**{"X-MedCloud-Purpose-Of-Use": None}), **fhir}
            ),
            403,
        ),
        "no practitioner": (
            exchange.http.post(
                url, content=json.dumps(good), headers={**county.headers(**{"X-MedCloud-Practitioner": None}), **fhir}
            ),
            403,
        ),
        "unknown purpose": (
            exchange.http.get(url, headers=county.headers(**{"X-MedCloud-Purpose-Of-Use": "SHOPPING"})),
            400,
        ),
        "no role binding": (
            exchange.http.post(url, content=json.dumps(good), headers={**callers["stranger"].headers(), **fhir}),
            403,
        ),
        "acting for another member": (
            exchange.http.get(
                url,
                params={"patient": f"Patient/{uuid.uuid4()}"},
                headers=county.headers(**{"X-MedCloud-Hospital": CITY}),
            ),
            403,
        ),
        "malformed JSON": (exchange.http.post(url, content=b"{not json", headers={**county.headers(), **fhir}), 400),
        "not a DocumentReference": (
            exchange.http.post(
                url, content=json.dumps({"resourceType": "Patient"}), headers={**county.headers(), **fhir}
            ),
            422,
        ),
        "no category": (
            exchange.http.post(url, content=json.dumps({**good, "category": []}), headers={**county.headers(), **fhir}),
            422,
        ),
        "wrong status": (
            exchange.http.post(
                url, content=json.dumps({**good, "status": "final"}), headers={**county.headers(), **fhir}
            ),
            422,
        ),
        "no patient named": (exchange.http.get(url, headers=county.headers()), 400),
        "unknown document": (exchange.http.get(f"/fhir/Binary/{uuid.uuid4()}", headers=county.headers()), 404),
        "not an id": (exchange.http.get("/fhir/Consent/not-an-id", headers=county.headers()), 404),
    }
    for what, (response, status) in cases.items():
        assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
        OperationOutcome.model_validate(response.json())
        assert outcome_of(response), what
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM document").fetchone() == before
    # An authenticated caller refused before naming a patient is audited too (BALP, outcome 4).
    settings = exchange.settings
    own = own_audit_client(settings)
    refusals = []
    for obj in own.list_objects(settings.audit_bucket, prefix="system/", recursive=True):
        stored = own.get_object(settings.audit_bucket, obj.object_name)
        try:
            refusals.append(json.loads(stored.read()))
        finally:
            stored.close()
            stored.release_conn()
    stranger = [e for e in refusals if "billing" in e["agent"][0]["who"]["identifier"]["value"]]
    assert stranger, refusals
    assert stranger[0]["outcome"] == "4"
    AuditEvent.model_validate(stranger[0])
    assert any("purpose of use" in e["outcomeDesc"] for e in refusals)

    # Two identifiers already linked to different patients: 409, and nothing stored.
    other = identifiers()[0]
    publish(exchange, county, document("emr", b"a", contained_patient(other)))
    publish(exchange, county, document("emr", b"b", contained_patient(insurance)))
    clash = exchange.http.post(
        url,
        content=json.dumps(document("emr", b"c", contained_patient(other, insurance))),
        headers={**county.headers(), **fhir},
    )
    assert clash.status_code == 409, clash.text
    # A stale If-Match: 412.
    created = post_consent(
        exchange, county, consent({"identifier": {"system": other[0], "value": other[1]}}, actors=(CITY,))
    )
    consent_id = created.json()["id"]
    update = {**created.json(), "status": "inactive"}
    stale = exchange.http.put(
        f"/fhir/Consent/{consent_id}",
        content=json.dumps(update),
        headers={**county.headers(), **fhir, "If-Match": 'W/"7"'},
    )
    assert stale.status_code == 412, stale.text
    fresh = exchange.http.put(
        f"/fhir/Consent/{consent_id}",
        content=json.dumps(update),
        headers={**county.headers(), **fhir, "If-Match": 'W/"1"'},
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["meta"]["versionId"] == "2"


# --------------------------------------------------------------------------- at rest


def test_no_identifier_or_document_text_at_rest(
    exchange: Exchange, callers: dict[str, Caller], postgres_server: PostgresInfo, minio_server: MinioInfo, servers: Any
) -> None:
    resident, insurance = identifiers()
    text = f"Secret diagnosis {uuid.uuid4().hex}".encode()
    created = publish(exchange, callers[COUNTY], document("emr", text, contained_patient(resident, insurance)))
    family = f"Surname{uuid.uuid4().hex[:12]}"
    provided = provide(exchange.http, callers[COUNTY], provide_bundle("emr", text, resident, insurance, family=family))
    assert provided.status_code == 200, provided.text
    post_consent(
        exchange,
        callers[COUNTY],
        consent({"identifier": {"system": resident[0], "value": resident[1]}}, actors=(CITY,)),
    )
    assert valid_bundle(search(exchange, callers[CITY], insurance))["total"] == 2
    assert exchange.http.get(f"/fhir/Binary/{created['id']}", headers=callers[CITY].headers()).content == text
    shown = exchange.http.get(
        "/fhir/Patient", params={"identifier": f"{resident[0]}|{resident[1]}"}, headers=callers[CITY].headers()
    )
    assert valid_bundle(shown)["entry"][0]["resource"]["name"][0]["family"] == family

    markers = [resident[1].encode(), insurance[1].encode(), text, base64.b64encode(text), family.encode()]
    dump = subprocess.run(
        [str(bin_dir() / "pg_dump"), "--data-only", exchange.settings.database_url.get_secret_value()],
        capture_output=True,
        check=True,
    ).stdout
    assert b"COPY public.document" in dump, "the dump holds the index"
    assert created["id"].encode() in dump
    for marker in markers:
        assert marker not in dump
    seen = 0
    for body in raw_objects(minio_server):
        seen += 1
        for marker in markers:
            assert marker not in body
    assert seen > 0
    # And on MinIO's disks (small objects are kept inline in xl.meta).
    for path in Path(servers.state_dir, "minio-data").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for marker in markers:
                assert marker not in data, path


def test_an_audit_record_cannot_be_overwritten_or_deleted_with_the_exchanges_credentials(
    exchange: Exchange, callers: dict[str, Caller], minio_server: MinioInfo
) -> None:
    resident, _ = identifiers()
    publish(exchange, callers[COUNTY], document("emr", b"audited", contained_patient(resident)))
    settings = exchange.settings
    own = own_audit_client(settings)
    name = next(o.object_name for o in own.list_objects(settings.audit_bucket, prefix="patient/", recursive=True))
    original = own.get_object(settings.audit_bucket, name)
    try:
        first = original.read()
        version = original.headers["x-amz-version-id"]
    finally:
        original.close()
        original.release_conn()
    for attempt in (
        lambda: own.remove_object(settings.audit_bucket, name, version_id=version),
        lambda: own.remove_object(settings.audit_bucket, name),
    ):
        with pytest.raises(S3Error) as refused:
            attempt()
        assert refused.value.code == "AccessDenied"
    # A put under the same name is a new version; the audited one is still there, byte for byte.
    own.put_object(settings.audit_bucket, name, io.BytesIO(b"{}"), 2)
    kept = own.get_object(settings.audit_bucket, name, version_id=version)
    try:
        assert kept.read() == first
    finally:
        kept.close()
        kept.release_conn()
    # Not even MinIO's root may remove the version before its retention ends (COMPLIANCE).
    root = Minio(
        minio_server.endpoint, access_key=minio_server.access_key, secret_key=minio_server.secret_key, secure=False
    )
    with pytest.raises(S3Error):
        root.remove_object(settings.audit_bucket, name, version_id=version)


# --------------------------------------------------------------------------- faults


def test_database_or_storage_down_answers_503_and_keeps_nothing(
    exchange: Exchange, exchange_settings: ExchangeSettings, callers: dict[str, Caller], database: str
) -> None:
    county = callers[COUNTY]
    resident, _ = identifiers()
    body = json.dumps(document("emr", b"never half-written", contained_patient(resident)))
    headers = {**county.headers(), "Content-Type": "application/fhir+json"}
    dead = free_port()
    with psycopg.connect(database) as conn:
        before = conn.execute("SELECT count(*) FROM document").fetchone()
    no_database = exchange_settings.model_copy(
        update={"database_url": SecretStr(f"postgresql://x:y@127.0.0.1:{dead}/none")}
    )
    no_audit = exchange_settings.model_copy(update={"audit_endpoint": f"127.0.0.1:{dead}"})
    for settings in (no_database, no_audit):
        with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
            for response in (
                http.post("/fhir/DocumentReference", content=body, headers=headers),
                http.get(
                    "/fhir/DocumentReference",
                    params={"patient.identifier": f"{resident[0]}|{resident[1]}"},
                    headers=county.headers(),
                ),
            ):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "7"
                outcome_of(response)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM document").fetchone() == before
    # The patient was not even created: the publish rolled back whole.
    assert search(exchange, county, resident).json()["total"] == 0


# --------------------------------------------------------------------------- schemathesis


def test_schemathesis_finds_no_server_error(exchange: Exchange, callers: dict[str, Caller]) -> None:
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{exchange.url}/openapi.json")
    headers = callers[COUNTY].headers()
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            def send(case: Any, label: str = operation.label) -> None:
                calls[label] = calls.get(label, 0) + 1
                # A real member asks, with fuzzed input; the case's own headers win.
                case.headers = {**headers, **(case.headers or {})}
                case.call_and_validate(base_url=exchange.url, checks=[not_a_server_error], timeout=60)

            try:
                fuzz(operation.as_strategy(generation_mode=mode), send, 10)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    assert not failures, "\n\n".join(failures)
    assert len(calls) >= 8, sorted(calls)


def test_the_database_going_away_and_back_is_503_then_served_again_on_its_own(
    exchange_settings: ExchangeSettings, callers: dict[str, Caller], tmp_path: Path
) -> None:
    """A private PostgreSQL under a running exchange: stopped, the exchange answers 503; started again, it serves."""
    private = LocalCluster(tmp_path / "pg", ClusterOptions(with_kubernetes=False, with_minio=False, with_broker=False))
    state = private.start()
    try:
        assert state.postgres is not None
        settings = exchange_settings.model_copy(update={"database_url": SecretStr(state.postgres.dsn)})
        county = callers[COUNTY]
        resident, _ = identifiers()
        headers = {**county.headers(), "Content-Type": "application/fhir+json"}
        with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
            first = http.post(
                "/fhir/DocumentReference",
                content=json.dumps(document("emr", b"1", contained_patient(resident))),
                headers=headers,
            )
            assert first.status_code == 201, first.text
            (server,) = [p for p in private.processes if p.name == "postgres"]
            server.stop()
            down = http.post(
                "/fhir/DocumentReference",
                content=json.dumps(document("emr", b"2", contained_patient(resident))),
                headers=headers,
            )
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "7"
            server.start()
            port = state.postgres.port

            def published() -> bool:
                again = http.post(
                    "/fhir/DocumentReference",
                    content=json.dumps(document("emr", b"3", contained_patient(resident))),
                    headers=headers,
                )
                return again.status_code == 201

            wait_for(lambda: port_accepts(port), "PostgreSQL back", timeout=60)
            wait_for(published, "the exchange to serve again", timeout=60)
            found = http.get(
                "/fhir/DocumentReference",
                params={"patient.identifier": f"{resident[0]}|{resident[1]}"},
                headers=county.headers(),
            )
            # The publish refused while the database was down left nothing behind.
            assert found.json()["total"] == 2
    finally:
        private.stop()


def test_the_emr_sharing_connector_publishes_the_hospitals_documents_and_serves_them_to_clinicians(
    exchange: Exchange,
    callers: dict[str, Caller],
    admin: ClusterAdmin,
    key_service: str,
    minio_server: MinioInfo,
    tmp_path: Path,
) -> None:
    """County's EMR writes a document to its RecordStore; the connector (a local process) publishes it once;
    the city finds it under consent, directly and through its own connector's FHIR facade."""
    from medcloud.records.client import RecordClient
    from medcloud_exchange.apps.emr_sharing import STATE_RECORD, EmrSharingSettings, create_facade

    namespace = f"hospital-{COUNTY}"
    # The connector's identity: the exchange client role (callers) and its store's keys.
    admin.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "emr-sharing-keys"},
            "rules": [
                {
                    "apiGroups": ["medcloud.io"],
                    "resources": ["recordstores/keys"],
                    "resourceNames": [STORE],
                    "verbs": ["get"],
                }
            ],
        },
    )
    admin.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "emr-sharing-keys"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "emr-sharing-keys"},
            "subjects": [{"kind": "ServiceAccount", "name": "emr-connector", "namespace": namespace}],
        },
    )
    exchange_token, keys_token = tmp_path / "exchange-token", tmp_path / "keys-token"
    exchange_token.write_text(callers[COUNTY].token)
    keys_token.write_text(token(admin, namespace, "emr-connector", KEYS_AUDIENCE))
    secret = admin.core.read_namespaced_secret(f"{STORE}-credentials", namespace)
    credentials = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    records = RecordClient(
        Minio(
            minio_server.endpoint, credentials["AWS_ACCESS_KEY_ID"], credentials["AWS_SECRET_ACCESS_KEY"], secure=False
        ),
        credentials["BUCKET_NAME"],
        HttpKeyProvider(key_service, namespace, STORE, token_file=keys_token),
    )

    def keys_granted() -> bool:
        try:
            records.put_json("emr-sharing/probe.json", {})
        except Exception:  # RBAC reaches the authorizer a moment after it is written
            return False
        return True

    wait_for(keys_granted, "the connector's keys granted", timeout=30)
    resident, insurance = identifiers()
    text = b"Discharge summary written by the county EMR. CONNECTOR-" + SUFFIX.encode()
    records.put_fhir(
        document("emr", text, contained_patient(resident, insurance)), f"fhir/DocumentReference/{SUFFIX}.json"
    )

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **credentials,
        "MEDCLOUD_S3_SECURE": "false",
        "MEDCLOUD_KEY_SERVICE_URL": key_service,
        "MEDCLOUD_EXCHANGE_URL": exchange.url,
        "MEDCLOUD_EXCHANGE_TOKEN_FILE": str(exchange_token),
        "MEDCLOUD_KEY_SERVICE_TOKEN_FILE": str(keys_token),
        "MEDCLOUD_NAMESPACE": namespace,
    }
    command = [sys.executable, "-c", "from medcloud_cli.main import app; app()", "app", "emr-sharing", "--once"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "published 1," in first.stderr, first.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert "published 0," in again.stderr, again.stderr
    assert "already published 1" in again.stderr, again.stderr

    # What it remembers holds neither the document text nor the identifiers, decrypted or at rest.
    state = json.dumps(records.get_json(STATE_RECORD))
    root = Minio(minio_server.endpoint, minio_server.access_key, minio_server.secret_key, secure=False)
    at_rest = root.get_object(credentials["BUCKET_NAME"], STATE_RECORD).read()
    for secret_text in (resident[1], insurance[1], "CONNECTOR-", SUFFIX):
        assert secret_text not in state
        assert secret_text.encode() not in at_rest

    city = callers[CITY]
    assert search(exchange, city, resident).status_code == 403, "no consent yet"
    recorded = post_consent(
        exchange,
        callers[COUNTY],
        consent({"identifier": {"system": resident[0], "value": resident[1]}}, actors=(CITY,), purposes=("TREAT",)),
    )
    assert recorded.status_code == 201, recorded.text

    # The city's clinicians, through the city's connector facade (its own token, their practitioner and purpose).
    city_token = tmp_path / "city-token"
    city_token.write_text(city.token)
    facade_settings = EmrSharingSettings(
        exchange_url=exchange.url,
        exchange_token_file=city_token,
        keyservice_token_file=city_token,
        namespace=f"hospital-{CITY}",
        bucket="unused",
        s3_host="127.0.0.1",
        s3_port=1,
        access_key="unused",
        secret_key=SecretStr("unused"),
        key_service_url=key_service,
    )
    with serve(create_facade(facade_settings)) as facade, httpx.Client(base_url=facade, timeout=60) as http:
        clinician = {"X-MedCloud-Practitioner": "Practitioner/dr-wang", "X-MedCloud-Purpose-Of-Use": "TREAT"}
        query = {"patient.identifier": f"{resident[0]}|{resident[1]}", "category": "emr"}
        found = http.get("/fhir/DocumentReference", params=query, headers=clinician)
        assert found.status_code == 200, found.text
        bundle = Bundle.model_validate(found.json())
        assert bundle.total == 1
        doc_id = found.json()["entry"][0]["resource"]["id"]
        content = http.get(f"/fhir/Binary/{doc_id}", headers=clinician)
        assert content.status_code == 200
        assert content.content == text
        unnamed = http.get("/fhir/DocumentReference", params=query)
        assert unnamed.status_code == 400
        OperationOutcome.model_validate(unnamed.json())
    events = disclosure(exchange, callers[COUNTY], found.json()["entry"][0]["resource"]["subject"]["reference"])
    assert any("dr-wang" in json.dumps(e) for e in events), "the clinician who read it is in the disclosure"


def test_the_operator_grants_the_exchange_exactly_as_far_as_sharing_reaches(
    admin: ClusterAdmin, exchange: Exchange
) -> None:
    """Last in the module: it changes the Consortium. The county stops sharing; the village starts."""

    def role(hospital: str) -> Json | None:
        return raw(admin.rbac.read_namespaced_role, "medcloud-exchange", f"hospital-{hospital}")

    assert role(COUNTY) is not None
    assert role(CITY) is None
    assert role(VILLAGE) is None
    # The county's data key as the exchange holds it: fetched with its identity, kept for data_key_ttl_seconds
    # (a clock the test moves, so the bound is checked without waiting it out).
    now = [0.0]
    ttl = exchange.settings.data_key_ttl_seconds

    def keys_as_the_exchange() -> HttpKeyProvider:
        return HttpKeyProvider(
            exchange.settings.key_service_url,
            f"hospital-{COUNTY}",
            STORE,
            token_file=exchange.settings.key_service_token_file,
            key_ttl=ttl,
            clock=lambda: now[0],
        )

    held = keys_as_the_exchange()
    version = held.current_version()
    key = held.data_key(version)
    spec = {**SPEC, "sharing": [{"category": "emr", "from": [VILLAGE], "to": [CITY]}]}
    admin.custom.patch_cluster_custom_object(
        "medcloud.io", "v1alpha1", "consortia", CONSORTIUM, {"spec": spec}, _content_type="application/merge-patch+json"
    )
    wait_for(lambda: role(COUNTY) is None and role(VILLAGE) is not None, "the grant to follow spec.sharing")
    status = (admin.get("Consortium", CONSORTIUM) or {})["status"]["exchange"]
    assert status["publishers"] == [VILLAGE]
    rules = (role(VILLAGE) or {})["rules"]
    assert {(r["resources"][0], r["resourceNames"][0]) for r in rules} == {
        ("recordstores/keys", "emr"),
        ("secrets", "emr-credentials"),
    }

    # The grant is revoked: a fresh fetch is refused at once; the key already held is used at most until its
    # TTL runs out, then asked for again, and refused.
    def refused() -> bool:
        try:
            keys_as_the_exchange().data_key(version)
        except KeyAccessDeniedError:
            return True
        return False

    wait_for(refused, "the key service to refuse the county's keys to the exchange")
    now[0] += ttl / 2
    assert held.data_key(version) == key, "within the stated bound the cached key still serves"
    now[0] += ttl / 2
    with pytest.raises(KeyAccessDeniedError):
        held.data_key(version)
    assert ExchangeSettings.model_fields["data_key_ttl_seconds"].default == 300.0, "the bound docs/exchange.md states"
