"""The CapabilityStatement at ``/fhir/metadata``: what this server does, as FHIR R4 says it."""

from __future__ import annotations

from typing import Any

from medcloud_exchange.bulk.protocol import BULK_DATA_SERVER, bulk_operations
from medcloud_exchange.workflows.capabilities import workflow_resources

MHD = "https://profiles.ihe.net/ITI/MHD"


def _param(name: str, type_: str, doc: str) -> dict[str, str]:
    return {"name": name, "type": type_, "documentation": doc}


def capability_statement(consortium: str, date: str) -> dict[str, Any]:
    security = (
        "Bearer service account token (audience medcloud-exchange), TokenReview; ClusterRole "
        "medcloud-exchange-client bound in the hospital's namespace, SubjectAccessReview. Every request "
        "states X-MedCloud-Practitioner and X-MedCloud-Purpose-Of-Use."
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "MedCloud",
        "kind": "instance",
        "software": {"name": "medcloud-exchange"},
        "implementation": {"description": f"MedCloud consortium exchange of {consortium}"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "instantiates": [
            f"{MHD}/CapabilityStatement/IHE.MHD.DocumentResponder",
            f"{MHD}/CapabilityStatement/IHE.MHD.DocumentRecipient",
            BULK_DATA_SERVER,
        ],
        "rest": [
            {
                "mode": "server",
                "security": {"description": security},
                "resource": [
                    {
                        "type": "DocumentReference",
                        "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            _param("patient", "reference", "Patient/<id> of this exchange"),
                            _param("patient.identifier", "token", "system|value of a patient identifier"),
                            _param("category", "token", "a consortium sharing category"),
                            _param("type", "token", "system|code of the document type (LOINC)"),
                            _param("date", "date", "when the document was made (eq, ge, le, gt, lt)"),
                            _param("author", "reference", "Organization/<publishing hospital>"),
                        ],
                    },
                    {"type": "Binary", "interaction": [{"code": "read"}]},
                    {"type": "List", "interaction": [{"code": "read"}], "documentation": "ITI-65 SubmissionSets"},
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            _param("identifier", "token", "system|value (blind-indexed)"),
                            _param("_id", "token", "the Patient's id"),
                        ],
                    },
                    {
                        "type": "Consent",
                        "interaction": [
                            {"code": "create"},
                            {"code": "read"},
                            {"code": "update"},
                            {"code": "delete"},
                        ],
                        "versioning": "versioned-update",
                    },
                    {
                        "type": "AuditEvent",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [
                            _param("patient", "reference", "Patient/<id>"),
                            _param("patient.identifier", "token", "system|value"),
                        ],
                    },
                    *workflow_resources(),
                ],
                "interaction": [{"code": "transaction", "documentation": "ITI-65 Provide Document Bundle"}],
                "operation": bulk_operations(),
            }
        ],
    }
