"""The record of each Hospital's reported quota usage, and the usage a reconcile reports (pure)."""

from __future__ import annotations

from medcloud.models import HospitalSpec
from medcloud_operator.builders.hospital import build_resource_quota, reported_usage
from medcloud_operator.quotausage import SeenQuotaUsage

ZEROS = {
    "requests.cpu": "0",
    "requests.memory": "0",
    "requests.storage": "0",
    "pods": "0",
    "persistentvolumeclaims": "0",
}


def quota(name: str = "riverton") -> dict[str, object]:
    return build_resource_quota(
        name, HospitalSpec.model_validate({"displayName": "Riverton", "institutionCode": "RIV001CITY", "tier": "city"})
    )


def test_a_new_quota_in_a_new_namespace_reports_zero_for_everything_it_limits() -> None:
    assert reported_usage(quota(), created_in_new_namespace=True) == ZEROS


def test_a_counted_quota_reports_its_count_as_written() -> None:
    counted = {**quota(), "status": {"used": {"pods": "3", "requests.cpu": "1500m"}}}
    assert reported_usage(counted, created_in_new_namespace=True) == {"pods": "3", "requests.cpu": "1500m"}
    assert reported_usage(counted, created_in_new_namespace=False) == {"pods": "3", "requests.cpu": "1500m"}


def test_an_uncounted_quota_in_an_older_namespace_claims_no_usage() -> None:
    # The namespace may hold pods already: nothing is known until the quota controller counts.
    assert reported_usage(quota(), created_in_new_namespace=False) == {}
    assert reported_usage(None, created_in_new_namespace=True) == {}


def test_the_record_shows_only_the_usage_last_written_or_watched() -> None:
    seen = SeenQuotaUsage()
    assert not seen.shows("riverton", ZEROS)
    seen.record("riverton", ZEROS)
    assert seen.shows("riverton", dict(reversed(list(ZEROS.items()))))  # order does not matter
    assert not seen.shows("riverton", {**ZEROS, "pods": "1"})
    assert not seen.shows("riverton", {k: v for k, v in ZEROS.items() if k != "pods"})
    assert not seen.shows("lakeside", ZEROS)


def test_a_watched_status_replaces_the_record_and_one_without_usage_clears_it() -> None:
    seen = SeenQuotaUsage()
    seen.record("riverton", ZEROS)
    seen.observe("riverton", {"phase": "Ready", "quotaUsage": {**ZEROS, "pods": "2"}})
    assert seen.shows("riverton", {**ZEROS, "pods": "2"})
    assert not seen.shows("riverton", ZEROS)
    seen.observe("riverton", {"phase": "Provisioning"})
    assert not seen.shows("riverton", {**ZEROS, "pods": "2"})
    assert len(seen) == 0
    seen.record("riverton", ZEROS)
    seen.forget("riverton")
    assert not seen.shows("riverton", ZEROS)
