"""Readiness of each component and of a hospital as a whole; the progress tracker (no cluster)."""

from __future__ import annotations

from typing import Any

from medcloud_api.readiness import ProgressTracker, component, hospital_view, judge, overall


def obj(
    kind: str = "RecordStore",
    name: str = "emr",
    generation: int = 1,
    phase: str | None = None,
    ready: str | None = None,
    observed: int | None = 1,
    message: str = "",
    **meta: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
        status["observedGeneration"] = observed
    if ready is not None:
        status["conditions"] = [
            {
                "type": "Ready",
                "status": ready,
                "reason": "Checked",
                "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": observed,
            }
        ]
    return {"kind": kind, "metadata": {"name": name, "generation": generation, **meta}, "spec": {}, "status": status}


def test_states_from_status() -> None:
    assert judge(obj())[:2] == ("Pending", False)
    assert judge(obj(phase="Provisioning", ready="False"))[:2] == ("Provisioning", False)
    assert judge(obj(phase="Ready", ready="True")) == ("Ready", True, None)
    assert judge(obj(phase="Failed", ready="False", message="bucket quota exceeded")) == (
        "Failed",
        False,
        "bucket quota exceeded",
    )
    assert judge(obj(phase="Degraded", ready="False"))[0] == "Degraded"
    assert judge(obj(phase="Ready", ready="True", deletionTimestamp="2026-01-01T00:00:00Z"))[0] == "Terminating"


def test_a_ready_status_written_for_an_older_spec_is_not_ready() -> None:
    stale = obj(generation=2, phase="Ready", ready="True", observed=1)
    assert judge(stale)[:2] == ("Provisioning", False)


def test_ready_needs_the_condition_not_just_the_phase() -> None:
    assert judge(obj(phase="Ready"))[:2] == ("Provisioning", False)


def test_overall_readiness_precedence() -> None:
    ready = component(obj(name="a", phase="Ready", ready="True"))
    provisioning = component(obj(name="b", phase="Provisioning", ready="False"))
    degraded = component(obj(name="c", phase="Degraded", ready="False"))
    failed = component(obj(name="d", phase="Failed", ready="False", message="no bucket"))
    pending = component(obj(name="e"))
    tenant_leaving = component(obj("Hospital", "t", phase="Ready", ready="True", deletionTimestamp="x"))

    assert overall([ready, ready]).state == "Ready"
    assert overall([ready, provisioning]).state == "Provisioning"
    assert overall([ready, degraded, provisioning]).state == "Degraded"
    assert overall([ready, degraded, failed]).state == "Failed"
    assert "RecordStore d failed: no bucket" in overall([failed]).summary
    assert overall([pending, pending]).state == "Pending"
    assert overall([tenant_leaving, failed]).state == "Terminating"
    assert overall([]).state == "Pending", "nothing known yet is never Ready"


def test_summary_says_what_is_awaited() -> None:
    readiness = overall([component(obj(name="a", phase="Ready", ready="True")), component(obj(name="b"))])
    assert (readiness.ready_count, readiness.total) == (1, 2)
    assert readiness.summary == "1 of 2 ready; waiting for RecordStore b (Pending)"


def test_hospital_view_puts_each_object_in_its_layer() -> None:
    hospital = obj("Hospital", "maple", phase="Ready", ready="True")
    hospital["spec"] = {"displayName": "Maple", "institutionCode": "MAPLE0001", "tier": "township"}
    view = hospital_view(
        hospital,
        [obj("RecordStore", "emr", phase="Ready", ready="True")],
        [obj("DeviceGateway", "clinic")],
        [obj("AppInstance", "appointments", phase="Provisioning", ready="False")],
    )

    assert view.namespace == "hospital-maple"
    assert (view.tenant.layer, view.stores[0].layer, view.gateways[0].layer, view.apps[0].layer) == (
        "tenant",
        "stores",
        "gateways",
        "apps",
    )
    assert view.readiness.state == "Provisioning"
    assert (view.readiness.total, view.readiness.ready_count) == (4, 2)


def test_the_tracker_reports_nothing_until_every_kind_is_listed_then_everything() -> None:
    tracker = ProgressTracker(["Hospital", "RecordStore"])
    assert tracker.sync("Hospital", [obj("Hospital", "maple", phase="Ready", ready="True")]) == []
    assert tracker.readiness() is None

    first = tracker.sync("RecordStore", [obj(name="emr")])

    assert [(v.kind, v.name) for v in first] == [("Hospital", "maple"), ("RecordStore", "emr")]
    readiness = tracker.readiness()
    assert readiness is not None
    assert readiness.state == "Provisioning"


def test_the_tracker_reports_changes_of_state_only() -> None:
    tracker = ProgressTracker(["RecordStore"])
    tracker.sync("RecordStore", [obj(name="emr")])
    tracker.readiness()

    assert tracker.event("RecordStore", "MODIFIED", obj(name="emr")) == []
    (change,) = tracker.event("RecordStore", "MODIFIED", obj(name="emr", phase="Ready", ready="True"))
    assert change.state == "Ready"
    readiness = tracker.readiness()
    assert readiness is not None
    assert readiness.ready
    assert tracker.readiness() is None, "unchanged readiness is not reported twice"

    (gone,) = tracker.event("RecordStore", "DELETED", obj(name="emr"))
    assert gone.state == "Terminating"
    assert not tracker.has_tenant()
