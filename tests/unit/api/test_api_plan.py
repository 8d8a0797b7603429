"""Differences behind a 409, and the request checks the CRDs cannot make (no cluster)."""

from __future__ import annotations

from typing import Any

from medcloud_api.plan import Desired, build_plan, conflicts, diff, differences, reference_errors, resolve
from medcloud_api.schemas import HospitalCreate

HOSPITAL_SPEC = {"displayName": "County People's Hospital", "institutionCode": "COUNTY0001", "tier": "county"}


def plan_for(**body: Any) -> list[Desired]:
    return build_plan(resolve(HospitalCreate.model_validate({"name": "county", "spec": HOSPITAL_SPEC, **body})))


def stored(desired: Desired, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"kind": desired.kind.__name__, "metadata": {"name": desired.name, **meta}, "spec": spec}


def test_diff_reports_each_leaf_with_its_path() -> None:
    requested = {"tier": "county", "quota": {"cpu": "8", "pods": 100}, "admins": {"users": ["a"]}}
    existing = {"tier": "city", "quota": {"cpu": "8", "pods": 50}, "admins": {"users": ["a", "b"]}, "extra": 1}

    assert diff(requested, existing) == [
        ("spec.admins.users", ["a"], ["a", "b"]),
        ("spec.extra", None, 1),
        ("spec.quota.pods", 100, 50),
        ("spec.tier", "county", "city"),
    ]
    assert diff(requested, requested) == []


def test_what_the_api_server_defaults_is_not_a_difference() -> None:
    hospital = plan_for(recordStores=[], deviceGateways=[], apps=[])[0]
    # As stored after `kubectl apply` of the same spec: only the given fields, the
    # server's defaults filled in, integers where the request had strings.
    as_stored = {
        **HOSPITAL_SPEC,
        "quota": {"cpu": 16, "memory": "64Gi", "storage": "1Ti", "pods": 200, "persistentVolumeClaims": 50},
        "network": {"allowConsortiumIngress": True},
        "admins": {},
    }
    assert differences(hospital, stored(hospital, as_stored)) == []


def test_a_conflicting_request_lists_every_difference_per_object() -> None:
    plan = plan_for(recordStores=[{"name": "emr", "spec": {"recordClass": "emr", "retention": {"period": "30y"}}}])
    hospital, store = plan[0], plan[1]
    existing = {
        hospital.key: stored(hospital, {**HOSPITAL_SPEC, "tier": "city", "institutionCode": "OTHER0001"}),
        store.key: stored(store, {"recordClass": "emr", "retention": {"mode": "COMPLIANCE", "period": "10y"}}),
    }

    found = conflicts(plan, existing)

    assert [(d.object.kind, d.path, d.requested, d.existing) for d in found] == [
        ("Hospital", "spec.institutionCode", "COUNTY0001", "OTHER0001"),
        ("Hospital", "spec.tier", "county", "city"),
        ("RecordStore", "spec.retention.period", "30y", "10y"),
    ]
    assert found[2].object.namespace == "hospital-county"


def test_an_object_being_deleted_conflicts_even_when_its_spec_matches() -> None:
    hospital = plan_for(apps=[])[0]
    terminating = stored(hospital, hospital.spec, deletionTimestamp="2026-01-01T00:00:00Z")
    (difference,) = differences(hospital, terminating)
    assert difference.path == "metadata.deletionTimestamp"


def test_objects_that_do_not_exist_are_not_conflicts() -> None:
    plan = plan_for()
    assert conflicts(plan, {d.key: None for d in plan}) == []


def test_references_to_stores_and_gateways_the_request_does_not_create_are_invalid() -> None:
    body = {
        "recordStores": [
            {"name": "emr", "spec": {"recordClass": "emr", "retention": {"period": "30y"}}},
            {"name": "emr", "spec": {"recordClass": "documents", "retention": {"period": "30y"}}},
        ],
        "deviceGateways": [
            {"name": "wards", "spec": {"protocols": ["mqtt"], "deviceClasses": ["ecg"], "recordStore": "vitals"}}
        ],
        "apps": [
            {
                "name": "rc",
                "spec": {
                    "app": "remote-consultation",
                    "version": "1.8.0",
                    "recordStore": "emr",
                    "deviceGateway": "home",
                },
            }
        ],
    }
    resolved = resolve(HospitalCreate.model_validate({"name": "county", "spec": HOSPITAL_SPEC, **body}))

    errors = {e.pointer: e.detail for e in reference_errors(resolved)}

    assert errors == {
        "#/recordStores/1/name": "emr is listed twice",
        "#/deviceGateways/0/spec/recordStore": "no RecordStore named vitals in this hospital",
        "#/apps/0/spec/deviceGateway": "no DeviceGateway named home in this hospital",
    }
