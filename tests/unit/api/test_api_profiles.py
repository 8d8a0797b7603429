"""Default onboarding profiles per tier and how a request resolves to objects (no cluster)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from medcloud.models import AppInstance, CatalogApp, DeviceGateway, Hospital, RecordStore, Tier
from medcloud.models.appinstance import SEMVER_PATTERN
from medcloud_api.plan import build_plan, reference_errors, resolve
from medcloud_api.profiles import CATALOG_VERSIONS, default_profile
from medcloud_api.schemas import HospitalCreate


def request(tier: str = "township", **extra: Any) -> HospitalCreate:
    spec: dict[str, Any] = {"displayName": "Maple Township Health Centre", "institutionCode": "MAPLE0001", "tier": tier}
    spec.update(extra.pop("spec", {}))
    return HospitalCreate.model_validate({"name": "maple", "spec": spec, **extra})


def test_a_township_clinic_gets_an_emr_store_device_data_with_a_gateway_and_appointments_and_referrals() -> None:
    profile = default_profile(Tier.TOWNSHIP)

    assert {s.name: s.spec.record_class.value for s in profile.record_stores} == {
        "emr": "emr",
        "device-data": "device-data",
    }
    (gateway,) = profile.device_gateways
    assert gateway.spec.record_store == "device-data"
    assert {p.value for p in gateway.spec.protocols} >= {"https"}
    assert {a.spec.app for a in profile.apps} == {CatalogApp.APPOINTMENTS, CatalogApp.REFERRALS}
    referrals = next(a for a in profile.apps if a.spec.app is CatalogApp.REFERRALS)
    assert referrals.spec.record_store == "emr"


@pytest.mark.parametrize("tier", list(Tier))
def test_every_profile_is_consistent_and_keeps_records_under_compliance_retention(tier: Tier) -> None:
    resolved = resolve(request(tier.value))

    assert resolved.from_profile
    assert reference_errors(resolved) == []
    for store in resolved.record_stores:
        assert store.spec.retention.mode.value == "COMPLIANCE"
        assert store.spec.retention.days >= 15 * 365
    for app in resolved.apps:
        assert app.spec.version == CATALOG_VERSIONS[app.spec.app]


def test_larger_tiers_run_more_of_the_catalog() -> None:
    apps = {tier: {a.spec.app for a in default_profile(tier).apps} for tier in Tier}
    assert apps[Tier.CITY] == set(CatalogApp)
    assert apps[Tier.VILLAGE] < apps[Tier.COUNTY] < apps[Tier.CITY]
    assert "imaging" in {s.name for s in default_profile(Tier.COUNTY).record_stores}
    assert "imaging" not in {s.name for s in default_profile(Tier.VILLAGE).record_stores}


def test_catalog_versions_are_semver() -> None:
    assert set(CATALOG_VERSIONS) == set(CatalogApp)
    assert all(re.match(SEMVER_PATTERN, version) for version in CATALOG_VERSIONS.values())


def test_the_tier_quota_applies_only_when_the_request_gives_none() -> None:
    assert resolve(request("village")).spec.quota.cpu == "4"
    given = resolve(request("village", spec={"quota": {"cpu": "6"}}))
    assert given.spec.quota.cpu == "6"
    assert given.spec.quota.pods == 200, "fields left out keep the model's defaults, as on the API server"


def test_naming_any_layer_turns_the_profile_off_and_leaves_the_other_layers_empty() -> None:
    store = {"name": "emr", "spec": {"recordClass": "emr", "retention": {"period": "30y"}}}
    resolved = resolve(request("city", recordStores=[store]))

    assert not resolved.from_profile
    assert [s.name for s in resolved.record_stores] == ["emr"]
    assert (resolved.device_gateways, resolved.apps) == ((), ())
    assert resolved.spec.quota.cpu == "16", "no profile: the model's own quota defaults"


def test_explicit_empty_lists_mean_a_bare_tenant() -> None:
    resolved = resolve(request("city", recordStores=[], deviceGateways=[], apps=[]))
    assert [d.kind for d in build_plan(resolved)] == [Hospital]


def test_the_plan_creates_the_hospital_first_then_stores_gateways_and_apps_in_its_namespace() -> None:
    plan = build_plan(resolve(request("township")))

    kinds = [d.kind for d in plan]
    assert kinds[0] is Hospital
    assert kinds == sorted(kinds, key=[Hospital, RecordStore, DeviceGateway, AppInstance].index)
    assert plan[0].namespace is None
    assert {d.namespace for d in plan[1:]} == {"hospital-maple"}
    manifest = plan[1].manifest()
    assert manifest["apiVersion"] == "medcloud.io/v1alpha1"
    assert manifest["metadata"]["labels"] == {"app.kubernetes.io/created-by": "medcloud-api"}
    # Specs are written in full, as the API server would default them.
    assert plan[0].spec["quota"] == {
        "cpu": "8",
        "memory": "32Gi",
        "storage": "500Gi",
        "pods": 100,
        "persistentVolumeClaims": 20,
    }
