"""ITI-65 Provide Document Bundle and the Patient resource without servers: what is accepted, what is refused."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.patient import Patient

from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.provide import parse_provide_bundle, submission_set_out, transaction_response
from medcloud_exchange.resources import patient_out
from tests.exchange_support import DATA, INSURANCE_CARD, RESIDENT_ID, provide_bundle

Json = dict[str, Any]
RESIDENT = (RESIDENT_ID, "110101199003077777")
INSURANCE = (INSURANCE_CARD, "RV1")


def _entry(bundle: Json, kind: str) -> Json:
    return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


def test_a_provide_bundle_yields_its_document_with_the_binary_content_and_the_bundles_patient() -> None:
    bundle = provide_bundle("emr", b"Discharge summary", RESIDENT, INSURANCE)
    provision = parse_provide_bundle(bundle, 1024)
    ((url, publication),) = provision.documents
    assert url == "urn:uuid:1e404af3-077f-4bee-b7a6-a9be97e1ce01"
    assert publication.content == b"Discharge summary"
    assert publication.content_type == "text/plain"
    assert publication.identifiers == (RESIDENT, INSURANCE)
    assert publication.patient_resource is not None
    assert publication.patient_resource["name"][0]["family"] == "Chalmers"
    assert provision.binaries == {"urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e03": url}
    assert [kind for kind, _ in provision.entries] == ["DocumentReference", "List", "Binary", "Patient"]


def test_the_transaction_response_answers_every_entry_in_order_and_validates() -> None:
    provision = parse_provide_bundle(provide_bundle("emr", b"x", RESIDENT), 1024)
    document, set_id, patient = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    out = transaction_response(provision, {provision.documents[0][0]: document}, set_id, patient, True)
    Bundle.model_validate(out)
    assert out["type"] == "transaction-response"
    assert [e["response"]["location"] for e in out["entry"]] == [
        f"DocumentReference/{document}/_history/1",
        f"List/{set_id}",
        f"Binary/{document}",
        f"Patient/{patient}",
    ]
    assert [e["fullUrl"] for e in out["entry"]] == [url for _, url in provision.entries]
    stored = submission_set_out(provision.submission_set, set_id, patient, [document])
    FhirList.model_validate(stored)
    assert stored["entry"] == [{"item": {"reference": f"DocumentReference/{document}"}}]


def test_a_document_may_carry_its_content_inline_without_a_binary() -> None:
    bundle = provide_bundle("emr", b"x", RESIDENT)
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Binary"]
    _entry(bundle, "DocumentReference")["resource"]["content"][0]["attachment"] = {
        "contentType": "text/plain",
        "data": "aW5saW5l",
    }
    ((_, publication),) = parse_provide_bundle(bundle, 1024).documents
    assert publication.content == b"inline"


def _refused(bundle: Json, status: int = 422) -> str:
    with pytest.raises(FhirError) as refused:
        parse_provide_bundle(bundle, 1024)
    assert refused.value.status == status
    return refused.value.diagnostics


def test_the_ihe_minimal_example_is_refused_by_name_since_its_document_lies_elsewhere() -> None:
    """IHE's own minimal Bundle points at http://example.com/nowhere.txt: the exchange keeps documents itself."""
    bundle = json.loads((DATA / "provide-bundle-minimal.json").read_text())
    assert "names no Binary of the Bundle" in _refused(copy.deepcopy(bundle))


def _changed(change: str) -> Json:
    bundle = provide_bundle("emr", b"x", RESIDENT)
    doc = _entry(bundle, "DocumentReference")
    sset = _entry(bundle, "List")
    binary = _entry(bundle, "Binary")
    patient = _entry(bundle, "Patient")
    if change == "batch":
        bundle["type"] = "batch"
    elif change == "no-submission-set":
        bundle["entry"].remove(sset)
    elif change == "folder":
        folder = copy.deepcopy(sset)
        folder["fullUrl"] = "urn:uuid:" + str(uuid.uuid4())
        folder["resource"]["code"]["coding"][0]["code"] = "folder"
        bundle["entry"].append(folder)
    elif change == "set-lists-nothing":
        sset["resource"]["entry"] = []
    elif change == "set-lists-a-stranger":
        sset["resource"]["entry"] = [{"item": {"reference": "urn:uuid:" + str(uuid.uuid4())}}]
    elif change == "stray-binary":
        extra = copy.deepcopy(binary)
        extra["fullUrl"] = "urn:uuid:" + str(uuid.uuid4())
        bundle["entry"].append(extra)
    elif change == "binary-missing":
        bundle["entry"].remove(binary)
    elif change == "content-type-differs":
        doc["resource"]["content"][0]["attachment"]["contentType"] = "application/pdf"
    elif change == "patient-without-identifiers":
        patient["resource"].pop("identifier")
    elif change == "two-patients":
        other = copy.deepcopy(patient)
        other["fullUrl"] = "urn:uuid:" + str(uuid.uuid4())
        bundle["entry"].append(other)
    elif change == "observation":
        bundle["entry"].append(
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    elif change == "delete":
        doc["request"]["method"] = "DELETE"
    elif change == "duplicate-fullurl":
        binary["fullUrl"] = doc["fullUrl"]
    elif change == "no-category":
        doc["resource"].pop("category")
    elif change == "second-document-other-patient":
        second = copy.deepcopy(doc)
        second["fullUrl"] = "urn:uuid:" + str(uuid.uuid4())
        second["resource"]["subject"] = {"identifier": {"system": RESIDENT_ID, "value": "other"}}
        second["resource"]["content"][0]["attachment"] = {"contentType": "text/plain", "data": "eA=="}
        bundle["entry"].append(second)
        sset["resource"]["entry"].append({"item": {"reference": second["fullUrl"]}})
    return bundle


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("batch", "type transaction"),
        ("no-submission-set", "exactly one List"),
        ("folder", "Folder"),
        ("set-lists-nothing", "every DocumentReference"),
        ("set-lists-a-stranger", "no DocumentReference of the Bundle"),
        ("stray-binary", "no DocumentReference's content"),
        ("binary-missing", "names no Binary"),
        ("content-type-differs", "its Binary text/plain"),
        ("patient-without-identifiers", "Patient with identifiers"),
        ("two-patients", "at most one Patient"),
        ("observation", "carries only"),
        ("delete", "must be POST"),
        ("duplicate-fullurl", "not unique"),
        ("no-category", "category"),
        ("second-document-other-patient", "same patient"),
    ],
)
def test_a_bundle_the_exchange_would_refuse_half_way_is_refused_whole_before_anything_is_stored(
    change: str, says: str
) -> None:
    assert says in _refused(_changed(change))


def test_not_a_bundle_or_an_invalid_one_is_422() -> None:
    assert "expected a Bundle" in _refused({"resourceType": "Patient"})
    assert "not a valid FHIR R4 Bundle" in _refused({"resourceType": "Bundle", "type": "transaction", "entry": 3})
    assert "no entries" in _refused({"resourceType": "Bundle", "type": "transaction"})


def test_a_too_large_binary_is_refused() -> None:
    assert "at most" in _refused(provide_bundle("emr", b"x" * 2000, RESIDENT))


def test_the_consortium_patient_shows_only_what_visible_members_sent_and_never_their_local_ids() -> None:
    patient = uuid.uuid4()
    bare = patient_out(patient, [], (RESIDENT,))
    Patient.model_validate(bare)
    assert bare == {
        "resourceType": "Patient",
        "id": str(patient),
        "identifier": [{"system": RESIDENT[0], "value": RESIDENT[1]}],
    }
    newest = {
        "resourceType": "Patient",
        "id": "local-1",
        "name": [{"family": "Li"}],
        "identifier": [{"system": RESIDENT[0], "value": RESIDENT[1]}],
        "managingOrganization": {"reference": "Organization/x"},
    }
    older = {
        "resourceType": "Patient",
        "id": "local-2",
        "name": [{"family": "Old"}],
        "identifier": [{"system": INSURANCE[0], "value": INSURANCE[1]}],
    }
    out = patient_out(patient, [newest, older], ())
    Patient.model_validate(out)
    assert out["id"] == str(patient)
    assert out["name"] == [{"family": "Li"}]
    assert "managingOrganization" not in out
    assert [i["value"] for i in out["identifier"]] == [RESIDENT[1], INSURANCE[1]]
