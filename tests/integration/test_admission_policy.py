"""deploy/tenant-admission-policy.yaml against the real API server: a tenant admin cannot use the key grants.

The hospital namespace here is labelled as the operator labels it, and its
admin holds exactly the Role the operator writes (``admin_rules()``), so each
refusal below is the policy's and not RBAC's: the same requests without the
policy succeed (the control cases, and every case before the policy existed).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from medcloud.tenancy import labels
from medcloud_operator.builders.hospital import admin_rules
from tests.operator_support import OPERATOR_USER, REPO, SA_GROUPS, Json
from tests.support import wait_for

pytestmark = pytest.mark.cluster

POLICY = REPO / "deploy" / "tenant-admission-policy.yaml"
RUN = uuid.uuid4().hex[:6]
NAMESPACE = f"hospital-vap-{RUN}"
ADMIN = f"carol-{RUN}@hospital"
KEY_HOLDER = "emr-reader"
KEY_AUDIENCE = "medcloud-keyservice"


def outcome(call: Callable[[], Any]) -> tuple[int, str]:
    """(HTTP status, message) of a request; 201 when it succeeds."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status), str(exc.body)
    return 201, ""


def pod_spec(audience: str | None) -> Json:
    """A pod that passes Pod Security restricted, running as the key-holding account."""
    token: Json = {"path": "token", "expirationSeconds": 600}
    if audience is not None:
        token["audience"] = audience
    return {
        "serviceAccountName": KEY_HOLDER,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "reader",
                "image": "registry.invalid/reader:1",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}},
                "volumeMounts": [{"name": "keys-token", "mountPath": "/var/run/keys"}],
            }
        ],
        "volumes": [{"name": "keys-token", "projected": {"sources": [{"serviceAccountToken": token}]}}],
    }


def pod(name: str, audience: str | None) -> Json:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec(audience)}


def deployment(name: str, audience: str | None) -> Json:
    selector = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod_spec(audience)},
        },
    }


def cron_job(name: str, audience: str | None) -> Json:
    template = {"spec": {"restartPolicy": "Never", **pod_spec(audience)}}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}},
    }


def legacy_token_secret(name: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": KEY_HOLDER}},
        "type": "kubernetes.io/service-account-token",
    }


class Identity:
    """One identity's clients."""

    def __init__(self, kubeconfig: Path) -> None:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)

    def create(self, body: Json, dry_run: bool = False) -> tuple[int, str]:
        kind, extra = body["kind"], {"dry_run": "All"} if dry_run else {}
        create = {
            "Pod": self.core.create_namespaced_pod,
            "Secret": self.core.create_namespaced_secret,
            "Deployment": self.apps.create_namespaced_deployment,
            "CronJob": self.batch.create_namespaced_cron_job,
        }[kind]
        return outcome(lambda: create(NAMESPACE, copy.deepcopy(body), **extra))


@pytest.fixture(scope="module")
def tenant(local_cluster: Any, k8s_api_client: client.ApiClient, operator_rbac: None) -> Iterator[None]:
    """A hospital namespace with a key-holding service account, its admin, and the policies installed."""
    core, rbac = client.CoreV1Api(k8s_api_client), client.RbacAuthorizationV1Api(k8s_api_client)
    core.create_namespace(
        {
            "metadata": {
                "name": NAMESPACE,
                "labels": {
                    labels.HOSPITAL: f"vap-{RUN}",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            }
        }
    )
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": KEY_HOLDER}})
    keys_rule = {"apiGroups": ["medcloud.io"], "resources": ["recordstores/keys"], "verbs": ["get"]}
    grants = (("emr-keys", [keys_rule], KEY_HOLDER), ("hospital-admin", admin_rules(), None))
    for name, rules, account in grants:
        rbac.create_namespaced_role(NAMESPACE, {"metadata": {"name": name}, "rules": rules})
        subject = (
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
            if account
            else {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": ADMIN}
        )
        rbac.create_namespaced_role_binding(
            NAMESPACE,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [subject],
            },
        )
    local_cluster.kubectl("apply", "-f", str(POLICY))
    try:
        yield
    finally:
        local_cluster.kubectl("delete", "-f", str(POLICY), "--ignore-not-found")
        core.delete_namespace(NAMESPACE)


@pytest.fixture(scope="module")
def admin(local_cluster: Any, tenant: None) -> Identity:
    identity = Identity(local_cluster.kubeconfig_for_user(ADMIN))
    # The API server compiles a new policy in the background: wait until it refuses (a dry run writes nothing).
    wait_for(
        lambda: identity.create(legacy_token_secret("probe"), dry_run=True)[0] == 403,
        "the admission policies to take effect",
    )
    return identity


@pytest.mark.parametrize(
    "make",
    [pod, deployment, cron_job],
    ids=["pod", "deployment", "cronjob"],
)
def test_a_tenant_admin_cannot_run_a_workload_with_a_key_service_token(
    admin: Identity, make: Callable[[str, str | None], Json]
) -> None:
    name = f"steal-{uuid.uuid4().hex[:6]}"

    status, message = admin.create(make(name, KEY_AUDIENCE))

    assert status == 403, message
    assert "only the MedCloud operator's workloads may mount a service account token" in message
    # The control: the same workload with the API server's own audience is the admin's to run.
    assert admin.create(make(f"{name}-own", None)) == (201, "")


def test_a_tenant_admin_cannot_create_a_legacy_service_account_token_secret(admin: Identity) -> None:
    status, message = admin.create(legacy_token_secret(f"steal-{RUN}"))

    assert status == 403, message
    assert "service-account-token Secrets are not allowed in a hospital namespace" in message
    opaque = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"own-{RUN}"}, "stringData": {"k": "v"}}
    assert admin.create(opaque) == (201, "")


def test_the_operator_may_run_its_workloads_with_key_service_tokens(
    local_cluster: Any, admin: Identity, k8s_api_client: client.ApiClient
) -> None:
    operator = Identity(local_cluster.kubeconfig_for_user(OPERATOR_USER, SA_GROUPS))
    name = f"app-{RUN}"

    assert operator.create(deployment(name, KEY_AUDIENCE)) == (201, "")

    # Its pods come from the ReplicaSet controller, which the policy lets through for the operator's Deployment.
    core = client.CoreV1Api(k8s_api_client)
    wait_for(
        lambda: core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items,
        "the operator's Deployment to get its pod",
    )
