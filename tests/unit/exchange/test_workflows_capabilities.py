"""The CapabilityStatement says what the workflows serve, and stays valid FHIR R4."""

from __future__ import annotations

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from medcloud_exchange.capability import capability_statement


def test_the_metadata_lists_every_workflow_resource_and_operation() -> None:
    statement = CapabilityStatement.model_validate(capability_statement("riverton", "2026-12-02T00:00:00Z"))
    served = {r.type: r for r in statement.rest[0].resource}
    for kind in (
        "Coverage",
        "DiagnosticReport",
        "ServiceRequest",
        "Task",
        "Schedule",
        "Slot",
        "Appointment",
        "Communication",
    ):
        assert kind in served
    assert [o.name for o in served["DiagnosticReport"].operation] == ["recognised"]
    assert [o.name for o in served["ServiceRequest"].operation] == ["consult-report"]
