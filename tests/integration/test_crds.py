"""The CRDs against a real kube-apiserver: install, examples, rejections, kubectl views.

Every invalid object below is refused by the API server itself (OpenAPI
validation or CEL), and each test asserts on the message a user would read,
so a rule that silently stops firing, or starts saying something cryptic,
fails here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from medcloud.kube.crds import api_error_message, install_crds
from medcloud.models import (
    API_VERSION,
    GROUP,
    KINDS,
    KINDS_BY_NAME,
    VERSION,
    AppInstance,
    DeviceGateway,
    Hospital,
    RecordStore,
    Resource,
    parse_object,
)

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN = uuid.uuid4().hex[:6]
DELETE = object()
"""Marks a path to remove in a table row's changes."""


def as_object(result: object) -> dict[str, Any]:
    """The client returns custom objects as plain dicts typed ``object``."""
    assert isinstance(result, dict)
    return result


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd_names(k8s_api_client: client.ApiClient) -> list[str]:
    return install_crds(k8s_api_client)


@pytest.fixture(scope="module")
def custom(k8s_api_client: client.ApiClient, crd_names: list[str]) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api_client)


@dataclass
class Objects:
    """Creates custom objects and deletes whatever it created at the end of the module."""

    api: client.CustomObjectsApi
    namespace: str
    created: list[tuple[type[Resource], str, str | None]] = field(default_factory=list)

    def _ns(self, kind: type[Resource], body: dict[str, Any]) -> str | None:
        if not kind.crd.namespaced:
            return None
        return str(body["metadata"].setdefault("namespace", self.namespace))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        kind = KINDS_BY_NAME[body["kind"]]
        namespace = self._ns(kind, body)
        # Strict: an unknown field is an error a user must see, not a warning.
        if namespace is None:
            result = self.api.create_cluster_custom_object(
                GROUP, VERSION, kind.crd.plural, body, field_validation="Strict"
            )
        else:
            result = self.api.create_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.crd.plural, body, field_validation="Strict"
            )
        self.created.append((kind, body["metadata"]["name"], namespace))
        return as_object(result)

    def get(self, kind: type[Resource], name: str, namespace: str | None = None) -> dict[str, Any]:
        if kind.crd.namespaced:
            return as_object(
                self.api.get_namespaced_custom_object(
                    GROUP, VERSION, namespace or self.namespace, kind.crd.plural, name
                )
            )
        return as_object(self.api.get_cluster_custom_object(GROUP, VERSION, kind.crd.plural, name))

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        kind = KINDS_BY_NAME[body["kind"]]
        name = body["metadata"]["name"]
        if kind.crd.namespaced:
            return as_object(
                self.api.replace_namespaced_custom_object(
                    GROUP, VERSION, body["metadata"]["namespace"], kind.crd.plural, name, body
                )
            )
        return as_object(self.api.replace_cluster_custom_object(GROUP, VERSION, kind.crd.plural, name, body))

    def patch_status(
        self, kind: type[Resource], name: str, status: dict[str, Any], namespace: str | None = None
    ) -> None:
        patch = {"status": status}
        merge = "application/merge-patch+json"
        if kind.crd.namespaced:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace or self.namespace, kind.crd.plural, name, patch, _content_type=merge
            )
        else:
            self.api.patch_cluster_custom_object_status(
                GROUP, VERSION, kind.crd.plural, name, patch, _content_type=merge
            )

    def delete_all(self) -> None:
        for kind, name, namespace in reversed(self.created):
            try:
                if namespace is None:
                    self.api.delete_cluster_custom_object(GROUP, VERSION, kind.crd.plural, name)
                else:
                    self.api.delete_namespaced_custom_object(GROUP, VERSION, namespace, kind.crd.plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture(scope="module")
def objects(k8s_api_client: client.ApiClient, custom: client.CustomObjectsApi) -> Iterator[Objects]:
    core = client.CoreV1Api(k8s_api_client)
    namespace = f"medcloud-crd-tests-{RUN}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    objs = Objects(custom, namespace)
    try:
        yield objs
    finally:
        objs.delete_all()
        core.delete_namespace(namespace)


# ---------------------------------------------------------------------------
# Valid objects the table starts from
# ---------------------------------------------------------------------------


def _name(case: str) -> str:
    return f"t{RUN}-{case}"[:54].rstrip("-")


def valid(kind: str, name: str) -> dict[str, Any]:
    """A small valid object of ``kind``; table rows change one thing in it."""
    meta = {"name": name}
    specs: dict[str, dict[str, Any]] = {
        "Hospital": {
            "displayName": "Test Hospital",
            "institutionCode": "TEST000001",
            "tier": "county",
        },
        "RecordStore": {"recordClass": "emr", "retention": {"mode": "COMPLIANCE", "period": "30y"}},
        "DeviceGateway": {"protocols": ["mqtt"], "deviceClasses": ["ecg"], "recordStore": "emr"},
        "AppInstance": {"app": "emr-sharing", "version": "1.0.0", "recordStore": "emr"},
        "Consortium": {"displayName": "Test Alliance", "leadHospital": "a", "members": ["a", "b"]},
        # The API server checks the CSR's shape only (a string); the operator checks what it says.
        "Device": {
            "gateway": "ward-3",
            "deviceClass": "spo2",
            "owner": "ward 3",
            "csr": "-----BEGIN CERTIFICATE REQUEST-----",
        },
    }
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": copy.deepcopy(specs[kind])}


def apply_changes(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Set (or with DELETE remove) dotted paths such as ``spec.retention.period``."""
    out = copy.deepcopy(body)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


# ---------------------------------------------------------------------------
# Invalid objects: each row changes one thing and names what the user reads
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    case: str
    kind: str
    changes: dict[str, Any]
    expected: tuple[str, ...]
    before: dict[str, Any] = field(default_factory=dict)
    """For transition rules: changes to the valid object that is created first; ``changes`` is then an update."""
    update: bool = False


LONG_NAME = "riverton-" + "x" * 50

INVALID: list[Invalid] = [
    # Hospital: patterns, enums, required fields, CEL on metadata.name, immutability
    Invalid(
        "hosp-code-lowercase",
        "Hospital",
        {"spec.institutionCode": "abc12345"},
        ('spec.institutionCode: Invalid value: "abc12345"', "should match '^[A-Z0-9]{6,24}$'"),
    ),
    Invalid(
        "hosp-code-short",
        "Hospital",
        {"spec.institutionCode": "AB12"},
        ('spec.institutionCode: Invalid value: "AB12"', "should match '^[A-Z0-9]{6,24}$'"),
    ),
    Invalid(
        "hosp-tier",
        "Hospital",
        {"spec.tier": "metropolis"},
        ('spec.tier: Unsupported value: "metropolis"', '"city", "county", "district", "township", "village"'),
    ),
    Invalid("hosp-display-name", "Hospital", {"spec.displayName": DELETE}, ("spec.displayName: Required value",)),
    Invalid("hosp-no-spec", "Hospital", {"spec": DELETE}, ("spec: Required value",)),
    Invalid(
        "hosp-pods-negative",
        "Hospital",
        {"spec.quota": {"pods": -1}},
        ("spec.quota.pods: Invalid value: -1", "should be greater than or equal to 0"),
    ),
    Invalid(
        "hosp-memory-words",
        "Hospital",
        {"spec.quota": {"memory": "lots"}},
        ('spec.quota.memory: Invalid value: "lots"', "should match"),
    ),
    Invalid(
        "hosp-cpu-negative",
        "Hospital",
        {"spec.quota": {"cpu": "-4"}},
        ('spec.quota.cpu: Invalid value: "-4"', "should match"),
    ),
    # Quantities the API server would clamp or round (issue 15, item 5): refused, with what the bound is.
    Invalid(
        "hosp-cpu-huge",
        "Hospital",
        {"spec.quota": {"cpu": "1e309"}},
        ("spec.quota.cpu: Invalid value", "CPU must be cores with at most 3 decimals or whole millicores"),
    ),
    Invalid(
        "hosp-cpu-tiny",
        "Hospital",
        {"spec.quota": {"cpu": "1e-309"}},
        ("spec.quota.cpu: Invalid value", "CPU must be cores with at most 3 decimals or whole millicores"),
    ),
    Invalid(
        "hosp-cpu-sub-milli",
        "Hospital",
        {"spec.quota": {"cpu": "1.0001"}},
        ("spec.quota.cpu: Invalid value", "CPU must be cores with at most 3 decimals or whole millicores"),
    ),
    Invalid(
        "hosp-memory-sixty-nines",
        "Hospital",
        {"spec.quota": {"memory": "9" * 60 + "Ei"}},
        ("spec.quota.memory: Invalid value", "a size must be a whole number of bytes, at most 1Ei"),
    ),
    Invalid(
        "hosp-storage-fraction",
        "Hospital",
        {"spec.quota": {"storage": "0.5"}},
        ("spec.quota.storage: Invalid value", "a size must be a whole number of bytes, at most 1Ei"),
    ),
    Invalid(
        "hosp-display-name-nul",
        "Hospital",
        {"spec.displayName": "City\x00General"},
        ("spec.displayName: Invalid value", "must not contain control characters (such as NUL)"),
    ),
    Invalid(
        "hosp-admin-user-nul",
        "Hospital",
        {"spec.admins": {"users": ["li\x00wei"]}},
        ("spec.admins.users[0]: Invalid value", "must not contain control characters (such as NUL)"),
    ),
    Invalid(
        "hosp-name-too-long",
        "Hospital",
        {"metadata.name": LONG_NAME},
        ("metadata.name must be at most 54 characters so that the tenant namespace hospital-<name>",),
    ),
    Invalid(
        "hosp-name-dots",
        "Hospital",
        {"metadata.name": f"t{RUN}.city"},
        ("metadata.name must be a DNS-1123 label",),
    ),
    Invalid(
        "hosp-admins-duplicate",
        "Hospital",
        {"spec.admins": {"users": ["li.wei", "li.wei"]}},
        ('spec.admins.users[1]: Duplicate value: "li.wei"',),
    ),
    Invalid(
        "hosp-allow-ns-pattern",
        "Hospital",
        {"spec.network": {"allowFromNamespaces": ["Monitoring_NS"]}},
        ('spec.network.allowFromNamespaces[0]: Invalid value: "Monitoring_NS"', "should match"),
    ),
    Invalid(
        "hosp-consortium-pattern",
        "Hospital",
        {"spec.consortium": "Riverton Alliance"},
        ('spec.consortium: Invalid value: "Riverton Alliance"', "should match"),
    ),
    Invalid("hosp-unknown-field", "Hospital", {"spec.colour": "red"}, ('unknown field "spec.colour"',)),
    Invalid(
        "hosp-code-immutable",
        "Hospital",
        {"spec.institutionCode": "OTHER00002"},
        ("spec.institutionCode: Forbidden: institutionCode is immutable: it identifies the institution",),
        update=True,
    ),
    # RecordStore: enums, duration patterns, cross-field and transition rules
    Invalid(
        "rs-class",
        "RecordStore",
        {"spec.recordClass": "xray"},
        ('spec.recordClass: Unsupported value: "xray"', '"emr", "imaging", "device-data", "documents"'),
    ),
    Invalid(
        "rs-mode",
        "RecordStore",
        {"spec.retention.mode": "FOREVER"},
        ('spec.retention.mode: Unsupported value: "FOREVER"', '"GOVERNANCE", "COMPLIANCE"'),
    ),
    Invalid(
        "rs-period-words",
        "RecordStore",
        {"spec.retention.period": "30 years"},
        ('spec.retention.period: Invalid value: "30 years"', "should match '^[1-9][0-9]{0,4}[dy]$'"),
    ),
    Invalid(
        "rs-period-zero",
        "RecordStore",
        {"spec.retention.period": "0d"},
        ('spec.retention.period: Invalid value: "0d"', "should match"),
    ),
    Invalid("rs-no-retention", "RecordStore", {"spec.retention": DELETE}, ("spec.retention: Required value",)),
    Invalid(
        "rs-no-period",
        "RecordStore",
        {"spec.retention": {"mode": "COMPLIANCE"}},
        ("spec.retention.period: Required value",),
    ),
    Invalid(
        "rs-deletion-policy",
        "RecordStore",
        {"spec.deletionPolicy": "Burn"},
        ('spec.deletionPolicy: Unsupported value: "Burn"', '"Retain", "Shred"'),
    ),
    Invalid(
        "rs-shred-compliance",
        "RecordStore",
        {"spec.deletionPolicy": "Shred"},
        ("spec.deletionPolicy: Invalid value", "deletionPolicy Shred is not allowed with COMPLIANCE retention"),
    ),
    Invalid(
        "rs-quota-float",
        "RecordStore",
        {"spec.quota": 1.5},
        ("spec.quota: Invalid value", "must be of type integer,string"),
    ),
    Invalid(
        "rs-quota-huge",
        "RecordStore",
        {"spec.quota": "2Ei"},
        ("spec.quota: Invalid value", "a size must be a whole number of bytes, at most 1Ei"),
    ),
    Invalid(
        "rs-rotation-period",
        "RecordStore",
        {"spec.keyRotation": {"period": "90 days"}},
        ('spec.keyRotation.period: Invalid value: "90 days"', "should match"),
    ),
    Invalid(
        "rs-period-shortened",
        "RecordStore",
        {"spec.retention.period": "10y"},
        (
            "spec.retention.period: Forbidden: ",
            "retention.period cannot be shortened in COMPLIANCE mode (from 30y to 10y)",
        ),
        update=True,
    ),
    Invalid(
        "rs-period-shortened-days",
        "RecordStore",
        {"spec.retention.period": "3650d"},
        ("retention.period cannot be shortened in COMPLIANCE mode (from 30y to 3650d)",),
        update=True,
    ),
    Invalid(
        "rs-compliance-relaxed",
        "RecordStore",
        {"spec.retention.mode": "GOVERNANCE"},
        ("spec.retention.mode: Forbidden: retention.mode cannot change from COMPLIANCE to GOVERNANCE",),
        update=True,
    ),
    Invalid(
        "rs-class-immutable",
        "RecordStore",
        {"spec.recordClass": "imaging"},
        ("spec.recordClass: Forbidden: recordClass is immutable",),
        update=True,
    ),
    Invalid(
        "rs-rotate-now-decreased",
        "RecordStore",
        {"spec.keyRotation": {"rotateNow": 2}},
        ("spec.keyRotation.rotateNow: Forbidden: keyRotation.rotateNow can only be increased",),
        before={"spec.keyRotation": {"rotateNow": 3}},
        update=True,
    ),
    # DeviceGateway: list rules, ranges, quantity comparison in CEL
    Invalid(
        "dgw-no-protocols",
        "DeviceGateway",
        {"spec.protocols": []},
        ("spec.protocols: Invalid value: 0", "should have at least 1 items"),
    ),
    Invalid(
        "dgw-duplicate-protocol",
        "DeviceGateway",
        {"spec.protocols": ["mqtt", "https", "mqtt"]},
        ('spec.protocols[2]: Duplicate value: "mqtt"',),
    ),
    Invalid(
        "dgw-protocol",
        "DeviceGateway",
        {"spec.protocols": ["coap"]},
        ('spec.protocols[0]: Unsupported value: "coap"', '"mqtt", "https", "hl7v2"'),
    ),
    Invalid(
        "dgw-device-class",
        "DeviceGateway",
        {"spec.deviceClasses": ["toaster"]},
        ('spec.deviceClasses[0]: Unsupported value: "toaster"', '"ecg"'),
    ),
    Invalid(
        "dgw-replicas-high",
        "DeviceGateway",
        {"spec.replicas": 11},
        ("spec.replicas: Invalid value: 11", "should be less than or equal to 10"),
    ),
    Invalid(
        "dgw-replicas-zero",
        "DeviceGateway",
        {"spec.replicas": 0},
        ("spec.replicas: Invalid value: 0", "should be greater than or equal to 1"),
    ),
    # Device: patterns, enums, decisions that cannot be undone (transition rules)
    Invalid("dev-owner", "Device", {"spec.owner": "-ward"}, ('spec.owner: Invalid value: "-ward"', "should match")),
    Invalid(
        "dev-class", "Device", {"spec.deviceClass": "toaster"}, ('spec.deviceClass: Unsupported value: "toaster"',)
    ),
    Invalid("dev-no-csr", "Device", {"spec.csr": DELETE}, ("spec.csr: Required value",)),
    Invalid(
        "dev-unapprove",
        "Device",
        {"spec.approved": False},
        ("an approval cannot be withdrawn; revoke instead",),
        before={"spec.approved": True},
        update=True,
    ),
    Invalid(
        "dev-unrevoke",
        "Device",
        {"spec.revoked": False},
        ("a revocation cannot be undone; enrol a new Device",),
        before={"spec.revoked": True},
        update=True,
    ),
    Invalid(
        "dev-new-csr",
        "Device",
        {"spec.csr": "-----BEGIN CERTIFICATE REQUEST----- other"},
        ("csr cannot change; enrol a new Device",),
        update=True,
    ),
    Invalid("dgw-no-store", "DeviceGateway", {"spec.recordStore": DELETE}, ("spec.recordStore: Required value",)),
    Invalid(
        "dgw-store-name",
        "DeviceGateway",
        {"spec.recordStore": "Main_Store"},
        ('spec.recordStore: Invalid value: "Main_Store"', "should match"),
    ),
    Invalid(
        "dgw-limits-below-requests",
        "DeviceGateway",
        {"spec.resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"}}},
        ("spec.resources.limits.cpu: Invalid value", "resources.limits.cpu must be at least resources.requests.cpu"),
    ),
    # AppInstance
    Invalid(
        "app-catalog",
        "AppInstance",
        {"spec.app": "tiktok"},
        ('spec.app: Unsupported value: "tiktok"', '"emr-sharing", "appointments", "referrals"'),
    ),
    Invalid(
        "app-version",
        "AppInstance",
        {"spec.version": "v1.2"},
        ('spec.version: Invalid value: "v1.2"', "should match"),
    ),
    Invalid(
        "app-needs-store",
        "AppInstance",
        {"spec.recordStore": DELETE},
        (
            "spec.recordStore: Required value: spec.recordStore is required for app emr-sharing: "
            "it reads and writes patient records",
        ),
    ),
    Invalid(
        "app-host",
        "AppInstance",
        {"spec.exposure": {"host": "Not A Host"}},
        ('spec.exposure.host: Invalid value: "Not A Host"', "should match"),
    ),
    Invalid(
        "app-config-key",
        "AppInstance",
        {"spec.config": {"bad key!": "x"}},
        ("spec.config: Invalid value", "config keys must be letters, digits"),
    ),
    Invalid(
        "app-replicas",
        "AppInstance",
        {"spec.replicas": 21},
        ("spec.replicas: Invalid value: 21", "should be less than or equal to 20"),
    ),
    Invalid(
        "app-immutable",
        "AppInstance",
        {"spec.app": "remote-consultation"},
        ("spec.app: Forbidden: app is immutable: deploy another AppInstance",),
        update=True,
    ),
    # Consortium: cross-field CEL over lists
    Invalid(
        "cons-lead-not-member",
        "Consortium",
        {"spec.leadHospital": "c"},
        ("spec.leadHospital: Invalid value", "leadHospital c must be listed in members"),
    ),
    Invalid(
        "cons-sharing-stranger",
        "Consortium",
        {"spec.sharing": [{"category": "emr", "from": ["a"], "to": ["z"]}]},
        ("spec.sharing: Invalid value", "sharing rules may only name member hospitals (a, b) or * for every member"),
    ),
    Invalid(
        "cons-category",
        "Consortium",
        {"spec.sharing": [{"category": "genomes", "from": ["*"], "to": ["*"]}]},
        ('spec.sharing[0].category: Unsupported value: "genomes"', '"emr", "imaging"'),
    ),
    Invalid(
        "cons-consent-waived",
        "Consortium",
        {"spec.sharing": [{"category": "emr", "from": ["*"], "to": ["*"], "requireConsent": False}]},
        ("spec.sharing: Forbidden: a sharing rule cannot set requireConsent: false while spec.consentRequired",),
    ),
    Invalid(
        "cons-no-members",
        "Consortium",
        {"spec.members": []},
        ("spec.members: Invalid value: 0", "should have at least 1 items"),
    ),
    Invalid(
        "cons-deid-keeps-identifier",
        "Consortium",
        {
            "spec.deidentification": {
                "purposes": [{"name": "indicators"}],
                "retain": ["Patient.address.state", "Patient.name"],
            }
        },
        (
            "spec.deidentification.retain[1]: Forbidden",
            "Patient.name carries a direct identifier or free text, which Safe Harbor drops: it cannot be retained",
        ),
    ),
    Invalid(
        "cons-deid-whole-address",
        "Consortium",
        {"spec.deidentification": {"purposes": [{"name": "indicators"}], "retain": ["Patient.address"]}},
        ("spec.deidentification.retain[0]: Forbidden", "Patient.address carries a direct identifier or free text"),
    ),
    Invalid(
        "cons-deid-no-purpose",
        "Consortium",
        {"spec.deidentification": {"purposes": []}},
        ("spec.deidentification.purposes: Invalid value: 0", "should have at least 1 items"),
    ),
    Invalid(
        "cons-sharing-no-from",
        "Consortium",
        {"spec.sharing": [{"category": "emr", "to": ["*"]}]},
        ("spec.sharing[0].from: Required value",),
    ),
]


def _rejection(action: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(ApiException) as info:
        action()
    return int(info.value.status or 0), api_error_message(info.value)


@pytest.mark.parametrize("row", INVALID, ids=[row.case for row in INVALID])
def test_invalid_object_is_rejected_with_a_clear_message(objects: Objects, row: Invalid) -> None:
    base = apply_changes(valid(row.kind, _name(row.case)), row.before)
    if row.update:
        stored = objects.create(base)
        status, message = _rejection(lambda: objects.replace(apply_changes(stored, row.changes)))
    else:
        status, message = _rejection(lambda: objects.create(apply_changes(base, row.changes)))

    assert status in (400, 422), message
    for expected in row.expected:
        assert expected in message, f"{expected!r} not in the API server's message:\n{message}"


def test_the_table_covers_every_kind_and_rule_family() -> None:
    assert len(INVALID) >= 25
    assert {row.kind for row in INVALID} == {kind.__name__ for kind in KINDS}
    assert sum(row.update for row in INVALID) >= 5, "transition rules need update cases"


# ---------------------------------------------------------------------------
# The same rules do not block what is allowed
# ---------------------------------------------------------------------------


def test_allowed_updates_pass_the_transition_rules(objects: Objects) -> None:
    hospital = objects.create(valid("Hospital", _name("ok-hosp")))
    hospital["spec"]["tier"] = "city"  # tier is not identity: a clinic may be upgraded
    assert objects.replace(hospital)["spec"]["tier"] == "city"

    store = objects.create(valid("RecordStore", _name("ok-rs")))
    for period in ("10950d", "40y"):  # equal in days, then longer
        store["spec"]["retention"]["period"] = period
        store = objects.replace(store)
    store["spec"]["keyRotation"]["rotateNow"] = 1
    assert objects.replace(store)["spec"]["keyRotation"]["rotateNow"] == 1

    governed = objects.create(
        apply_changes(valid("RecordStore", _name("ok-gov")), {"spec.retention.mode": "GOVERNANCE"})
    )
    governed["spec"]["retention"]["period"] = "1y"  # governance retention may be shortened
    governed = objects.replace(governed)
    governed["spec"]["retention"]["mode"] = "COMPLIANCE"  # and tightened into compliance
    assert objects.replace(governed)["spec"]["retention"] == {"mode": "COMPLIANCE", "period": "1y"}


def test_defaults_are_applied_by_the_api_server(objects: Objects) -> None:
    hospital = objects.create(valid("Hospital", _name("defaults")))
    spec = hospital["spec"]
    assert spec["quota"] == {"cpu": "16", "memory": "64Gi", "storage": "1Ti", "pods": 200, "persistentVolumeClaims": 50}
    assert spec["network"] == {"allowConsortiumIngress": True}

    store = objects.create(valid("RecordStore", _name("defaults")))
    assert store["spec"]["keyRotation"] == {"period": "90d", "rotateNow": 0}
    assert store["spec"]["deletionPolicy"] == "Retain"
    assert store["spec"]["quota"] == "100Gi"

    # Quantities may be written as YAML integers; the models read them as strings.
    small = objects.create(apply_changes(valid("Hospital", _name("int-cpu")), {"spec.quota": {"cpu": 8}}))
    assert small["spec"]["quota"]["cpu"] == 8
    assert Hospital.model_validate(small).spec.quota.cpu == "8"

    gateway = objects.create(valid("DeviceGateway", _name("defaults")))
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}

    # What the server returns parses with the models, defaults included.
    assert Hospital.model_validate(hospital).spec.quota.pods == 200
    assert DeviceGateway.model_validate(gateway).spec.resources.requests.cpu == "100m"


def test_status_subresource_validates_conditions(objects: Objects) -> None:
    name = _name("status")
    objects.create(valid("RecordStore", name))
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "BucketReady",
        "message": "bucket exists with object lock",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    objects.patch_status(RecordStore, name, {"phase": "Ready", "observedGeneration": 1, "conditions": [ready]})
    stored = RecordStore.model_validate(objects.get(RecordStore, name))
    assert stored.status is not None
    assert stored.status.is_ready()

    _, message = _rejection(lambda: objects.patch_status(RecordStore, name, {"phase": "Happy"}))
    assert 'status.phase: Unsupported value: "Happy"' in message
    bad_reason = {**ready, "reason": "bucket ready!"}
    _, message = _rejection(lambda: objects.patch_status(RecordStore, name, {"conditions": [bad_reason]}))
    assert 'status.conditions[0].reason: Invalid value: "bucket ready!"' in message


# ---------------------------------------------------------------------------
# Examples: the city consortium applies for real, in the hospital namespaces
# ---------------------------------------------------------------------------


def _example_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


@pytest.fixture(scope="module")
def applied_examples(
    local_cluster: Any, k8s_api_client: client.ApiClient, crd_names: list[str]
) -> Iterator[list[dict[str, Any]]]:
    # The examples carry their tenant Namespaces (for a one-pass `kubectl apply`); the
    # MedCloud objects are what these tests look at.
    docs = [doc for _, doc in _example_documents() if doc["kind"] != "Namespace"]
    core = client.CoreV1Api(k8s_api_client)
    existing = {ns.metadata.name for ns in core.list_namespace().items}
    # No operator runs here, so the tenant namespaces a Hospital would get are made by hand.
    namespaces = sorted({doc["metadata"]["namespace"] for doc in docs if "namespace" in doc["metadata"]} - existing)
    for ns in namespaces:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        for path in sorted(EXAMPLES.glob("*.yaml")):
            local_cluster.kubectl("apply", "--server-side", "--field-manager=medcloud-tests", "-f", str(path))
        yield docs
    finally:
        for path in sorted(EXAMPLES.glob("*.yaml"), reverse=True):
            local_cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(path), check=False)
        for ns in namespaces:
            with contextlib.suppress(ApiException):  # already deleted with its example file
                core.delete_namespace(ns)


def test_every_example_is_stored(applied_examples: list[dict[str, Any]], custom: client.CustomObjectsApi) -> None:
    kinds = {doc["kind"] for doc in applied_examples}
    assert kinds == {kind.__name__ for kind in KINDS}
    hospitals = [doc for doc in applied_examples if doc["kind"] == "Hospital"]
    assert len(hospitals) >= 4
    assert {"city", "county"} <= {h["spec"]["tier"] for h in hospitals}

    for doc in applied_examples:
        kind = KINDS_BY_NAME[doc["kind"]]
        meta = doc["metadata"]
        if kind.crd.namespaced:
            stored = custom.get_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], kind.crd.plural, meta["name"]
            )
        else:
            stored = custom.get_cluster_custom_object(GROUP, VERSION, kind.crd.plural, meta["name"])
        parsed = parse_object(as_object(stored))
        assert parsed.metadata.uid, f"{doc['kind']}/{meta['name']} was not stored"
        # The spec the user wrote survives, field for field.
        assert _contains(as_object(stored)["spec"], doc["spec"]), (
            f"{doc['kind']}/{meta['name']} spec changed on the server"
        )


def _contains(stored: Any, written: Any) -> bool:
    """Everything written is stored; the server may add defaults, never change or drop a value."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(k in stored and _contains(stored[k], v) for k, v in written.items())
    if isinstance(written, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(written)
            and all(_contains(s, w) for s, w in zip(stored, written, strict=True))
        )
    return bool(stored == written)


def test_examples_live_in_their_hospitals_namespaces(applied_examples: list[dict[str, Any]]) -> None:
    hospitals = {doc["metadata"]["name"] for doc in applied_examples if doc["kind"] == "Hospital"}
    for doc in applied_examples:
        kind = KINDS_BY_NAME[doc["kind"]]
        if kind.crd.namespaced:
            namespace = doc["metadata"]["namespace"]
            assert namespace.startswith("hospital-")
            assert namespace.removeprefix("hospital-") in hospitals
    by_hospital: dict[str, set[str]] = {}
    for doc in applied_examples:
        if KINDS_BY_NAME[doc["kind"]].crd.namespaced:
            by_hospital.setdefault(doc["metadata"]["namespace"], set()).add(doc["kind"])
    # Every hospital has its stores, gateways and apps; devices enrol later (one example Device).
    assert all(kinds - {"Device"} == {"RecordStore", "DeviceGateway", "AppInstance"} for kinds in by_hospital.values())


# ---------------------------------------------------------------------------
# kubectl: printer columns, explain, the medcloud category
# ---------------------------------------------------------------------------


def _columns(output: str) -> list[str]:
    return re.split(r"\s{2,}", output.splitlines()[0].strip())


@pytest.mark.parametrize(
    ("resource", "namespace", "columns"),
    [
        ("hospitals", None, ["NAME", "TIER", "CODE", "TENANT", "PHASE", "READY", "AGE"]),
        (
            "recordstores",
            "hospital-city-general",
            ["NAME", "CLASS", "RETENTION", "MODE", "BUCKET", "KEY", "PHASE", "READY", "AGE"],
        ),
        (
            "devicegateways",
            "hospital-city-general",
            ["NAME", "PROTOCOLS", "STORE", "REPLICAS", "ENROLLED", "PHASE", "READY", "AGE"],
        ),
        (
            "appinstances",
            "hospital-city-general",
            ["NAME", "APP", "VERSION", "REPLICAS", "AVAILABLE", "PHASE", "READY", "AGE"],
        ),
        ("consortia", None, ["NAME", "LEAD", "MEMBERS", "READY MEMBERS", "PHASE", "READY", "EXCHANGE", "AGE"]),
    ],
)
def test_kubectl_get_shows_the_printer_columns(
    local_cluster: Any, applied_examples: list[dict[str, Any]], resource: str, namespace: str | None, columns: list[str]
) -> None:
    args = ["get", resource] + (["-n", namespace] if namespace else [])
    assert _columns(local_cluster.kubectl(*args).stdout) == columns


def test_printer_columns_show_status_written_by_an_operator(
    local_cluster: Any, applied_examples: list[dict[str, Any]], objects: Objects
) -> None:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "TenantProvisioned",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    objects.patch_status(
        Hospital, "city-general", {"phase": "Ready", "namespace": "hospital-city-general", "conditions": [ready]}
    )
    objects.patch_status(
        RecordStore,
        "emr",
        {"phase": "Provisioning", "bucket": "city-general-emr", "keyVersion": 3},
        namespace="hospital-city-general",
    )

    hospitals = local_cluster.kubectl("get", "hosp", "city-general", "--no-headers").stdout.split()
    assert hospitals[:6] == ["city-general", "city", "12330100470011234X", "hospital-city-general", "Ready", "True"]
    store = local_cluster.kubectl("get", "rstore", "emr", "-n", "hospital-city-general", "--no-headers").stdout.split()
    assert store[:7] == ["emr", "emr", "30y", "COMPLIANCE", "city-general-emr", "3", "Provisioning"]
    wide = local_cluster.kubectl("get", "hosp", "city-general", "-o", "wide")
    assert "riverton-medical-alliance" in wide.stdout
    assert "CONSORTIUM" in wide.stdout


def test_kubectl_get_medcloud_lists_every_kind(local_cluster: Any, applied_examples: list[dict[str, Any]]) -> None:
    listed = local_cluster.kubectl("get", "medcloud", "-A", "-o", "name").stdout.split()
    for doc in applied_examples:
        kind = KINDS_BY_NAME[doc["kind"]]
        assert f"{kind.crd.singular}.{GROUP}/{doc['metadata']['name']}" in listed


@pytest.mark.parametrize("short", ["hosp", "rstore", "dgw", "app", "cons"])
def test_short_names_resolve(local_cluster: Any, crd_names: list[str], short: str) -> None:
    result = local_cluster.kubectl("get", short, "-A", "-o", "json")
    assert json.loads(result.stdout)["kind"] == "List"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("kind", KINDS, ids=[kind.__name__ for kind in KINDS])
def test_kubectl_explain_shows_every_spec_field_description(
    local_cluster: Any, crd_names: list[str], kind: type[Resource]
) -> None:
    explained = _flat(local_cluster.kubectl("explain", f"{kind.crd.plural}.spec").stdout)
    spec_model = kind.model_fields["spec"].annotation
    assert isinstance(spec_model, type)
    for name, info in spec_model.model_fields.items():
        alias = info.alias or name
        assert info.description, f"{kind.__name__}.spec.{alias} has no description"
        assert _flat(info.description) in explained, f"kubectl explain lacks the description of spec.{alias}"


def test_kubectl_explain_reaches_nested_fields(local_cluster: Any, crd_names: list[str]) -> None:
    period = _flat(local_cluster.kubectl("explain", "recordstores.spec.retention.period").stdout)
    assert "In COMPLIANCE mode it can never be shortened." in period
    code = _flat(local_cluster.kubectl("explain", "hospital.spec.institutionCode").stdout)
    assert "Official registration code of the institution" in code
    sharing = _flat(local_cluster.kubectl("explain", "consortia.spec.sharing.requireConsent").stdout)
    assert "patient's recorded consent" in sharing
    top = _flat(local_cluster.kubectl("explain", "appinstances").stdout)
    assert AppInstance.__doc__ is not None
    assert _flat(AppInstance.__doc__) in top
