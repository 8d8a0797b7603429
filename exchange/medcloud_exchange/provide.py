"""ITI-65 Provide Document Bundle, checked whole before anything is written.

A transaction ``Bundle`` carries one SubmissionSet ``List``, one or more
``DocumentReference`` s, the ``Binary`` each one's ``content.attachment.url``
points at (or the content inline), and optionally the ``Patient`` they are
about. References between entries resolve as FHIR says for a transaction:
by ``fullUrl`` (``urn:uuid:...`` or absolute), or by ``Type/id`` of an entry.
Everything is checked here, purely, so that a Bundle the exchange would refuse
half-way is refused before the first byte is stored.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.list import List as FhirList

from medcloud_exchange.outcomes import FhirError, unprocessable
from medcloud_exchange.resources import Publication, parse_publication, validated

LIST_TYPES = (
    "http://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
    "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
)
MAX_ENTRIES = 64
KINDS = ("List", "DocumentReference", "Binary", "Patient")

Json = dict[str, Any]


@dataclass(frozen=True)
class Provision:
    """A Provide Document Bundle, checked: what to store, and the request's entries in order for the response."""

    submission_set: Json
    # (fullUrl, publication) of each DocumentReference, in Bundle order.
    documents: tuple[tuple[str, Publication], ...]
    # fullUrl of each Binary -> fullUrl of the DocumentReference whose content it is.
    binaries: Mapping[str, str]
    patient_url: str | None
    # (resourceType, fullUrl) of every entry, in Bundle order: the transaction-response follows it.
    entries: tuple[tuple[str, str], ...]


def _list_code(resource: Mapping[str, Any]) -> str | None:
    codings = (resource.get("code") or {}).get("coding") or []
    return next((c.get("code") for c in codings if c.get("system") in LIST_TYPES), None)


class _Entries:
    """The Bundle's entries, and how a reference among them resolves."""

    def __init__(self, entries: list[tuple[str, Json]]) -> None:
        self.entries = entries
        self._by_key: dict[str, str] = {}
        for url, resource in entries:
            self._by_key[url] = url
            if resource.get("id"):
                self._by_key[f"{resource['resourceType']}/{resource['id']}"] = url
            # An absolute fullUrl ending in Type/id is reachable as Type/id too.
            tail = "/".join(url.rsplit("/", 2)[-2:])
            if tail.startswith(f"{resource['resourceType']}/"):
                self._by_key.setdefault(tail, url)
        self._resources = dict(entries)

    def resolve(self, reference: str | None, kind: str) -> str | None:
        """The fullUrl of the entry of ``kind`` this reference names, if it names one."""
        url = self._by_key.get(reference or "")
        if url is not None and self._resources[url]["resourceType"] == kind:
            return url
        return None

    def resource(self, url: str) -> Json:
        return self._resources[url]


def _entries(body: Mapping[str, Any]) -> list[tuple[str, Json]]:
    bundle = validated(Bundle, body, "Bundle")
    if bundle.type != "transaction":
        raise unprocessable(f"ITI-65 needs a Bundle of type transaction, got {bundle.type!r}")
    raw = list(body.get("entry") or [])
    if not raw:
        raise unprocessable("the Bundle has no entries")
    if len(raw) > MAX_ENTRIES:
        raise unprocessable(f"a Provide Document Bundle may carry at most {MAX_ENTRIES} entries")
    out: list[tuple[str, Json]] = []
    seen: set[str] = set()
    for number, entry in enumerate(raw):
        resource = entry.get("resource")
        url = entry.get("fullUrl")
        method = (entry.get("request") or {}).get("method")
        if not isinstance(resource, dict) or not url:
            raise unprocessable(f"Bundle.entry[{number}] needs fullUrl and resource")
        kind = resource.get("resourceType")
        if kind not in KINDS:
            raise unprocessable(f"Bundle.entry[{number}] is a {kind}; ITI-65 carries only {', '.join(KINDS)}")
        if method != "POST" and not (kind == "Patient" and method == "PUT"):
            raise unprocessable(
                f"Bundle.entry[{number}].request.method must be POST (PUT for a Patient), got {method!r}"
            )
        if url in seen:
            raise unprocessable(f"Bundle.entry[{number}].fullUrl {url} is not unique")
        seen.add(url)
        out.append((url, resource))
    return out


def _binary(resource: Json, url: str, max_bytes: int) -> tuple[str, str]:
    """contentType and base64 data of a Binary entry."""
    binary = validated(Binary, resource, "Binary")
    if binary.data is None:
        raise unprocessable(f"Binary {url} carries no data")
    data = bytes(binary.data)
    if len(data) > max_bytes:
        raise unprocessable(f"Binary {url} is {len(data)} bytes; at most {max_bytes} are accepted")
    return str(binary.contentType), base64.b64encode(data).decode()


def _submission_set(lists: list[tuple[str, Json]], documents: list[str], found: _Entries) -> Json:
    sets = [(url, r) for url, r in lists if _list_code(r) == "submissionset"]
    others = [url for url, r in lists if _list_code(r) != "submissionset"]
    if others:
        raise unprocessable(f"only a SubmissionSet List is accepted; {others[0]} is a Folder or another List")
    if len(sets) != 1:
        raise unprocessable("an ITI-65 Bundle carries exactly one List with code MHDlistTypes#submissionset")
    url, resource = sets[0]
    validated(FhirList, resource, "List")
    items = [((e.get("item") or {}).get("reference")) for e in resource.get("entry") or []]
    named = [found.resolve(item, "DocumentReference") for item in items]
    if None in named:
        raise unprocessable(
            f"SubmissionSet {url} lists {items[named.index(None)]!r}, no DocumentReference of the Bundle"
        )
    if sorted(named) != sorted(documents):  # type: ignore[type-var]
        raise unprocessable(f"SubmissionSet {url} must list every DocumentReference of the Bundle, each once")
    return resource


def parse_provide_bundle(body: Mapping[str, Any], max_bytes: int) -> Provision:
    """Check an ITI-65 Bundle whole; every refusal is a 422 naming the entry at fault."""
    entries = _entries(body)
    found = _Entries(entries)
    patients = [url for url, r in entries if r["resourceType"] == "Patient"]
    if len(patients) > 1:
        raise unprocessable("an ITI-65 Bundle is about one patient; it carries at most one Patient")
    patient_url = patients[0] if patients else None

    def resolve(reference: str) -> Mapping[str, Any] | None:
        url = found.resolve(reference, "Patient")
        return found.resource(url) if url is not None else None

    binaries: dict[str, str] = {}
    documents: list[tuple[str, Publication]] = []
    for url, resource in entries:
        if resource["resourceType"] != "DocumentReference":
            continue
        doc = dict(resource)
        content = [dict(c) for c in doc.get("content") or []]
        attachment = dict(content[0].get("attachment") or {}) if len(content) == 1 else {}
        if attachment and "data" not in attachment:
            binary_url = found.resolve(attachment.get("url"), "Binary")
            if binary_url is None:
                raise unprocessable(
                    f"DocumentReference {url}: content.attachment.url {attachment.get('url')!r} names no Binary of "
                    "the Bundle (the exchange keeps the document itself: send it as a Binary entry or inline)"
                )
            if binary_url in binaries:
                raise unprocessable(f"Binary {binary_url} is the content of two DocumentReferences")
            content_type, data = _binary(found.resource(binary_url), binary_url, max_bytes)
            if attachment.get("contentType") not in (None, content_type):
                raise unprocessable(
                    f"DocumentReference {url} says {attachment['contentType']}, its Binary {content_type}"
                )
            binaries[binary_url] = url
            attachment = {k: v for k, v in attachment.items() if k != "url"}
            attachment.update(contentType=content_type, data=data)
            content[0] = {**content[0], "attachment": attachment}
            doc["content"] = content
        try:
            documents.append((url, parse_publication(doc, max_bytes, resolve)))
        except FhirError as exc:
            raise FhirError(exc.status, exc.code, f"DocumentReference {url}: {exc.diagnostics}") from None
    if not documents:
        raise unprocessable("an ITI-65 Bundle carries at least one DocumentReference")
    stray = [url for url, r in entries if r["resourceType"] == "Binary" and url not in binaries]
    if stray:
        raise unprocessable(f"Binary {stray[0]} is no DocumentReference's content")
    subjects = {(p.identifiers, p.patient) for _, p in documents}
    if len(subjects) != 1:
        raise unprocessable("every DocumentReference of an ITI-65 Bundle must name the same patient the same way")
    lists = [(url, r) for url, r in entries if r["resourceType"] == "List"]
    submission_set = _submission_set(lists, [url for url, _ in documents], found)
    subject = (submission_set.get("subject") or {}).get("reference")
    doc_subject = (documents[0][1].metadata.get("subject") or {}).get("reference")
    if subject is not None and subject != doc_subject and found.resolve(subject, "Patient") != patient_url:
        raise unprocessable("the SubmissionSet's subject is not the patient of its DocumentReferences")
    if patient_url is not None and all(p.patient_resource is None for _, p in documents):
        raise unprocessable(f"Patient {patient_url} is not the subject of the Bundle's DocumentReferences")
    return Provision(
        submission_set=submission_set,
        documents=tuple(documents),
        binaries=binaries,
        patient_url=patient_url,
        entries=tuple((r["resourceType"], url) for url, r in entries),
    )


def submission_set_out(
    resource: Mapping[str, Any], set_id: uuid.UUID, patient: uuid.UUID, documents: Sequence[uuid.UUID]
) -> Json:
    """The SubmissionSet as stored: the exchange's ids in place of the Bundle's references."""
    out = dict(resource)
    out["id"] = str(set_id)
    out["subject"] = {"reference": f"Patient/{patient}"}
    out["entry"] = [{"item": {"reference": f"DocumentReference/{d}"}} for d in documents]
    return out


def transaction_response(
    provision: Provision,
    documents: Mapping[str, uuid.UUID],
    submission_set: uuid.UUID | None,
    patient: uuid.UUID,
    patient_created: bool,
) -> Json:
    """The transaction-response Bundle: one entry per request entry, in order, with where each now lives."""
    entries: list[Json] = []
    for kind, url in provision.entries:
        if kind == "DocumentReference":
            response = {
                "status": "201 Created",
                "location": f"DocumentReference/{documents[url]}/_history/1",
                "etag": 'W/"1"',
            }
        elif kind == "Binary":
            # ITI-68 retrieves the content under the id of its DocumentReference.
            response = {"status": "201 Created", "location": f"Binary/{documents[provision.binaries[url]]}"}
        elif kind == "Patient":
            response = {"status": "201 Created" if patient_created else "200 OK", "location": f"Patient/{patient}"}
        else:
            response = {"status": "201 Created", "location": f"List/{submission_set}"}
        entries.append({"fullUrl": url, "response": response})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
