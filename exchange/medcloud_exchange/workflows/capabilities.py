"""What the workflows add to the exchange's CapabilityStatement (``/fhir/metadata``): resources,
interactions, search parameters and operations, as data (no route imports, so capability.py may use it)."""

from __future__ import annotations

from typing import Any


def _resource(
    kind: str, interactions: tuple[str, ...], params: tuple[tuple[str, str, str], ...] = (), **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": kind, "interaction": [{"code": i} for i in interactions]}
    if params:
        entry["searchParam"] = [{"name": n, "type": t, "documentation": d} for n, t, d in params]
    return {**entry, **extra}


def _operation(name: str, doc: str) -> dict[str, Any]:
    return {"name": name, "definition": f"https://medcloud.io/fhir/OperationDefinition/{name}", "documentation": doc}


def workflow_resources() -> list[dict[str, Any]]:
    return [
        _resource(
            "Coverage",
            ("create", "search-type"),
            (("beneficiary.identifier", "token", "urn:medcloud:insurance-card:<province>|<card number>"),),
        ),
        _resource(
            "DiagnosticReport",
            ("create", "read"),
            operation=[_operation("recognised", "recognised results of patient (or patient.identifier) and code")],
        ),
        _resource(
            "ServiceRequest",
            ("create", "read"),
            operation=[_operation("consult-report", "the consultant's report, into the requester's record")],
        ),
        _resource(
            "Task",
            ("create", "read", "update", "search-type"),
            (
                ("owner", "reference", "Organization/<this member>: the inbox"),
                ("requester", "reference", "Organization/<this member>: the outbox"),
                ("status", "token", "the Task's status"),
                ("focus", "reference", "ServiceRequest/<id>"),
            ),
            versioning="versioned-update",
        ),
        _resource("Schedule", ("create", "search-type"), (("actor", "reference", "Organization/<member>"),)),
        _resource(
            "Slot",
            ("create", "search-type"),
            (("schedule", "reference", "Schedule/<id>"), ("status", "token", "free, busy, busy-unavailable")),
        ),
        _resource(
            "Appointment",
            ("create", "read", "update", "search-type"),
            (("based-on", "reference", "ServiceRequest/<id>"),),
            versioning="versioned-update",
        ),
        _resource("Communication", ("create", "search-type"), (("based-on", "reference", "ServiceRequest/<id>"),)),
    ]
