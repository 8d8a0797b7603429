"""RecordStores end to end: the operator against the real API server and a real MinIO.

The operator runs in-process (Kopf's KopfRunner) as its own identity, bound
to nothing but deploy/operator-rbac.yaml and deploy/recordstore-operator-rbac.yaml,
so these tests also prove that RBAC is enough. Hospital and RecordStore
handlers both run: a store gets its keys from a Hospital the same operator
onboarded. MinIO is a private server of this module (its own LocalCluster
without Kubernetes), so stopping and restarting it disturbs no other test.
The key service runs in a thread as its own identity (deploy/keyservice-rbac.yaml)
and callers authenticate with real service account tokens.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from minio import Minio, MinioAdmin
from minio.credentials.providers import StaticProvider
from minio.error import S3Error
from typer.testing import CliRunner

from medcloud.records.client import RecordClient
from medcloud.records.keyclient import HttpKeyProvider, KeyAccessDeniedError
from medcloud.records.keys import KeyRing, KeyShreddedError, KeyUnwrapError
from medcloud.tenancy.store import StoreNames
from medcloud_cli.commands.record_errors import EXIT_RETRYABLE
from medcloud_cli.commands.records import StoreAccess, direct_key_provider, open_client, store_access
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster, MinioInfo
from medcloud_cli.localcluster.process import ServerProcess, free_port
from medcloud_cli.main import app as medcloud_cli
from medcloud_keyservice.app import create_app
from medcloud_keyservice.settings import KeyServiceSettings
from medcloud_operator.builders.recordstore import bucket_policy, normalized_policy
from tests.operator_support import (
    GROUP,
    OPERATOR_NAMESPACE,
    REPO,
    SA_GROUPS,
    VERSION,
    ClusterAdmin,
    Json,
    RunningOperator,
    audit_lines,
    audit_writes,
    condition,
    hospital_spec,
    is_ready,
    raw,
    run_operator,
    sample,
    storage_env,
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster

KEYSERVICE_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:medcloud-keyservice"
AUDIENCE = "medcloud-keyservice"
REFRESH_SECONDS = 2.0

# The operator reads its settings each time it starts. Test modules are all
# imported (collected) before any test starts an operator, so setting it here
# makes the RecordStore timer tick every two seconds for every operator of the run.
os.environ.setdefault("MEDCLOUD_RECORDSTORE_REFRESH_SECONDS", str(REFRESH_SECONDS))


# --------------------------------------------------------------------------- helpers


def secret_values(secret: Json) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def store_spec(**spec: Any) -> Json:
    """A RecordStore's spec: documents kept a day in governance mode, with ``spec`` on top."""
    return {"recordClass": "documents", "retention": {"mode": "GOVERNANCE", "period": "1d"}, **spec}


class Cluster(ClusterAdmin):
    """Admin access to the cluster under test."""

    def hospital(self, name: str) -> Json | None:
        return self.get("Hospital", name)

    def store(self, namespace: str, name: str) -> Json | None:
        return self.get("RecordStore", name, namespace)

    def patch_store(self, namespace: str, name: str, patch: Json) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "recordstores", name, patch, _content_type="application/merge-patch+json"
        )

    def secret(self, namespace: str, name: str) -> Json | None:
        return raw(self.core.read_namespaced_secret, name, namespace)

    def ring(self, namespace: str, store: str) -> Json:
        secret = self.secret(OPERATOR_NAMESPACE, f"keys-{StoreNames.of(namespace, store).bucket}")
        assert secret is not None
        return json.loads(base64.b64decode(secret["data"]["keyring.json"]))  # type: ignore[no-any-return]


@dataclass
class PrivateMinio:
    """This module's own MinIO server: root access, and stop/start on the same port and data."""

    servers: LocalCluster
    info: MinioInfo

    @property
    def url(self) -> str:
        return f"http://{self.info.endpoint}"

    @property
    def data_dir(self) -> Path:
        return self.servers.state_dir / "minio-data"

    @property
    def process(self) -> ServerProcess:
        return next(p for p in self.servers.processes if p.name == "minio")

    def root(self) -> Minio:
        return Minio(self.info.endpoint, self.info.access_key, self.info.secret_key, secure=False)

    def admin(self) -> MinioAdmin:
        return MinioAdmin(
            endpoint=self.info.endpoint,
            credentials=StaticProvider(self.info.access_key, self.info.secret_key),
            secure=False,
        )

    def as_store(self, access: StoreAccess) -> Minio:
        return Minio(self.info.endpoint, access.access_key, access.secret_key, secure=False)

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        # Same command line, so the same port, data directory and root credentials.
        self.process.start()
        self.process.wait_ready(lambda: _ready(self.url), 90)


def _ready(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/minio/health/ready", timeout=2) as response:  # noqa: S310 - loopback
        return bool(response.status == 200)


def raw_objects(root: Minio, bucket: str) -> dict[tuple[str, str], tuple[str, bytes]]:
    """Every object version exactly as stored: (name, version id) -> (etag, bytes)."""
    out = {}
    for obj in root.list_objects(bucket, recursive=True, include_version=True):
        if obj.is_delete_marker:
            continue
        response = root.get_object(bucket, obj.object_name, version_id=obj.version_id)
        try:
            out[(obj.object_name, obj.version_id)] = (obj.etag, response.read())
        finally:
            response.close()
            response.release_conn()
    return out


def refused(call: Callable[[], Any]) -> str:
    """The S3 error code a request by a store's user ends with; fails if it succeeds."""
    with pytest.raises(S3Error) as excinfo:
        call()
    return str(excinfo.value.code)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(k8s_api_client: client.ApiClient, crds: None) -> Cluster:
    return Cluster(k8s_api_client)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMinio]:
    servers = LocalCluster(
        tmp_path_factory.mktemp("recordstore-minio"), ClusterOptions(with_kubernetes=False, with_broker=False)
    )
    state = servers.start()
    assert state.minio is not None
    try:
        yield PrivateMinio(servers, state.minio)
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def operator(store_operator_kubeconfig: Path, storage: PrivateMinio) -> Iterator[RunningOperator]:
    """The whole operator with this module's MinIO as RecordStore storage, for the module."""
    env = {
        **storage_env(storage.info),
        "MEDCLOUD_RECORDSTORE_RETRY_MAX_SECONDS": "2",
        "MEDCLOUD_RECORDSTORE_REFRESH_SECONDS": str(REFRESH_SECONDS),
    }
    with run_operator(store_operator_kubeconfig, env) as running:
        yield running


class Tenants:
    """Hospitals and RecordStores made by the tests; all deleted (stores first) when the module ends."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.hospitals: list[str] = []
        self.stores: list[tuple[str, str]] = []

    def hospital(self, prefix: str = "h") -> str:
        """A new Hospital, Ready with its KEK; returns its tenant namespace."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.cluster.create("Hospital", name, hospital_spec(name))
        self.hospitals.append(name)

        def ready() -> bool:
            hospital = self.cluster.hospital(name)
            cond = condition(hospital, "Ready")
            return bool(cond and cond["status"] == "True" and (hospital or {})["status"].get("kek"))

        wait_for(ready, f"Hospital {name} to be Ready")
        return f"hospital-{name}"

    def store(self, namespace: str, prefix: str = "rs", **spec: Any) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.cluster.create("RecordStore", name, store_spec(**spec), namespace)
        self.stores.append((namespace, name))
        return name

    def recreate(self, namespace: str, name: str, **spec: Any) -> None:
        self.cluster.create("RecordStore", name, store_spec(**spec), namespace)

    def delete_store(self, namespace: str, name: str) -> None:
        self.cluster.delete("RecordStore", name, namespace)
        wait_for(lambda: self.cluster.store(namespace, name) is None, f"RecordStore {name} to be deleted", 120)

    def cleanup(self) -> None:
        for namespace, name in self.stores:
            self.delete_store(namespace, name)
        for name in self.hospitals:
            self.cluster.delete("Hospital", name)
        for name in self.hospitals:
            wait_for(partial(self.cluster.gone, "Hospital", name), f"Hospital {name} to be deleted", 180)


@pytest.fixture(scope="module")
def tenants(cluster: Cluster, operator: RunningOperator) -> Iterator[Tenants]:
    made = Tenants(cluster)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="module")
def hospital(tenants: Tenants) -> str:
    """A hospital namespace shared by the tests that do not rotate its KEK."""
    return tenants.hospital("riverton")


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> Json:
    def ready() -> Json | None:
        store = cluster.store(namespace, name)
        return store if is_ready(store) and ((store or {}).get("status") or {}).get("phase") == "Ready" else None

    return wait_for(ready, f"RecordStore {namespace}/{name} to be Ready", timeout)


def wait_status(cluster: Cluster, namespace: str, name: str, what: str, test: Callable[[Json], bool]) -> Json:
    def probe() -> Json | None:
        store = cluster.store(namespace, name)
        return store if store and test(store.get("status") or {}) else None

    return wait_for(probe, f"RecordStore {name}: {what}", 60)


def records_for(cluster: Cluster, namespace: str, store: str) -> RecordClient:
    """A record client with the store's own credentials and its keys read as a cluster admin (dev path)."""
    access = store_access(cluster.api, namespace, store)
    return open_client(access, direct_key_provider(cluster.api, namespace, store, OPERATOR_NAMESPACE))


# --------------------------------------------------------------------------- provisioning


def test_a_record_store_becomes_ready_with_bucket_user_policy_and_secret(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    name = tenants.store(
        hospital, "inpatient", recordClass="emr", retention={"mode": "COMPLIANCE", "period": "30y"}, quota="5Gi"
    )
    names = StoreNames.of(hospital, name)
    status = wait_ready(cluster, hospital, name)["status"]
    assert status["bucket"] == names.bucket
    assert status["endpoint"] == storage.url
    assert status["secretRef"] == {"name": f"{name}-credentials"}
    assert status["retention"] == {"mode": "COMPLIANCE", "period": "30y"}
    assert (status["keyVersion"], status["kekVersion"], status["observedRotateNow"]) == (1, 1, 0)
    assert datetime.fromisoformat(status["keyRotatedAt"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert status["usage"] == {"bytes": 0, "objects": 0, "objectsOnOlderKeys": 0}
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]} == {
        "StorageAvailable": ("True", "Reconciled"),
        "CredentialsReady": ("True", "Reconciled"),
        "KeysReady": ("True", "Reconciled"),
        "Ready": ("True", "Reconciled"),
    }

    # The bucket, as MinIO's root sees it.
    root, admin = storage.root(), storage.admin()
    assert root.get_bucket_versioning(names.bucket).status == "Enabled"
    lock = root.get_object_lock_config(names.bucket)
    assert (lock.mode, lock.duration, lock.duration_unit) == ("COMPLIANCE", 30, "Years")
    assert json.loads(admin.bucket_quota_get(names.bucket))["quota"] == 5 * 2**30
    tags = root.get_bucket_tags(names.bucket)
    assert tags is not None
    assert dict(tags) == names.owner_tags()
    # Its user and policy: that bucket and nothing else.
    user = json.loads(admin.user_info(names.user))
    assert user["status"] == "enabled"
    assert user["policyName"] == names.policy
    stored_policy = json.loads(admin.policy_info(names.policy))
    assert normalized_policy(stored_policy) == normalized_policy(bucket_policy(names.bucket))

    # The credentials Secret in the hospital namespace, in both conventions.
    secret = cluster.secret(hospital, f"{name}-credentials")
    assert secret is not None
    values = secret_values(secret)
    assert values["COSI_S3_ENDPOINT"] == storage.url
    assert values["COSI_S3_BUCKET_ID"] == values["BUCKET_NAME"] == names.bucket
    assert values["COSI_S3_ACCESS_KEY_ID"] == values["AWS_ACCESS_KEY_ID"] == names.user
    assert values["COSI_S3_ACCESS_SECRET_KEY"] == values["AWS_SECRET_ACCESS_KEY"]
    assert len(values["AWS_SECRET_ACCESS_KEY"]) == 40
    assert values["COSI_S3_REGION"] == "us-east-1"
    assert (values["BUCKET_HOST"], values["BUCKET_PORT"]) == ("127.0.0.1", str(storage.info.port))
    access = store_access(cluster.api, hospital, name)
    own = storage.as_store(access)
    own.put_object(names.bucket, "probe", io.BytesIO(b"ciphertext only, really"), 23)
    assert [o.object_name for o in own.list_objects(names.bucket)] == ["probe"]

    # The keys live in the operator namespace only; no key reaches status or events.
    ring = cluster.ring(hospital, name)
    assert (ring["hospital"], ring["store"], ring["currentVersion"]) == (names.hospital, name, 1)
    tenant_types = {s.type for s in cluster.core.list_namespaced_secret(hospital).items}
    assert not tenant_types & {"medcloud.io/keyring", "medcloud.io/kek"}
    data_key = direct_key_provider(cluster.api, hospital, name).data_key(1)
    seen = json.dumps(cluster.store(hospital, name)) + json.dumps(cluster.events_about("RecordStore", name, hospital))
    for spelling in (base64.b64encode(data_key).decode(), data_key.hex()):
        assert spelling not in seen
    for reason in ("BucketProvisioned", "CredentialsIssued", "KeysCreated", "Ready"):
        assert cluster.has_event("RecordStore", name, reason, hospital), reason


def test_a_reconcile_with_nothing_to_change_writes_nothing(
    cluster: Cluster,
    storage: PrivateMinio,
    tenants: Tenants,
    hospital: str,
    operator: RunningOperator,
    local_cluster: Any,
) -> None:
    name = tenants.store(hospital, "idle")
    names = StoreNames.of(hospital, name)
    wait_ready(cluster, hospital, name)
    admin = storage.admin()
    wait_for(lambda: cluster.has_event("RecordStore", name, "Ready", hospital), "the Ready event")
    audit_log = getattr(local_cluster, "audit_log", None)
    mark = audit_lines(audit_log) if audit_log is not None else 0

    def state() -> tuple[Any, ...]:
        return (
            cluster.store(hospital, name)["metadata"]["resourceVersion"],
            cluster.secret(hospital, names.secret)["metadata"]["resourceVersion"],
            cluster.secret(OPERATOR_NAMESPACE, f"keys-{names.bucket}")["metadata"]["resourceVersion"],
            admin.user_info(names.user),  # carries updatedAt
            # MinIO lists a policy's actions in no fixed order: compare what they mean.
            normalized_policy(json.loads(admin.policy_info(names.policy))),
        )

    def reconciles() -> float:
        return sample(operator.metrics(), "medcloud_reconcile_total", kind="RecordStore", result="success")

    before = state()
    done = reconciles()
    wait_for(lambda: reconciles() >= done + 3, "three timer reconciles", timeout=60)
    assert state() == before
    if audit_log is not None:
        # This store, its Secrets and its Events (named after it); other stores may change meanwhile.
        ours = (name, f"keys-{names.bucket}")
        writes = [w for w in audit_writes(audit_log, mark) if w["objectRef"].get("name", "").startswith(ours)]
        assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


def test_drifted_credentials_are_put_back_and_the_secret_key_is_kept(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    name = tenants.store(hospital, "drift")
    names = StoreNames.of(hospital, name)
    wait_ready(cluster, hospital, name)
    first = store_access(cluster.api, hospital, name)

    # An extra policy attached by hand is detached; the secret key stays the one issued.
    storage.admin().attach_policy(["readwrite"], user=names.user)
    wait_for(
        lambda: json.loads(storage.admin().user_info(names.user))["policyName"] == names.policy,
        "the hand-attached policy to be detached",
    )
    assert store_access(cluster.api, hospital, name).secret_key == first.secret_key

    # A deleted Secret is written again with a new key, and MinIO's user follows it.
    cluster.core.delete_namespaced_secret(names.secret, hospital)
    wait_for(lambda: cluster.secret(hospital, names.secret), "the Secret to be written again")
    second = store_access(cluster.api, hospital, name)
    assert second.secret_key != first.secret_key
    wait_for(lambda: storage.as_store(second).bucket_exists(names.bucket), "the new key to work")
    assert refused(lambda: storage.as_store(first).bucket_exists(names.bucket)) in (
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidAccessKeyId",
    )
    wait_for(lambda: cluster.has_event("RecordStore", name, "CredentialsIssued", hospital), "an Event saying so")


def test_a_store_outside_a_hospital_namespace_fails_with_a_reason(
    cluster: Cluster, tenants: Tenants, namespace: str
) -> None:
    name = tenants.store(namespace, "stray")
    try:
        store = wait_status(cluster, namespace, name, "Failed", lambda s: s.get("phase") == "Failed")
        ready = condition(store, "Ready")
        assert ready is not None
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "hospital" in ready["message"]
    finally:
        # Before the namespace fixture removes the namespace under it.
        tenants.delete_store(namespace, name)
        tenants.stores.remove((namespace, name))


def test_a_store_in_a_hospital_namespace_without_its_hospital_fails_saying_why(
    cluster: Cluster, tenants: Tenants
) -> None:
    namespace = f"hospital-ghost-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": namespace}})
    name = tenants.store(namespace, "orphan")
    try:
        store = wait_status(cluster, namespace, name, "Failed", lambda s: s.get("phase") == "Failed")
        keys = condition(store, "KeysReady")
        assert keys is not None
        assert (keys["status"], keys["reason"]) == ("False", "HospitalMissing")
        assert f"No Hospital {namespace.removeprefix('hospital-')} exists" in keys["message"]
    finally:
        tenants.delete_store(namespace, name)
        tenants.stores.remove((namespace, name))
        cluster.core.delete_namespace(namespace)


# --------------------------------------------------------------------------- isolation and confidentiality


def test_one_stores_credentials_are_refused_on_another_stores_bucket(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    other_hospital = tenants.hospital("eastgate")
    mine, theirs = tenants.store(hospital, "mine"), tenants.store(other_hospital, "theirs")
    neighbour = tenants.store(hospital, "neighbour")
    for namespace, name in ((hospital, mine), (other_hospital, theirs), (hospital, neighbour)):
        wait_ready(cluster, namespace, name)
    a = store_access(cluster.api, hospital, mine)
    b = store_access(cluster.api, other_hospital, theirs)
    c = store_access(cluster.api, hospital, neighbour)
    s3_a, s3_b = storage.as_store(a), storage.as_store(b)
    s3_b.put_object(b.bucket, "theirs.bin", io.BytesIO(b"b" * 10), 10)
    s3_a.put_object(a.bucket, "mine.bin", io.BytesIO(b"a" * 10), 10)

    for target in (b.bucket, c.bucket):
        assert refused(partial(s3_a.put_object, target, "intruder", io.BytesIO(b"x"), 1)) == "AccessDenied"
        assert refused(partial(list, s3_a.list_objects(target))) == "AccessDenied"
    assert refused(lambda: s3_a.get_object(b.bucket, "theirs.bin")) == "AccessDenied"
    assert refused(lambda: s3_a.stat_object(b.bucket, "theirs.bin")) in ("AccessDenied", "Forbidden")
    assert refused(lambda: s3_a.remove_object(b.bucket, "theirs.bin")) == "AccessDenied"
    assert refused(lambda: s3_b.get_object(a.bucket, "mine.bin")) == "AccessDenied"
    # MinIO answers a bucket listing with what the user may see: its own bucket only.
    assert [bucket.name for bucket in s3_a.list_buckets()] == [a.bucket]
    # Nor may a store's user loosen its own bucket's protection.
    assert refused(lambda: s3_a.delete_bucket_tags(a.bucket)) == "AccessDenied"
    assert refused(lambda: s3_a.remove_bucket(a.bucket)) == "AccessDenied"


def test_no_plaintext_reaches_storage(cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str) -> None:
    name = tenants.store(hospital, "plain", recordClass="emr")
    wait_ready(cluster, hospital, name)
    records = records_for(cluster, hospital, name)
    marker = f"MEDCLOUD-PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    observation = {
        "resourceType": "Observation",
        "id": "bp-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "note": [{"text": marker}],
    }
    records.put_fhir(observation)
    records.put("notes/short", marker.encode())
    records.put("scans/large", (marker.encode() + b"\n") * 40_000)  # ~2.6 MiB, three segments
    assert records.get_json("fhir/Observation/bp-1.json") == observation
    assert records.get_bytes("notes/short") == marker.encode()

    bucket = StoreNames.of(hospital, name).bucket
    stored = raw_objects(storage.root(), bucket)
    assert len(stored) == 3
    for (object_name, _), (_, body) in stored.items():
        assert marker.encode() not in body, object_name
        assert body[:4] == b"MCRE"
    for obj in storage.root().list_objects(bucket, recursive=True, include_user_meta=True):
        assert marker not in json.dumps(obj.metadata or {})
    # And on MinIO's disks themselves.
    for path in storage.data_dir.rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- rotation


def test_records_survive_data_key_and_kek_rotation_and_status_counts_them(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants
) -> None:
    namespace = tenants.hospital("rotating")
    hospital_name = namespace.removeprefix("hospital-")
    name = tenants.store(namespace, "labs")
    wait_ready(cluster, namespace, name)
    bucket = StoreNames.of(namespace, name).bucket
    written: dict[str, bytes] = {}

    def put(record: str) -> int:
        written[record] = f"lab result {record} {uuid.uuid4()}".encode()
        info = records_for(cluster, namespace, name).put(record, written[record])
        assert info.key_version is not None
        return info.key_version

    def usage_is(objects: int, older: int) -> Callable[[Json], bool]:
        def test(status: Json) -> bool:
            usage = status.get("usage") or {}
            return usage.get("objects") == objects and usage.get("objectsOnOlderKeys") == older

        return test

    assert put("r1") == put("r2") == 1
    store = wait_status(cluster, namespace, name, "2 objects counted", usage_is(2, 0))
    stored_bytes = sum(len(body) for _, body in raw_objects(storage.root(), bucket).values())
    assert store["status"]["usage"]["bytes"] == stored_bytes

    # Data-key rotation on demand: a new version for new writes, the old ones stay readable.
    cluster.patch_store(namespace, name, {"spec": {"keyRotation": {"rotateNow": 1}}})
    store = wait_status(cluster, namespace, name, "key version 2", lambda s: s.get("keyVersion") == 2)
    assert store["status"]["observedRotateNow"] == 1
    assert store["status"]["kekVersion"] == 1
    wait_status(cluster, namespace, name, "2 objects on the older key", usage_is(2, 2))
    assert put("r3") == 2
    wait_status(cluster, namespace, name, "3 objects, 2 on older keys", usage_is(3, 2))
    assert cluster.has_event("RecordStore", name, "KeyRotated", namespace)

    # A second store of the same hospital, with a record of its own, re-wraps too.
    other = tenants.store(namespace, "imaging")
    wait_ready(cluster, namespace, other)
    other_record = f"image {uuid.uuid4()}".encode()
    records_for(cluster, namespace, other).put("x1", other_record)

    # KEK rotation on demand, through the Hospital: a second KEK version becomes current.
    before = raw_objects(storage.root(), bucket)
    old_ring = cluster.ring(namespace, name)
    kek_secret = cluster.secret(OPERATOR_NAMESPACE, f"kek-{hospital_name}")
    assert kek_secret is not None
    old_kek = base64.b64decode(kek_secret["data"]["v1"])
    cluster.custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        "hospitals",
        hospital_name,
        {"spec": {"keyRotation": {"rotateNow": 1}}},
        _content_type="application/merge-patch+json",
    )

    def kek_rotated() -> Json | None:
        found = cluster.hospital(hospital_name)
        return found if ((found or {}).get("status") or {}).get("kek", {}).get("version") == 2 else None

    hospital = wait_for(kek_rotated, "the hospital's KEK version 2")
    assert hospital["status"]["kek"]["observedRotateNow"] == 1
    kek_secret = cluster.secret(OPERATOR_NAMESPACE, f"kek-{hospital_name}")
    assert kek_secret is not None
    new_kek = base64.b64decode(kek_secret["data"]["v2"])
    assert base64.b64decode(kek_secret["data"]["v1"]) == old_kek, "the old KEK version is kept"
    store = wait_status(cluster, namespace, name, "KEK version 2", lambda s: s.get("kekVersion") == 2)
    assert store["status"]["keyVersion"] == 2, "a KEK rotation is not a data-key rotation"
    assert cluster.has_event("RecordStore", name, "KeysRewrapped", namespace)
    ring = cluster.ring(namespace, name)
    assert ring["kekVersion"] == 2
    assert [k["version"] for k in ring["dataKeys"]] == [1, 2]
    assert [k["wrapped"] for k in ring["dataKeys"]] != [k["wrapped"] for k in old_ring["dataKeys"]]
    # The data keys are the same, wrapped anew: the old KEK opens the old ring, only the new KEK the new one.
    assert KeyRing.from_dict(old_ring, kek=old_kek).data_key(1) == KeyRing.from_dict(ring, kek=new_kek).data_key(1)
    with pytest.raises(KeyUnwrapError):
        KeyRing.from_dict({**ring, "kekVersion": 1}, kek=old_kek)
    # No record payload was touched.
    assert raw_objects(storage.root(), bucket) == before

    cluster.patch_store(namespace, name, {"spec": {"keyRotation": {"rotateNow": 2}}})
    wait_status(cluster, namespace, name, "key version 3", lambda s: s.get("keyVersion") == 3)
    assert put("r4") == 3
    store = wait_status(cluster, namespace, name, "4 objects, 3 on older keys", usage_is(4, 3))
    assert store["status"]["kekVersion"] == 2

    records = records_for(cluster, namespace, name)
    for record, body in written.items():
        assert records.get_bytes(record) == body
    assert {info.name: info.key_version for info in records.list()} == {"r1": 1, "r2": 1, "r3": 2, "r4": 3}

    # Every store of the hospital re-wrapped: the other one too, and its record reads back.
    wait_status(cluster, namespace, other, "KEK version 2", lambda s: s.get("kekVersion") == 2)
    assert cluster.ring(namespace, other)["kekVersion"] == 2
    assert records_for(cluster, namespace, other).get_bytes("x1") == other_record


# --------------------------------------------------------------------------- availability and retention


def test_minio_stopped_and_restarted_degrades_then_recovers_without_losing_records(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    name = tenants.store(hospital, "outage")
    wait_ready(cluster, hospital, name)
    records = records_for(cluster, hospital, name)
    bodies = {f"r{i}": os.urandom(1000 + i) for i in range(5)}
    for record, body in bodies.items():
        records.put(record, body)

    storage.stop()
    try:

        def degraded(status: Json) -> bool:
            available = condition({"status": status}, "StorageAvailable") or {}
            return status.get("phase") == "Degraded" and available.get("reason") == "StorageUnavailable"

        store = wait_status(cluster, hospital, name, "Degraded", degraded)
        available = condition(store, "StorageAvailable")
        ready = condition(store, "Ready")
        assert available is not None
        assert ready is not None
        assert available["status"] == "False"
        assert "MinIO is unavailable" in available["message"]
        assert "127.0.0.1" in available["message"] or "Connection" in available["message"]
        assert (ready["status"], ready["reason"]) == ("False", "StorageUnavailable")
        wait_for(
            lambda: cluster.has_event("RecordStore", name, "StorageUnavailable", hospital, "Warning"), "a Warning event"
        )
    finally:
        storage.start()

    wait_ready(cluster, hospital, name)
    records = records_for(cluster, hospital, name)
    for record, body in bodies.items():
        assert records.get_bytes(record) == body
    assert sorted(info.name for info in records.list()) == sorted(bodies)


def test_a_locked_record_cannot_be_deleted_before_its_retention_ends(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    name = tenants.store(hospital, "locked", retention={"mode": "COMPLIANCE", "period": "1d"})
    wait_ready(cluster, hospital, name)
    records = records_for(cluster, hospital, name)
    info = records.put("discharge-summary", b"discharged in good health")
    bucket = StoreNames.of(hospital, name).bucket
    retention = storage.root().get_object_retention(bucket, "discharge-summary", version_id=info.version_id)
    assert retention is not None
    assert retention.mode == "COMPLIANCE"
    assert retention.retain_until_date > datetime.now(UTC) + timedelta(hours=23)

    own = storage.as_store(store_access(cluster.api, hospital, name))
    for s3 in (own, storage.root()):
        refused(partial(s3.remove_object, bucket, "discharge-summary", version_id=info.version_id))
    # A plain delete only hides the record behind a delete marker; the locked version stays.
    records.delete("discharge-summary")
    assert records.get_bytes("discharge-summary", version_id=info.version_id) == b"discharged in good health"


# --------------------------------------------------------------------------- deletion


def test_shred_destroys_the_keys_and_says_so(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    name = tenants.store(hospital, "scratch", deletionPolicy="Shred")
    wait_ready(cluster, hospital, name)
    names = StoreNames.of(hospital, name)
    records = records_for(cluster, hospital, name)
    records.put("a", b"short-lived record")
    records.put("b", os.urandom(3000))
    access = store_access(cluster.api, hospital, name)

    tenants.delete_store(hospital, name)
    tenants.stores.remove((hospital, name))
    wait_for(
        lambda: cluster.has_event("RecordStore", name, "KeysShredded", hospital, "Warning"), "a Warning event saying so"
    )
    ring = cluster.ring(hospital, name)
    assert ring["dataKeys"] == []
    assert ring["shreddedAt"]
    # The ciphertext stays (object lock) but can never be decrypted again.
    assert len(raw_objects(storage.root(), names.bucket)) == 2
    keys = direct_key_provider(cluster.api, hospital, name, OPERATOR_NAMESPACE)
    with pytest.raises(KeyShreddedError):
        keys.data_key(1)
    leftovers = RecordClient(storage.root(), names.bucket, keys)
    with pytest.raises(KeyShreddedError):
        leftovers.get_bytes("a")
    # Access is gone too.
    assert cluster.secret(hospital, names.secret) is None
    assert refused(lambda: storage.as_store(access).bucket_exists(names.bucket)) == "InvalidAccessKeyId"

    # A new store of the same name is not quietly given fresh keys beside the old bucket.
    tenants.recreate(hospital, name)
    try:
        store = wait_status(
            cluster,
            hospital,
            name,
            "KeysShredded",
            lambda s: (condition({"status": s}, "KeysReady") or {}).get("reason") == "KeysShredded",
        )
        assert (condition(store, "Ready") or {})["status"] == "False"
    finally:
        tenants.delete_store(hospital, name)


def test_retain_keeps_bucket_and_keys_for_a_store_of_the_same_name(
    cluster: Cluster, storage: PrivateMinio, tenants: Tenants, hospital: str
) -> None:
    name = tenants.store(hospital, "archive")
    wait_ready(cluster, hospital, name)
    names = StoreNames.of(hospital, name)
    records_for(cluster, hospital, name).put("old-record", b"kept for decades")
    ring_before = cluster.ring(hospital, name)
    first = store_access(cluster.api, hospital, name)

    tenants.delete_store(hospital, name)
    wait_for(lambda: cluster.has_event("RecordStore", name, "Retained", hospital), "an Event saying what was kept")
    assert cluster.ring(hospital, name) == ring_before
    assert cluster.secret(hospital, names.secret) is None
    assert refused(lambda: storage.as_store(first).bucket_exists(names.bucket)) == "InvalidAccessKeyId"
    assert len(raw_objects(storage.root(), names.bucket)) == 1

    tenants.recreate(hospital, name)
    status = wait_ready(cluster, hospital, name)["status"]
    assert status["bucket"] == names.bucket
    assert status["keyVersion"] == 1
    assert records_for(cluster, hospital, name).get_bytes("old-record") == b"kept for decades"


# --------------------------------------------------------------------------- key service


@dataclass
class KeyService:
    url: str
    cluster: Cluster

    def token(self, namespace: str, account: str, audience: str = AUDIENCE) -> str:
        """A real service account token (TokenRequest), by default for the key service's audience."""
        with contextlib.suppress(ApiException):
            self.cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        request = {"spec": {"audiences": [audience], "expirationSeconds": 600}}
        return str(self.cluster.core.create_namespaced_service_account_token(account, namespace, request).status.token)

    def grant(self, namespace: str, account: str, store: str) -> None:
        """RBAC: ``get`` on ``recordstores/keys`` of one store for one service account."""
        role = f"keys-{store}-{account}"
        self.cluster.rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": role},
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "resources": ["recordstores/keys"],
                        "resourceNames": [store],
                        "verbs": ["get"],
                    }
                ],
            },
        )
        self.cluster.rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )


@pytest.fixture(scope="module")
def key_service(local_cluster: Any, cluster: Cluster, operator: RunningOperator) -> Iterator[KeyService]:
    """The key service in a thread, as its own identity with deploy/keyservice-rbac.yaml."""
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "keyservice-rbac.yaml"))
    kubeconfig = local_cluster.kubeconfig_for_user(KEYSERVICE_USER, SA_GROUPS)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    settings = KeyServiceSettings(operator_namespace=OPERATOR_NAMESPACE, audience=AUDIENCE)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, api), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the key service to listen", timeout=30)
    try:
        yield KeyService(f"http://127.0.0.1:{port}", cluster)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        api.close()


def _audit_lines_of(caplog: pytest.LogCaptureFixture) -> list[Json]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "medcloud_keyservice.audit"]


def test_the_key_service_unwraps_for_authorised_callers_only_and_audits_each(
    cluster: Cluster, tenants: Tenants, hospital: str, key_service: KeyService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="medcloud_keyservice.audit")
    name, other = tenants.store(hospital, "shared"), tenants.store(hospital, "other")
    wait_ready(cluster, hospital, name)
    wait_ready(cluster, hospital, other)
    key_service.grant(hospital, "emr-app", name)
    reader = key_service.token(hospital, "emr-app")
    stranger = key_service.token(hospital, "billing-app")
    path = f"/v1/namespaces/{hospital}/recordstores/{name}/keys/current"

    with httpx.Client(base_url=key_service.url) as http:
        granted = http.get(path, headers={"Authorization": f"Bearer {reader}"})
        assert granted.status_code == 200, granted.text
        assert granted.headers["cache-control"] == "no-store"
        body = granted.json()
        expected = direct_key_provider(cluster.api, hospital, name).data_key(1)
        assert (body["hospital"], body["store"], body["version"], body["kekVersion"]) == (
            hospital.removeprefix("hospital-"),
            name,
            1,
            1,
        )
        assert base64.b64decode(body["key"]) == expected

        assert http.get(path).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        api_token = key_service.token(hospital, "emr-app", audience=cluster.api.configuration.host)
        assert http.get(path, headers={"Authorization": f"Bearer {api_token}"}).status_code == 401, (
            "a token for another audience must not be replayable here"
        )
        assert http.get(path, headers={"Authorization": f"Bearer {stranger}"}).status_code == 403
        other_path = f"/v1/namespaces/{hospital}/recordstores/{other}/keys/current"
        assert http.get(other_path, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        missing = path.replace("/current", "/9")
        assert http.get(missing, headers={"Authorization": f"Bearer {reader}"}).status_code == 404

    # The record client over the key service: a round trip with keys it never stored.
    access = store_access(cluster.api, hospital, name)
    with HttpKeyProvider(key_service.url, hospital, name, token=reader) as keys:
        records = open_client(access, keys)
        records.put("visit/1", b"seen by the key service's client")
        assert records.get_bytes("visit/1") == b"seen by the key service's client"
        assert reader not in repr(keys)
    with HttpKeyProvider(key_service.url, hospital, name, token=stranger) as keys, pytest.raises(KeyAccessDeniedError):
        open_client(access, keys).get_bytes("visit/1")

    lines = _audit_lines_of(caplog)
    results = [(line["user"], line["recordStore"], line["result"]) for line in lines]
    reader_user = f"system:serviceaccount:{hospital}:emr-app"
    stranger_user = f"system:serviceaccount:{hospital}:billing-app"
    assert (reader_user, name, "granted") in results
    assert (stranger_user, name, "denied") in results
    assert (None, name, "unauthenticated") in results
    assert (reader_user, other, "denied") in results
    assert (reader_user, name, "not-found") in results
    granted_line = next(line for line in lines if line["result"] == "granted")
    assert (granted_line["keyVersion"], granted_line["kekVersion"], granted_line["namespace"]) == (1, 1, hospital)
    everything_logged = "\n".join(r.getMessage() for r in caplog.records)
    for spelling in (base64.b64encode(expected).decode(), expected.hex(), reader):
        assert spelling not in everything_logged


def test_the_key_service_cross_tenant_matrix_and_every_request_is_audited(
    cluster: Cluster, tenants: Tenants, hospital: str, key_service: KeyService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="medcloud_keyservice.audit")
    other_hospital = tenants.hospital("northgate")
    mine, theirs = tenants.store(hospital, "mine"), tenants.store(other_hospital, "theirs")
    wait_ready(cluster, hospital, mine)
    wait_ready(cluster, other_hospital, theirs)
    key_service.grant(hospital, "reader-a", mine)
    key_service.grant(other_hospital, "reader-b", theirs)
    reader_a, reader_b = key_service.token(hospital, "reader-a"), key_service.token(other_hospital, "reader-b")
    # A's reader presenting a token of an account of the same name in B's namespace is another identity.
    namesake = key_service.token(other_hospital, "reader-a")
    keys = "/v1/namespaces/{}/recordstores/{}/keys/{}"
    matrix = [
        (reader_a, keys.format(hospital, mine, "current"), 200),
        (reader_a, keys.format(other_hospital, theirs, "current"), 403),
        (reader_a, keys.format(other_hospital, theirs, "1"), 403),
        (reader_a, keys.format(other_hospital, mine, "current"), 403),
        (reader_b, keys.format(hospital, mine, "current"), 403),
        (reader_b, keys.format(other_hospital, theirs, "current"), 200),
        (namesake, keys.format(hospital, mine, "current"), 403),
        (namesake, keys.format(other_hospital, theirs, "current"), 403),
        (reader_a, keys.format(hospital, "Bad_Name", "current"), 422),
        (reader_a, keys.format(hospital, mine, "0"), 422),
        (reader_a, keys.format("kube-system", mine, "current"), 403),
    ]

    with httpx.Client(base_url=key_service.url) as http:
        for token, path, expected in matrix:
            response = http.get(path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == expected, (path, response.text)
            if expected != 200:
                assert "key" not in response.json(), path

    lines = _audit_lines_of(caplog)
    assert len(lines) == len(matrix), "every request, refused or not, is one audit line"
    assert [line["result"] for line in lines].count("granted") == 2


def test_a_shredded_store_gets_410_from_the_key_service(
    cluster: Cluster, tenants: Tenants, hospital: str, key_service: KeyService
) -> None:
    name = tenants.store(hospital, "gone", deletionPolicy="Shred")
    wait_ready(cluster, hospital, name)
    key_service.grant(hospital, "gone-app", name)
    token = key_service.token(hospital, "gone-app")
    path = f"/v1/namespaces/{hospital}/recordstores/{name}/keys/current"
    assert httpx.get(key_service.url + path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    tenants.delete_store(hospital, name)
    tenants.stores.remove((hospital, name))
    assert httpx.get(key_service.url + path, headers={"Authorization": f"Bearer {token}"}).status_code == 410


# --------------------------------------------------------------------------- CLI


def test_records_cli_puts_lists_and_gets_with_either_key_source(
    cluster: Cluster,
    local_cluster: Any,
    tenants: Tenants,
    hospital: str,
    key_service: KeyService,
    tmp_path: Path,
) -> None:
    name = tenants.store(hospital, "cli")
    wait_ready(cluster, hospital, name)
    key_service.grant(hospital, "cli-app", name)
    token = key_service.token(hospital, "cli-app")
    source = tmp_path / "report.pdf"
    source.write_bytes(os.urandom(300_000))
    admin = ["-n", hospital, "--kubeconfig", str(local_cluster.kubeconfig)]
    runner = CliRunner()

    put = runner.invoke(medcloud_cli, ["records", "put", name, "reports/1", str(source), *admin, "--direct-keys"])
    assert put.exit_code == 0, put.output
    assert "key version 1" in put.output
    via_service = ["--key-service", key_service.url, "--token", token]
    put2 = runner.invoke(medcloud_cli, ["records", "put", name, "reports/2", str(source), *admin, *via_service])
    assert put2.exit_code == 0, put2.output

    listing = runner.invoke(medcloud_cli, ["records", "ls", name, *admin])
    assert listing.exit_code == 0, listing.output
    rows = [line.split("\t") for line in listing.output.splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [("reports/1", "300000", "key 1"), ("reports/2", "300000", "key 1")]

    for record, extra in (("reports/1", via_service), ("reports/2", ["--direct-keys"])):
        target = tmp_path / record.replace("/", "-")
        got = runner.invoke(medcloud_cli, ["records", "get", name, record, str(target), *admin, *extra])
        assert got.exit_code == 0, got.output
        assert target.read_bytes() == source.read_bytes()

    # A batch record, as the device gateway writes them: one resource out of it by id.
    batch = tmp_path / "batch.ndjson"
    batch.write_text("".join(json.dumps({"resourceType": "Observation", "id": f"o-{n}"}) + "\n" for n in range(3)))
    ndjson = ["--content-type", "application/fhir+ndjson"]
    put3 = runner.invoke(
        medcloud_cli, ["records", "put", name, "fhir/Observation/b.ndjson", str(batch), *admin, *ndjson, *via_service]
    )
    assert put3.exit_code == 0, put3.output
    one = runner.invoke(
        medcloud_cli,
        ["records", "get", name, "fhir/Observation/b.ndjson", "-", "--resource", "o-1", *admin, *via_service],
    )
    assert one.exit_code == 0, one.output
    assert json.loads(one.output) == {"resourceType": "Observation", "id": "o-1"}
    absent = runner.invoke(
        medcloud_cli,
        ["records", "get", name, "fhir/Observation/b.ndjson", "-", "--resource", "o-9", *admin, *via_service],
    )
    assert _one_line_error(absent) == "error: record fhir/Observation/b.ndjson holds no resource 'o-9'"

    stranger = key_service.token(hospital, "not-granted")
    refused_args = [*admin, "--key-service", key_service.url, "--token", stranger]
    denied = runner.invoke(medcloud_cli, ["records", "get", name, "reports/1", str(tmp_path / "x"), *refused_args])
    assert denied.exit_code == 1
    assert "403" in denied.output
    assert not (tmp_path / "x").exists()


def _one_line_error(result: Any, exit_code: int = 1) -> str:
    """A failed CLI run: exit 1 (or ``exit_code``), and one line of error, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return str(lines[0])


def test_records_cli_failures_are_one_clear_line_and_a_nonzero_exit(
    cluster: Cluster,
    local_cluster: Any,
    storage: PrivateMinio,
    tenants: Tenants,
    hospital: str,
    tmp_path: Path,
) -> None:
    name = tenants.store(hospital, "cli-errors")
    wait_ready(cluster, hospital, name)
    admin = ["-n", hospital, "--kubeconfig", str(local_cluster.kubeconfig), "--direct-keys"]
    runner = CliRunner()
    source = tmp_path / "visit.txt"
    source.write_bytes(b"not a real visit")

    never = runner.invoke(medcloud_cli, ["records", "get", name, "visits/never-written", "-", *admin])
    assert "no record visits/never-written" in _one_line_error(never)

    no_store = runner.invoke(medcloud_cli, ["records", "ls", "no-such-store", *admin[:4]])
    assert "RecordStore" in _one_line_error(no_store)

    storage.stop()
    try:
        down = runner.invoke(medcloud_cli, ["records", "put", name, "visits/1", str(source), *admin])
        # MinIO down: worth retrying, so EX_TEMPFAIL rather than 1.
        assert "cannot reach the store" in _one_line_error(down, EXIT_RETRYABLE)
        listing = runner.invoke(medcloud_cli, ["records", "ls", name, *admin[:4]])
        assert "cannot reach the store" in _one_line_error(listing, EXIT_RETRYABLE)
    finally:
        storage.start()
