"""RecordStore builders (no cluster, no MinIO): names, policy, lock, credentials Secret, rotation, usage, status."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from medcloud.kube.client import Manifest
from medcloud.models import (
    ConditionStatus,
    KeyRotation,
    Phase,
    Reason,
    RecordStoreCondition,
    RecordStoreReason,
    RecordStoreStatus,
    Retention,
    RetentionMode,
)
from medcloud.records.keys import KeyRing, generate_kek
from medcloud.tenancy import kek, keyring
from medcloud.tenancy.credentials import (
    ACCESS_KEY_FIELD,
    SECRET_KEY_FIELD,
    Endpoint,
    build_credentials_secret,
    decoded,
    secret_differs,
    secret_is_ours,
)
from medcloud.tenancy.store import (
    InvalidStoreError,
    StoreNames,
    bucket_name,
    credentials_secret_name,
    hospital_of_namespace,
)
from medcloud_operator.builders.recordstore import (
    LockRule,
    StoredVersion,
    StoreFacts,
    bucket_policy,
    next_status,
    normalized_policy,
    quota_bytes,
    rotation_reason,
    terminating_status,
    usage,
)
from medcloud_operator.status import Check

# S3's rules: 3-63 characters, lowercase letters, digits, dots and dashes,
# starting and ending with a letter or digit.
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def names(namespace: str = "hospital-riverton", store: str = "emr") -> StoreNames:
    return StoreNames.of(namespace, store)


# --------------------------------------------------------------------------- names


def test_names_follow_from_namespace_and_store() -> None:
    n = names()
    assert n.hospital == "riverton"
    assert n.bucket.startswith("riverton-emr-")
    assert S3_BUCKET.match(n.bucket)
    assert n.user == n.bucket
    assert n.policy == f"recordstore-{n.bucket}"
    assert n.secret == "emr-credentials"
    assert StoreNames.of("hospital-riverton", "emr") == n, "names must be deterministic"


@pytest.mark.parametrize("namespace", ["default", "hospital-", "riverton", "kube-system"])
def test_a_store_outside_a_hospital_namespace_is_refused(namespace: str) -> None:
    assert hospital_of_namespace(namespace) is None
    with pytest.raises(InvalidStoreError, match="hospital"):
        StoreNames.of(namespace, "emr")


def test_joined_names_that_read_alike_get_different_buckets() -> None:
    # "a-b" + "c" and "a" + "b-c" both read "a-b-c": the hash keeps the tenants apart.
    first, second = bucket_name("a-b", "c"), bucket_name("a", "b-c")
    assert first != second
    assert first.startswith("a-b-c-")
    assert second.startswith("a-b-c-")


def test_long_names_are_shortened_to_a_valid_distinct_bucket() -> None:
    hospital = "h" * 54
    one, two = bucket_name(hospital, "s" * 200 + "1"), bucket_name(hospital, "s" * 200 + "2")
    for name in (one, two):
        assert len(name) <= 63
        assert S3_BUCKET.match(name)
    assert one != two


def test_dots_and_reserved_prefixes_never_reach_the_bucket_name() -> None:
    dotted = bucket_name("riverton", "emr.archive.2026")
    assert "." not in dotted
    assert S3_BUCKET.match(dotted)
    reserved = bucket_name("xn--riverton", "emr")
    assert not reserved.startswith("xn--")
    assert S3_BUCKET.match(reserved)


def test_credentials_secret_name_fits_a_kubernetes_name() -> None:
    assert credentials_secret_name("emr") == "emr-credentials"
    long = credentials_secret_name("a" * 250)
    assert len(long) <= 253
    assert long.endswith("-credentials")
    assert long != credentials_secret_name("a" * 249 + "b")


# --------------------------------------------------------------------------- bucket, lock, policy


def test_lock_rule_keeps_years_as_years_and_days_as_days() -> None:
    assert LockRule.of(Retention(period="30y")) == LockRule("COMPLIANCE", 30, "Years")
    assert LockRule.of(Retention(mode=RetentionMode.GOVERNANCE, period="3650d")) == LockRule("GOVERNANCE", 3650, "Days")


def test_quota_is_bytes() -> None:
    assert quota_bytes("100Gi") == 100 * 2**30
    assert quota_bytes("2Ti") == 2 * 2**40
    assert quota_bytes("500M") == 500 * 10**6


def test_policy_allows_the_own_bucket_only_and_denies_retention_changes() -> None:
    policy = bucket_policy("riverton-emr-0123456789abcdef")
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::riverton-emr-0123456789abcdef", "arn:aws:s3:::riverton-emr-0123456789abcdef/*"}
    allowed = {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    denied = {a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]}
    assert not any("*" in a for a in allowed | denied)
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= allowed
    assert {"s3:BypassGovernanceRetention", "s3:PutObjectRetention", "s3:PutBucketVersioning"} <= denied
    assert not allowed & denied
    assert "s3:ListAllMyBuckets" not in allowed


def test_policies_compare_equal_however_the_server_orders_them() -> None:
    policy = bucket_policy("b-0123456789abcdef")
    shuffled = json.loads(json.dumps(policy))
    shuffled["Statement"].reverse()
    for statement in shuffled["Statement"]:
        statement["Action"].reverse()
    assert normalized_policy(shuffled) == normalized_policy(policy)
    shuffled["Statement"][0]["Action"].append("s3:PutBucketPolicy")
    assert normalized_policy(shuffled) != normalized_policy(policy)


# --------------------------------------------------------------------------- credentials Secret


@pytest.mark.parametrize(
    ("url", "host", "port", "secure", "normal"),
    [
        ("http://127.0.0.1:9000", "127.0.0.1", 9000, False, "http://127.0.0.1:9000"),
        ("https://minio.storage.svc", "minio.storage.svc", 443, True, "https://minio.storage.svc"),
        ("minio.storage.svc:9000", "minio.storage.svc", 9000, True, "https://minio.storage.svc:9000"),
    ],
)
def test_endpoints_parse(url: str, host: str, port: int, secure: bool, normal: str) -> None:
    endpoint = Endpoint.parse(url)
    assert (endpoint.host, endpoint.port, endpoint.secure, endpoint.url) == (host, port, secure, normal)
    assert endpoint.address == f"{host}:{port}"


def test_a_non_http_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        Endpoint.parse("ftp://minio:21")


def _secret() -> Manifest:
    return build_credentials_secret(names(), Endpoint.parse("http://10.0.0.5:9000"), "us-east-1", "s" * 40)


def test_credentials_secret_carries_both_conventions() -> None:
    secret = _secret()
    n = names()
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values["COSI_S3_ENDPOINT"] == "http://10.0.0.5:9000"
    assert values["COSI_S3_BUCKET_ID"] == values["BUCKET_NAME"] == n.bucket
    assert values[ACCESS_KEY_FIELD] == values["AWS_ACCESS_KEY_ID"] == n.user
    assert values[SECRET_KEY_FIELD] == values["AWS_SECRET_ACCESS_KEY"] == "s" * 40
    assert values["COSI_S3_REGION"] == values["BUCKET_REGION"] == "us-east-1"
    assert values["COSI_PROTOCOL"] == "S3"
    assert (values["BUCKET_HOST"], values["BUCKET_PORT"]) == ("10.0.0.5", "9000")
    assert values["MEDCLOUD_HOSPITAL"] == "riverton"
    assert values["MEDCLOUD_RECORDSTORE"] == "emr"
    assert values["MEDCLOUD_S3_SECURE"] == "false"
    assert decoded(secret, SECRET_KEY_FIELD) == "s" * 40
    meta = secret["metadata"]
    assert meta["namespace"] == "hospital-riverton"
    assert secret_is_ours(secret, n)
    assert not secret_is_ours(secret, names(store="imaging"))


def test_only_a_difference_the_operator_owns_makes_the_secret_differ() -> None:
    desired = _secret()
    live = json.loads(json.dumps(desired))
    live["metadata"]["labels"]["team"] = "radiology"
    live["metadata"]["resourceVersion"] = "42"
    assert not secret_differs(desired, live)
    live["data"]["COSI_S3_ENDPOINT"] = base64.b64encode(b"http://elsewhere:9000").decode()
    assert secret_differs(desired, live)
    live = json.loads(json.dumps(desired))
    del live["metadata"]["labels"]["medcloud.io/hospital"]
    assert secret_differs(desired, live)


# --------------------------------------------------------------------------- rotation


def test_rotation_on_request_on_schedule_and_not_otherwise() -> None:
    fresh = NOW - timedelta(days=10)
    assert rotation_reason(KeyRotation(period="90d", rotate_now=0), 0, fresh, NOW) is None
    requested = rotation_reason(KeyRotation(period="90d", rotate_now=1), 0, fresh, NOW)
    assert requested is not None
    assert "requested" in requested
    scheduled = rotation_reason(KeyRotation(period="90d"), 0, NOW - timedelta(days=90), NOW)
    assert scheduled is not None
    assert "scheduled" in scheduled
    assert rotation_reason(KeyRotation(period="1y"), 0, NOW - timedelta(days=364), NOW) is None


def test_a_store_seen_first_adopts_the_counter_instead_of_rotating() -> None:
    assert rotation_reason(KeyRotation(rotate_now=5), None, NOW, NOW) is None


# --------------------------------------------------------------------------- usage


def test_usage_counts_versions_bytes_and_the_rotation_backlog() -> None:
    versions = [
        StoredVersion(100, 1),
        StoredVersion(200, 1),
        StoredVersion(300, 2),
        StoredVersion(0, None, delete_marker=True),
        StoredVersion(50, None),  # not written by the record client
    ]
    assert usage(versions, 2).model_dump() == {"bytes": 650, "objects": 4, "objects_on_older_keys": 2}
    assert usage(versions, 1).objects_on_older_keys == 0
    assert usage([], 3).model_dump() == {"bytes": 0, "objects": 0, "objects_on_older_keys": 0}


# --------------------------------------------------------------------------- status

OK = Check(ConditionStatus.TRUE, Reason.RECONCILED, "fine")
ALL_OK = {
    RecordStoreCondition.STORAGE_AVAILABLE: OK,
    RecordStoreCondition.CREDENTIALS_READY: OK,
    RecordStoreCondition.KEYS_READY: OK,
}
FACTS = StoreFacts(
    bucket="riverton-emr-0123456789abcdef",
    endpoint="http://10.0.0.5:9000",
    secret="emr-credentials",
    retention=Retention(period="30y"),
    key_version=1,
    kek_version=1,
    key_rotated_at=NOW,
    observed_rotate_now=0,
)


def _conditions(status: RecordStoreStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_all_parts_true_make_a_ready_store_with_its_facts() -> None:
    status = next_status(RecordStoreStatus(), generation=1, checks=ALL_OK, facts=FACTS, spec_failed=False, now=NOW)
    assert status.phase is Phase.READY
    assert _conditions(status)["Ready"] == ("True", "Reconciled")
    assert status.bucket == FACTS.bucket
    assert status.secret_ref is not None
    assert status.secret_ref.name == "emr-credentials"
    assert (status.key_version, status.kek_version, status.observed_generation) == (1, 1, 1)


def test_storage_lost_after_ready_is_degraded_and_says_why_then_recovers() -> None:
    ready = next_status(RecordStoreStatus(), generation=1, checks=ALL_OK, facts=FACTS, spec_failed=False, now=NOW)
    down = Check(
        ConditionStatus.FALSE, RecordStoreReason.STORAGE_UNAVAILABLE, "MinIO is unavailable: connection refused"
    )
    later = NOW + timedelta(minutes=1)
    degraded = next_status(
        ready,
        generation=1,
        checks={RecordStoreCondition.STORAGE_AVAILABLE: down},
        facts=StoreFacts(),
        spec_failed=False,
        now=later,
    )
    assert degraded.phase is Phase.DEGRADED
    conditions = _conditions(degraded)
    assert conditions["StorageAvailable"] == ("False", "StorageUnavailable")
    assert conditions["Ready"] == ("False", "StorageUnavailable")
    assert conditions["KeysReady"] == ("True", "Reconciled"), "parts not re-checked keep their condition"
    assert degraded.bucket == FACTS.bucket, "facts not re-learnt stay"
    ready_condition = degraded.condition("Ready")
    assert ready_condition is not None
    assert "connection refused" in ready_condition.message
    assert ready_condition.last_transition_time == later

    again = next_status(degraded, generation=1, checks=ALL_OK, facts=FACTS, spec_failed=False, now=later)
    assert again.phase is Phase.READY


def test_reasserting_the_same_conditions_changes_nothing() -> None:
    first = next_status(RecordStoreStatus(), generation=1, checks=ALL_OK, facts=FACTS, spec_failed=False, now=NOW)
    second = next_status(
        first, generation=1, checks=ALL_OK, facts=FACTS, spec_failed=False, now=NOW + timedelta(hours=1)
    )
    assert second == first


def test_a_failure_before_ever_ready_is_provisioning_and_a_bad_spec_fails() -> None:
    missing = Check(ConditionStatus.FALSE, RecordStoreReason.HOSPITAL_NOT_READY, "no KEK yet")
    waiting = next_status(
        RecordStoreStatus(),
        generation=1,
        checks={RecordStoreCondition.KEYS_READY: missing},
        facts=StoreFacts(),
        spec_failed=False,
        now=NOW,
    )
    assert waiting.phase is Phase.PROVISIONING
    invalid = Check(ConditionStatus.FALSE, Reason.INVALID_SPEC, "not a hospital namespace")
    failed = next_status(
        RecordStoreStatus(),
        generation=1,
        checks={RecordStoreCondition.STORAGE_AVAILABLE: invalid},
        facts=StoreFacts(),
        spec_failed=True,
        now=NOW,
    )
    assert failed.phase is Phase.FAILED
    assert _conditions(failed)["Ready"] == ("False", "InvalidSpec")


def test_terminating_keeps_the_facts() -> None:
    ready = next_status(RecordStoreStatus(), generation=1, checks=ALL_OK, facts=FACTS, spec_failed=False, now=NOW)
    ending = terminating_status(ready, generation=1, message="Deleting (Retain)", now=NOW)
    assert ending.phase is Phase.TERMINATING
    assert _conditions(ending)["Ready"] == ("False", "Deleting")
    assert ending.bucket == ready.bucket


# --------------------------------------------------------------------------- key ring Secret (no I/O)


def _kek_secret(version: int, material: bytes) -> Manifest:
    return kek.build_secret("riverton", "medcloud-system", kek.Kek(version, NOW, material))


def test_key_ring_secret_round_trips_and_holds_no_key_in_clear() -> None:
    material = generate_kek()
    ring = KeyRing.create(hospital="riverton", store="emr", kek=material, now=NOW)
    secret = keyring.build_secret(names(), "medcloud-system", ring.to_dict())
    assert secret["metadata"]["namespace"] == "medcloud-system"
    assert secret["type"] == keyring.SECRET_TYPE
    stored = base64.b64decode(secret["data"][keyring.DATA_KEY])
    assert ring.data_key(1) not in stored
    assert base64.b64encode(ring.data_key(1)) not in stored
    opened = keyring.open_ring(keyring.ring_dict(secret), names(), _kek_secret(1, material))
    assert opened.data_key(1) == ring.data_key(1)


def test_a_ring_of_another_store_or_under_a_missing_kek_version_is_refused() -> None:
    material = generate_kek()
    ring = KeyRing.create(hospital="riverton", store="emr", kek=material, now=NOW).to_dict()
    with pytest.raises(keyring.KeyRingInvalidError, match="not riverton/imaging"):
        keyring.open_ring(ring, names(store="imaging"), _kek_secret(1, material))
    with pytest.raises(keyring.KekVersionMissingError, match="version 1"):
        keyring.open_ring(ring, names(), _kek_secret(2, generate_kek()))
    with pytest.raises(keyring.KeyRingInvalidError, match="does not unwrap"):
        keyring.open_ring(ring, names(), _kek_secret(1, generate_kek()))


def test_a_ring_opens_with_the_older_kek_version_it_names_after_a_kek_rotation() -> None:
    old, new = generate_kek(), generate_kek()
    ring = KeyRing.create(hospital="riverton", store="emr", kek=old, now=NOW)
    secret = _kek_secret(1, old)
    # What a KEK rotation writes: v2 current, v1 kept.
    secret["data"].update(_kek_secret(2, new)["data"])
    assert kek.versions(secret) == (1, 2)
    assert kek.parse_secret(secret).material == new
    opened = keyring.open_ring(ring.to_dict(), names(), secret)
    assert opened.data_key(1) == ring.data_key(1)
    # Re-wrapped under v2, the ring names v2 and no longer opens under v1 alone.
    opened.rewrap(new, 2)
    assert keyring.open_ring(opened.to_dict(), names(), secret).data_key(1) == ring.data_key(1)
    del secret["data"]["v1"]
    with pytest.raises(keyring.KekVersionMissingError, match="version 1"):
        keyring.open_ring(ring.to_dict(), names(), secret)


def test_the_tombstone_keeps_versions_and_drops_every_key() -> None:
    material = generate_kek()
    ring = KeyRing.create(hospital="riverton", store="emr", kek=material, now=NOW)
    ring.new_data_key_version(now=NOW)
    stone = keyring.tombstone(names(), ring.to_dict(), NOW)
    assert stone["dataKeys"] == []
    assert stone["shreddedAt"] == "2026-03-01T08:00:00Z"
    assert stone["kekVersion"] == 1
    assert keyring.open_ring(stone, names(), {}).is_shredded
