"""The operator provisions a Consortium's exchange: against the real API server (pods on KWOK) and MinIO.

The operator runs in-process as its own identity (deploy/operator-rbac.yaml and
deploy/recordstore-operator-rbac.yaml only). What is checked is what the operator
writes: the audit bucket (COMPLIANCE) and its least-privilege user, the blind-index
key Secret (made once, never in status), the Deployment, Service and ServiceAccount,
and ExchangeReady. Whether a real pod's /readyz passes is the real-node tests' area;
here the pods run on KWOK nodes, which report them ready.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import S3Error
from minio.objectlockconfig import DAYS

from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_operator.handlers.appinstance import EXCHANGE_RECHECK_SECONDS
from tests.exchange_harness import exchange_operator_env
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    ClusterAdmin,
    Json,
    RunningOperator,
    audit_lines,
    audit_writes,
    condition,
    hospital_spec,
    raw,
    run_operator,
    sample,
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster

CONSORTIUM = f"ex-prov-{uuid.uuid4().hex[:6]}"
ACCOUNT = f"medcloud-exchange-{CONSORTIUM}"
BUCKET = f"medcloud-exchange-audit-{CONSORTIUM}"
DATABASE_SECRET = f"exchange-{CONSORTIUM}-app"
SPEC = {"displayName": "Provisioning test alliance", "leadHospital": "nowhere-a", "members": ["nowhere-a"]}


@pytest.fixture(scope="module")
def operator(store_operator_kubeconfig: Path, minio_server: MinioInfo) -> Iterator[RunningOperator]:
    """The operator with MinIO and a key service URL, so it deploys exchanges; audit kept for a day."""
    with run_operator(store_operator_kubeconfig, exchange_operator_env(minio_server), timeout=120) as running:
        yield running


@pytest.fixture(scope="module")
def admin(k8s_api_client: client.ApiClient, crds: None) -> ClusterAdmin:
    return ClusterAdmin(k8s_api_client)


@pytest.fixture(scope="module")
def consortium(admin: ClusterAdmin, operator: RunningOperator) -> Iterator[str]:
    admin.create("Consortium", CONSORTIUM, SPEC)
    try:
        yield CONSORTIUM
    finally:
        admin.delete("Consortium", CONSORTIUM)
        raw(admin.core.delete_namespaced_secret, DATABASE_SECRET, OPERATOR_NAMESPACE)


def exchange_condition(admin: ClusterAdmin) -> Json | None:
    return condition(admin.get("Consortium", CONSORTIUM), "ExchangeReady")


def reason_is(admin: ClusterAdmin, reason: str) -> Json | None:
    found = exchange_condition(admin)
    return found if found and found["reason"] == reason else None


def secret_data(admin: ClusterAdmin, name: str) -> dict[str, bytes]:
    secret = raw(admin.core.read_namespaced_secret, name, OPERATOR_NAMESPACE) or {}
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def reconciled(operator: RunningOperator, count: float) -> bool:
    return sample(operator.metrics(), "medcloud_reconcile_total", kind="Consortium", result="success") >= count


def test_without_a_database_secret_the_audit_store_and_key_exist_and_the_reason_says_what_is_missing(
    admin: ClusterAdmin, consortium: str, minio_server: MinioInfo
) -> None:
    found = wait_for(lambda: reason_is(admin, "DatabaseSecretMissing"), "DatabaseSecretMissing", 60)
    assert found["status"] == "False"
    assert DATABASE_SECRET in found["message"]
    assert raw(admin.apps.read_namespaced_deployment, ACCOUNT, OPERATOR_NAMESPACE) is None, "no pod without a DB"

    root = Minio(minio_server.endpoint, minio_server.access_key, minio_server.secret_key, secure=minio_server.secure)
    lock = root.get_object_lock_config(BUCKET)
    assert (lock.mode, lock.duration, lock.duration_unit) == (COMPLIANCE, 1, DAYS)

    audit = secret_data(admin, f"{ACCOUNT}-audit")
    user = Minio(
        minio_server.endpoint,
        audit["accessKey"].decode(),
        audit["secretKey"].decode(),
        secure=minio_server.secure,
    )
    written = user.put_object(BUCKET, "probe/event.json", io.BytesIO(b"{}"), 2)
    assert [o.object_name for o in user.list_objects(BUCKET, prefix="probe/")] == ["probe/event.json"]
    with pytest.raises(S3Error) as refused:
        user.remove_object(BUCKET, "probe/event.json", version_id=written.version_id)
    assert refused.value.code == "AccessDenied"
    with pytest.raises(S3Error):
        user.list_objects(BUCKET + "-other").__next__()

    key = secret_data(admin, f"{ACCOUNT}-blind-index")["key"]
    assert len(base64.b64decode(key)) == 32
    status_text = json.dumps(admin.get("Consortium", CONSORTIUM)["status"])
    assert key.decode() not in status_text
    assert audit["secretKey"].decode() not in status_text


APP = "referrals"
APP_DEPLOYMENT = f"app-{APP}"


@pytest.fixture(scope="module")
def member(admin: ClusterAdmin, consortium: str) -> Iterator[str]:
    """A Hospital of the consortium running an exchange-client app, made before the exchange has an endpoint."""
    name = f"ex-prov-h-{uuid.uuid4().hex[:6]}"
    namespace = f"hospital-{name}"
    admin.create("Hospital", name, hospital_spec(name, consortium=consortium))
    try:
        wait_for(lambda: (condition(admin.get("Hospital", name), "Ready") or {}).get("status") == "True", name, 120)
        store = {"recordClass": "device-data", "retention": {"mode": "GOVERNANCE", "period": "1d"}}
        admin.create("RecordStore", "records", store, namespace)
        admin.create("AppInstance", APP, {"app": APP, "version": "1.0.0", "recordStore": "records"}, namespace)
        yield namespace
    finally:
        admin.delete("AppInstance", APP, namespace)
        admin.delete("RecordStore", "records", namespace)
        admin.delete("Hospital", name)
        wait_for(lambda: admin.get("Hospital", name) is None, f"Hospital {name} gone", 180)


def app_ready(admin: ClusterAdmin, namespace: str) -> Json | None:
    return condition(admin.get("AppInstance", APP, namespace), "Ready")


def test_an_app_of_a_consortium_with_no_exchange_endpoint_yet_gets_no_deployment_and_says_why(
    admin: ClusterAdmin, member: str
) -> None:
    ready = wait_for(
        lambda: (found := app_ready(admin, member)) and found["reason"] == "ExchangeNotReady" and found,
        "the app Ready=False ExchangeNotReady",
        60,
    )
    assert ready["status"] == "False"
    assert f"Consortium {CONSORTIUM}" in ready["message"]
    assert admin.get("AppInstance", APP, member)["status"]["phase"] != "Failed"
    # Nothing its pods could crash-loop in: no Deployment at all.
    assert raw(admin.apps.read_namespaced_deployment, APP_DEPLOYMENT, member) is None
    time.sleep(EXCHANGE_RECHECK_SECONDS + 1)
    assert raw(admin.apps.read_namespaced_deployment, APP_DEPLOYMENT, member) is None, "a re-check found no exchange"


def test_with_the_database_secret_the_exchange_is_deployed_and_reports_ready(
    admin: ClusterAdmin, consortium: str
) -> None:
    key_before = secret_data(admin, f"{ACCOUNT}-blind-index")["key"]
    admin.core.create_namespaced_secret(
        OPERATOR_NAMESPACE,
        {
            "metadata": {"name": DATABASE_SECRET},
            "stringData": {"uri": "postgresql://app:pw@exchange-rw.medcloud-system.svc:5432/app"},
        },
    )
    # A Secret is not watched (the operator never lists Secrets): a spec change brings the next reconcile.
    admin.custom.patch_cluster_custom_object(
        "medcloud.io",
        "v1alpha1",
        "consortia",
        CONSORTIUM,
        {"spec": {"displayName": "Provisioning test alliance (with a database)"}},
        _content_type="application/merge-patch+json",
    )
    deployment = wait_for(
        lambda: raw(admin.apps.read_namespaced_deployment, ACCOUNT, OPERATOR_NAMESPACE), "the Deployment", 60
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["exchange"]
    assert container["image"] == "registry.test.example/medcloud:0.0.1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == ACCOUNT
    env = {e["name"]: e for e in container["env"]}
    assert env["MEDCLOUD_EXCHANGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": DATABASE_SECRET, "key": "uri"}
    assert env["MEDCLOUD_EXCHANGE_AUDIT_BUCKET"]["value"] == BUCKET
    assert "value" not in env["MEDCLOUD_EXCHANGE_BLIND_INDEX_KEY"], "keys come from Secrets, never inline"
    (token,) = [v for v in pod["volumes"] if "projected" in v]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "medcloud-keyservice"
    # Applied in one reconcile, after the Deployment.
    wait_for(lambda: raw(admin.core.read_namespaced_service, ACCOUNT, OPERATOR_NAMESPACE), "the Service", 30)
    assert raw(admin.core.read_namespaced_service_account, ACCOUNT, OPERATOR_NAMESPACE) is not None

    found = wait_for(lambda: reason_is(admin, "ExchangeServing"), "ExchangeReady True on KWOK", 120)
    assert found["status"] == "True"
    status = admin.get("Consortium", CONSORTIUM)["status"]
    assert status["exchange"]["endpoint"] == f"http://{ACCOUNT}.{OPERATOR_NAMESPACE}.svc/fhir"
    assert status["exchange"]["auditBucket"] == BUCKET
    assert secret_data(admin, f"{ACCOUNT}-blind-index")["key"] == key_before, "the key is made once"


def test_the_waiting_app_starts_once_the_consortium_names_its_exchange(admin: ClusterAdmin, member: str) -> None:
    deployment = wait_for(
        lambda: raw(admin.apps.read_namespaced_deployment, APP_DEPLOYMENT, member),
        "the app's Deployment once the exchange has an endpoint",
        EXCHANGE_RECHECK_SECONDS * 6,
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEDCLOUD_EXCHANGE_URL"] == f"http://{ACCOUNT}.{OPERATOR_NAMESPACE}.svc"
    wait_for(lambda: (app_ready(admin, member) or {}).get("status") == "True", "the app Ready", 120)


def test_a_reconcile_with_nothing_changed_writes_nothing(
    admin: ClusterAdmin, consortium: str, local_cluster: Any, operator: RunningOperator
) -> None:
    wait_for(lambda: reason_is(admin, "ExchangeServing"), "ExchangeReady True", 120)

    def quiet_for_two_seconds() -> bool:
        writes = sample(operator.metrics(), "medcloud_api_writes_total")
        time.sleep(2)
        return sample(operator.metrics(), "medcloud_api_writes_total") == writes

    wait_for(quiet_for_two_seconds, "the operator to settle")
    audit_log: Path | None = getattr(local_cluster, "audit_log", None)
    mark = audit_lines(audit_log) if audit_log is not None else 0
    writes = sample(operator.metrics(), "medcloud_api_writes_total")
    before = sample(operator.metrics(), "medcloud_reconcile_total", kind="Consortium", result="success")
    for i in range(2):
        # A foreign change to the exchange's Deployment, touching nothing the operator owns, reconciles it.
        admin.apps.patch_namespaced_deployment(
            ACCOUNT,
            OPERATOR_NAMESPACE,
            {"metadata": {"annotations": {"test.medcloud.io/touch": str(i)}}},
            _content_type="application/merge-patch+json",
        )
        wait_for(partial(reconciled, operator, before + i + 1), f"reconcile {i + 1}", 60)
    assert sample(operator.metrics(), "medcloud_api_writes_total") == writes
    if audit_log is not None:
        found = audit_writes(audit_log, mark)
        assert found == [], [(w["verb"], w["objectRef"]) for w in found]
