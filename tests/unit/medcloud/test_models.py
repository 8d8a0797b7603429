"""The pydantic models: wire names, defaults, validation and the examples."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from medcloud.models import (
    KINDS,
    AppInstance,
    CatalogApp,
    Condition,
    ConditionStatus,
    Consortium,
    DeletionPolicy,
    DeviceGateway,
    Hospital,
    HospitalSpec,
    Phase,
    RecordStore,
    RecordStoreStatus,
    RetentionMode,
    Tier,
    duration_days,
    hospital_namespace,
    parse_object,
)
from medcloud.models.common import parse_quantity

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example_documents() -> list[dict[str, Any]]:
    """The MedCloud objects of the examples (their tenant Namespaces are plain core objects)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] != "Namespace")
    return docs


def test_each_example_namespace_is_its_hospitals_tenant() -> None:
    for path in sorted(EXAMPLES.glob("hospital-*.yaml")):
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert docs[0]["kind"] == "Namespace", f"{path.name}: the Namespace must come first for a one-pass apply"
        hospital_doc = next(doc for doc in docs if doc["kind"] == "Hospital")
        assert docs[0]["metadata"]["name"] == f"hospital-{hospital_doc['metadata']['name']}"


def hospital(**spec: Any) -> dict[str, Any]:
    base = {"displayName": "Riverton City Hospital", "institutionCode": "RIV0000001", "tier": "city"}
    return {"apiVersion": "medcloud.io/v1alpha1", "kind": "Hospital", "metadata": {"name": "city"}, "spec": base | spec}


def record_store(**spec: Any) -> dict[str, Any]:
    base = {"recordClass": "emr", "retention": {"period": "30y"}}
    return {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "RecordStore",
        "metadata": {"name": "emr", "namespace": "hospital-city"},
        "spec": base | spec,
    }


# --- examples ---------------------------------------------------------------


def test_examples_hold_a_city_consortium() -> None:
    docs = example_documents()
    tiers = [doc["spec"]["tier"] for doc in docs if doc["kind"] == "Hospital"]
    assert tiers.count("city") == 1
    assert tiers.count("county") == 1
    assert sum(t in ("township", "community", "village") for t in tiers) == 3
    assert "village" in tiers
    assert [doc["kind"] for doc in docs].count("Consortium") == 1


@pytest.mark.parametrize(
    "doc",
    example_documents(),
    ids=lambda d: f"{d['kind']}/{d['metadata'].get('namespace', '-')}/{d['metadata']['name']}",
)
def test_every_example_parses_and_round_trips(doc: dict[str, Any]) -> None:
    obj = parse_object(doc)
    manifest = obj.to_manifest()
    assert type(obj).model_validate(manifest) == obj
    assert manifest["apiVersion"] == "medcloud.io/v1alpha1"
    assert manifest["kind"] == doc["kind"]
    assert manifest["metadata"] == doc["metadata"]


def test_examples_reference_what_exists() -> None:
    docs = example_documents()
    hospitals = {d["metadata"]["name"] for d in docs if d["kind"] == "Hospital"}
    named = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    for doc in docs:
        obj = parse_object(doc)
        ns = doc["metadata"].get("namespace")
        if ns is not None:
            assert ns in {hospital_namespace(h) for h in hospitals}
        if isinstance(obj, DeviceGateway):
            assert ("RecordStore", ns, obj.spec.record_store) in named
        if isinstance(obj, AppInstance):
            if obj.spec.record_store:
                assert ("RecordStore", ns, obj.spec.record_store) in named
            if obj.spec.device_gateway:
                assert ("DeviceGateway", ns, obj.spec.device_gateway) in named
        if isinstance(obj, Hospital):
            assert obj.spec.consortium in {d["metadata"]["name"] for d in docs if d["kind"] == "Consortium"}
        if isinstance(obj, Consortium):
            assert set(obj.spec.members) == hospitals


# --- wire format ------------------------------------------------------------


def test_python_names_are_snake_case_and_wire_names_camel_case() -> None:
    spec = HospitalSpec(display_name="Riverton", institution_code="RIV0000001", tier=Tier.COUNTY)
    dumped = spec.model_dump(by_alias=True, mode="json")
    assert dumped["displayName"] == "Riverton"
    assert dumped["institutionCode"] == "RIV0000001"
    assert dumped["network"] == {"allowFromNamespaces": [], "allowConsortiumIngress": True}
    assert HospitalSpec.model_validate(dumped) == spec


def test_to_manifest_drops_nulls_and_empty_metadata() -> None:
    manifest = Hospital.model_validate(hospital()).to_manifest()
    assert manifest["metadata"] == {"name": "city"}
    assert "status" not in manifest
    assert "consortium" not in manifest["spec"]
    assert manifest["spec"]["quota"] == {
        "cpu": "16",
        "memory": "64Gi",
        "storage": "1Ti",
        "pods": 200,
        "persistentVolumeClaims": 50,
    }


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="colour"):
        Hospital.model_validate(hospital(colour="red"))


def test_metadata_keeps_what_the_api_server_adds() -> None:
    doc = hospital()
    doc["metadata"] |= {"uid": "u-1", "resourceVersion": "42", "managedFields": [{"manager": "kubectl"}]}
    obj = Hospital.model_validate(doc)
    assert obj.metadata.resource_version == "42"
    assert obj.to_manifest()["metadata"]["managedFields"] == [{"manager": "kubectl"}]


def test_kind_and_api_version_are_fixed() -> None:
    with pytest.raises(ValidationError):
        Hospital.model_validate(hospital() | {"kind": "RecordStore"})
    with pytest.raises(ValidationError):
        Hospital.model_validate(hospital() | {"apiVersion": "medcloud.io/v1"})
    with pytest.raises(ValueError, match="not a MedCloud kind"):
        parse_object({"kind": "Pod"})


def test_every_kind_declares_its_crd_facts() -> None:
    for kind in KINDS:
        assert kind.crd.plural.endswith(("s", "a"))
        assert kind.crd.singular == kind.__name__.lower()
        assert "medcloud" in kind.crd.categories


# --- field rules ------------------------------------------------------------


@pytest.mark.parametrize("code", ["abc12345", "AB12", "RIV-000001", "A" * 25])
def test_institution_code_pattern(code: str) -> None:
    with pytest.raises(ValidationError, match=r"institutionCode|institution_code"):
        Hospital.model_validate(hospital(institutionCode=code))


def test_tier_is_an_enum() -> None:
    with pytest.raises(ValidationError, match="tier"):
        Hospital.model_validate(hospital(tier="metropolis"))
    assert Hospital.model_validate(hospital(tier="village")).spec.tier is Tier.VILLAGE


def test_quantities_accept_integers_and_keep_strings() -> None:
    obj = Hospital.model_validate(hospital(quota={"cpu": 8, "memory": "32Gi"}))
    assert obj.spec.quota.cpu == "8"
    assert obj.spec.quota.memory == "32Gi"
    for bad in ("-4", "lots", "1.5 Gi", "1e2.5"):
        with pytest.raises(ValidationError, match="quota"):
            Hospital.model_validate(hospital(quota={"memory": bad}))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu", "1e309", "CPU must be cores with at most 3 decimals or whole millicores"),
        ("cpu", "1e-309", "CPU must be cores with at most 3 decimals or whole millicores"),
        ("cpu", "100001", "CPU must be cores with at most 3 decimals or whole millicores"),
        ("cpu", "1.0001", "CPU must be cores with at most 3 decimals or whole millicores"),
        ("memory", "9" * 60 + "Ei", "a size must be a whole number of bytes, at most 1Ei"),
        ("memory", "0.5", "a size must be a whole number of bytes, at most 1Ei"),
        ("storage", "2Ei", "a size must be a whole number of bytes, at most 1Ei"),
        # Exponents Decimal cannot hold exactly: an error (a 500 found by schemathesis) or silently 0.
        ("memory", "1e999999999", "is beyond any quantity MedCloud accepts"),
        ("cpu", "1e-999999999", "is beyond any quantity MedCloud accepts"),
    ],
)
def test_quantities_out_of_range_are_refused_with_the_bound(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Hospital.model_validate(hospital(quota={field: value}))


@pytest.mark.parametrize("text", ["Riverton\x00General", "bell\x07", "line\nbreak", "delete\x7f"])
def test_display_names_and_principals_refuse_control_characters(text: str) -> None:
    with pytest.raises(ValidationError, match="must not contain control characters"):
        Hospital.model_validate(hospital(displayName=text))
    with pytest.raises(ValidationError, match="must not contain control characters"):
        Hospital.model_validate(hospital(admins={"users": [text]}))
    unicode_name = "Riverton 市第一医院"
    assert Hospital.model_validate(hospital(displayName=unicode_name)).spec.display_name == unicode_name


def test_quantities_at_the_bounds_are_accepted() -> None:
    quota = Hospital.model_validate(hospital(quota={"cpu": "100000", "memory": "1Ei", "storage": 0})).spec.quota
    assert (quota.cpu, quota.memory, quota.storage) == ("100000", "1Ei", "0")
    assert Hospital.model_validate(hospital(quota={"cpu": "1m"})).spec.quota.cpu == "1m"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("4", Decimal(4)),
        ("128Mi", Decimal(128 * 2**20)),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(("text", "days"), [("90d", 90), ("30y", 10950), ("1y", 365), ("3650d", 3650)])
def test_duration_days(text: str, days: int) -> None:
    assert duration_days(text) == days


@pytest.mark.parametrize("text", ["0d", "30 years", "30", "12h", "-1d", "30Y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        duration_days(text)
    with pytest.raises(ValidationError, match="period"):
        RecordStore.model_validate(record_store(retention={"period": text}))


def test_record_store_defaults() -> None:
    spec = RecordStore.model_validate(record_store()).spec
    assert spec.retention.mode is RetentionMode.COMPLIANCE
    assert spec.retention.days == 30 * 365
    assert spec.key_rotation.period == "90d"
    assert spec.key_rotation.rotate_now == 0
    assert spec.deletion_policy is DeletionPolicy.RETAIN
    assert spec.quota == "100Gi"


def test_shred_needs_governance_retention() -> None:
    with pytest.raises(ValidationError, match="Shred is not allowed with COMPLIANCE"):
        RecordStore.model_validate(record_store(deletionPolicy="Shred"))
    governed = record_store(deletionPolicy="Shred", retention={"mode": "GOVERNANCE", "period": "5y"})
    assert RecordStore.model_validate(governed).spec.deletion_policy is DeletionPolicy.SHRED


def gateway(**spec: Any) -> dict[str, Any]:
    base = {"protocols": ["mqtt"], "deviceClasses": ["ecg"], "recordStore": "emr"}
    return {"kind": "DeviceGateway", "metadata": {"name": "gw", "namespace": "hospital-x"}, "spec": base | spec}


def test_gateway_lists_are_sets_and_bounded() -> None:
    with pytest.raises(ValidationError, match="duplicate values: mqtt"):
        DeviceGateway.model_validate(gateway(protocols=["mqtt", "mqtt"]))
    with pytest.raises(ValidationError, match="protocols"):
        DeviceGateway.model_validate(gateway(protocols=[]))
    with pytest.raises(ValidationError, match="replicas"):
        DeviceGateway.model_validate(gateway(replicas=11))


def test_gateway_limits_cover_requests() -> None:
    resources = {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}
    with pytest.raises(ValidationError, match=r"limits\.cpu must be at least"):
        DeviceGateway.model_validate(gateway(resources=resources))
    ok = DeviceGateway.model_validate(
        gateway(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "1024Mi"}})
    )
    assert ok.spec.resources.limits.memory == "1024Mi"


def app(**spec: Any) -> dict[str, Any]:
    base = {"app": "appointments", "version": "1.0.0"}
    return {"kind": "AppInstance", "metadata": {"name": "a", "namespace": "hospital-x"}, "spec": base | spec}


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "latest"])
def test_app_version_is_semver(version: str) -> None:
    with pytest.raises(ValidationError, match="version"):
        AppInstance.model_validate(app(version=version))


def test_record_apps_need_a_store() -> None:
    with pytest.raises(ValidationError, match="recordStore is required for app emr-sharing"):
        AppInstance.model_validate(app(app="emr-sharing"))
    assert AppInstance.model_validate(app(app="emr-sharing", recordStore="emr")).spec.app is CatalogApp.EMR_SHARING
    assert AppInstance.model_validate(app(version="2.0.0-rc.1+build.7")).spec.record_store is None


def test_app_config_keys() -> None:
    assert AppInstance.model_validate(app(config={"audit.retention": "30y"})).spec.config["audit.retention"] == "30y"
    with pytest.raises(ValidationError, match="invalid config keys: bad key!"):
        AppInstance.model_validate(app(config={"bad key!": "x"}))


def consortium(**spec: Any) -> dict[str, Any]:
    base = {"displayName": "Alliance", "leadHospital": "a", "members": ["a", "b"]}
    return {"kind": "Consortium", "metadata": {"name": "alliance"}, "spec": base | spec}


def test_consortium_rules() -> None:
    with pytest.raises(ValidationError, match="leadHospital c must be listed in members"):
        Consortium.model_validate(consortium(leadHospital="c"))
    with pytest.raises(ValidationError, match="not members: z"):
        Consortium.model_validate(consortium(sharing=[{"category": "emr", "from": ["a"], "to": ["z"]}]))
    waived = [{"category": "emr", "from": ["*"], "to": ["*"], "requireConsent": False}]
    with pytest.raises(ValidationError, match="cannot set requireConsent: false"):
        Consortium.model_validate(consortium(sharing=waived))
    relaxed = Consortium.model_validate(consortium(sharing=waived, consentRequired=False))
    assert relaxed.to_manifest()["spec"]["sharing"][0] == {
        "category": "emr",
        "from": ["*"],
        "to": ["*"],
        "requireConsent": False,
    }


# --- status and conditions --------------------------------------------------


def test_conditions_have_the_kubernetes_shape() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    status = RecordStoreStatus(
        phase=Phase.READY,
        observed_generation=3,
        conditions=[
            Condition(type="Ready", status=ConditionStatus.TRUE, reason="BucketReady", last_transition_time=now)
        ],
        key_version=2,
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["conditions"] == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "BucketReady",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
    assert dumped["phase"] == "Ready"
    assert dumped["observedGeneration"] == 3
    assert dumped["keyVersion"] == 2
    assert status.is_ready()
    assert status.condition("Degraded") is None


@pytest.mark.parametrize(
    "change",
    [
        {"status": "Yes"},
        {"reason": "bucket ready"},
        {"reason": ""},
        {"lastTransitionTime": "2026-01-01T00:00:00"},  # no time zone: not RFC 3339
        {"observedGeneration": -1},
    ],
)
def test_invalid_conditions(change: dict[str, Any]) -> None:
    base = {"type": "Ready", "status": "True", "reason": "BucketReady", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    with pytest.raises(ValidationError):
        Condition.model_validate(base | change)


def test_hospital_namespace_convention() -> None:
    obj = Hospital.model_validate(hospital())
    assert obj.namespace_name == "hospital-city" == hospital_namespace("city")


@pytest.mark.parametrize("name", ["x" * 55, "city.general", "City"])
def test_hospital_name_must_fit_the_namespace(name: str) -> None:
    doc = hospital()
    doc["metadata"]["name"] = name
    with pytest.raises(ValidationError, match="names the tenant namespace"):
        Hospital.model_validate(doc)
