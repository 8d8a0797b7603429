"""The operator against the real local cluster: Hospitals become governed tenants and stay that way.

The operator runs in-process (Kopf's KopfRunner) as its own identity, bound
to nothing but the least-privilege RBAC in deploy/operator-rbac.yaml, so these
tests also prove that RBAC is enough. Tests talk to the API server as admin
through the kubernetes client's generated APIs, never through the operator's
own code.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.operator_support import (
    GROUP,
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
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
)
from tests.support import wait_for

pytestmark = pytest.mark.cluster

# What the tenancy binds the operator's identity to in each tenant namespace (defaults of OperatorSettings).
OPERATOR_BINDING = "medcloud-operator-tenant"
TENANT_SECRETS_ROLE = "medcloud-operator-tenant-secrets"
STORAGE_CIDR = "10.250.0.0/24"
STORAGE_PORT = 9000
# The operator's settings here: the Hospital handlers alone, no RecordStore storage.
TENANCY_ENV = {"MEDCLOUD_STORAGE_CIDRS": json.dumps([STORAGE_CIDR]), "MEDCLOUD_STORAGE_PORT": str(STORAGE_PORT)}


# --------------------------------------------------------------------------- helpers


def status_code(call: Callable[[], Any]) -> int:
    """The HTTP status a request ends with (200 when it succeeds)."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


class Cluster(ClusterAdmin):
    """Admin access to the cluster under test."""

    def hospital(self, name: str) -> Json | None:
        return self.get("Hospital", name)

    def patch_hospital(self, name: str, patch: Json) -> None:
        self.custom.patch_cluster_custom_object(
            GROUP, VERSION, "hospitals", name, patch, _content_type="application/merge-patch+json"
        )

    def namespace(self, name: str) -> Json | None:
        return raw(self.core.read_namespace, name)

    def network_policies(self, namespace: str) -> dict[str, Json]:
        items = raw(self.net.list_namespaced_network_policy, namespace) or {}
        return {p["metadata"]["name"]: p for p in items.get("items", [])}

    def kek_secret(self, hospital: str) -> Json | None:
        return raw(self.core.read_namespaced_secret, f"kek-{hospital}", OPERATOR_NAMESPACE)

    def touch_quota(self, namespace: str, value: str) -> None:
        """A write by someone else that changes nothing the operator owns: it triggers a reconcile."""
        self.core.patch_namespaced_resource_quota(
            "medcloud-quota",
            namespace,
            {"metadata": {"annotations": {"test.medcloud.io/touch": value}}},
            _content_type="application/merge-patch+json",
        )


def operator_may(cluster: Cluster, verb: str, namespace: str, name: str | None = None) -> bool:
    """Whether RBAC lets the operator's identity ``verb`` Secrets in ``namespace`` (a SubjectAccessReview)."""
    attributes: Json = {"verb": verb, "resource": "secrets", "namespace": namespace}
    if name is not None:
        attributes["name"] = name
    review = {"spec": {"user": OPERATOR_USER, "groups": list(SA_GROUPS), "resourceAttributes": attributes}}
    result = client.AuthorizationV1Api(cluster.api).create_subject_access_review(review)
    return bool(result.status.allowed)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(k8s_api_client: client.ApiClient, crds: None) -> Cluster:
    return Cluster(k8s_api_client)


@pytest.fixture
def operator(operator_kubeconfig: Path) -> Iterator[RunningOperator]:
    """The operator with deploy/operator-rbac.yaml alone, for one test."""
    with run_operator(operator_kubeconfig, TENANCY_ENV) as running:
        yield running


HospitalFactory = Callable[..., str]


@pytest.fixture
def hospitals(cluster: Cluster, operator: RunningOperator) -> Iterator[HospitalFactory]:
    """Create Hospitals (unique names); delete them, and wait until they are gone, afterwards."""
    created: list[str] = []

    def create(prefix: str = "h", **spec: Any) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        cluster.create("Hospital", name, hospital_spec(name, **spec))
        created.append(name)
        return name

    yield create
    for name in created:
        _delete_record_stores(cluster, f"hospital-{name}")
        cluster.delete("Hospital", name)
    for name in created:
        wait_for(gone(cluster, name), f"Hospital {name} to be deleted", timeout=120)


def gone(cluster: Cluster, name: str) -> Callable[[], bool]:
    return lambda: cluster.hospital(name) is None


def _delete_record_stores(cluster: Cluster, namespace: str) -> None:
    stores = raw(cluster.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "recordstores") or {}
    for store in stores.get("items", []):
        cluster.delete("RecordStore", store["metadata"]["name"], namespace)


def wait_ready(cluster: Cluster, name: str) -> Json:
    def ready() -> Json | None:
        hospital = cluster.hospital(name)
        return hospital if is_ready(hospital) else None

    return wait_for(ready, f"Hospital {name} to be Ready")


def wait_failed(cluster: Cluster, name: str) -> Json:
    def failed() -> Json | None:
        hospital = cluster.hospital(name)
        return hospital if (hospital or {}).get("status", {}).get("phase") == "Failed" else None

    return wait_for(failed, f"Hospital {name} to fail")


# --------------------------------------------------------------------------- tests


def test_a_hospital_becomes_ready_with_every_child_as_specified(cluster: Cluster, hospitals: HospitalFactory) -> None:
    name = hospitals(
        "riverton",
        consortium="east-alliance",
        admins={"users": ["li@riverton"], "groups": ["riverton-it"]},
        quota={"cpu": "4", "memory": "8Gi", "storage": "200Gi", "pods": 40},
    )
    ns = f"hospital-{name}"
    hospital = wait_ready(cluster, name)
    status = hospital["status"]
    assert status["phase"] == "Ready"
    assert status["namespace"] == ns
    assert status["kek"]["version"] == 1
    assert status["kek"]["createdAt"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "NamespaceReady": "True",
        "NetworkIsolated": "True",
        "KeyReady": "True",
        "Onboarded": "True",
        "Ready": "True",
    }

    namespace = cluster.namespace(ns)
    assert namespace is not None
    labels = namespace["metadata"]["labels"]
    assert labels["medcloud.io/hospital"] == name
    assert labels["medcloud.io/tier"] == "county"
    assert labels["medcloud.io/consortium"] == "east-alliance"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["app.kubernetes.io/managed-by"] == "medcloud-operator"

    quota = raw(cluster.core.read_namespaced_resource_quota, "medcloud-quota", ns)
    assert quota is not None
    assert quota["spec"]["hard"] == {
        "requests.cpu": "4",
        "requests.memory": "8Gi",
        "requests.storage": "200Gi",
        "pods": "40",
        "persistentvolumeclaims": "50",
    }
    limits = raw(cluster.core.read_namespaced_limit_range, "medcloud-limits", ns)
    assert limits is not None
    assert limits["spec"]["limits"][0]["default"] == {"cpu": "500m", "memory": "512Mi"}

    assert set(cluster.network_policies(ns)) == {
        "medcloud-default-deny",
        "medcloud-allow-same-namespace",
        "medcloud-allow-dns-egress",
        "medcloud-allow-record-storage-egress",
        "medcloud-allow-ingress-controller",
        "medcloud-allow-consortium-ingress",
        "medcloud-allow-consortium-egress",
    }
    binding = raw(cluster.rbac.read_namespaced_role_binding, "medcloud-hospital-admin", ns)
    assert binding is not None
    assert {(s["kind"], s["name"]) for s in binding["subjects"]} == {("User", "li@riverton"), ("Group", "riverton-it")}
    role = raw(cluster.rbac.read_namespaced_role, "medcloud-hospital-admin", ns)
    assert role is not None
    # The operator's own Secrets access, in this namespace only, through the tenancy.
    own = raw(cluster.rbac.read_namespaced_role_binding, OPERATOR_BINDING, ns)
    assert own is not None
    assert own["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": TENANT_SECRETS_ROLE,
    }
    assert own["subjects"] == [{"kind": "ServiceAccount", "name": "medcloud-operator", "namespace": OPERATOR_NAMESPACE}]
    for child in (quota, limits, binding, role, own):
        assert child["metadata"]["labels"]["medcloud.io/hospital"] == name
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "medcloud-operator"

    # The KEK: 256 bits, in the operator's namespace, never in the tenant's, never in status or events.
    secret = cluster.kek_secret(name)
    assert secret is not None
    material = secret["data"]["v1"]
    assert len(base64.b64decode(material)) == 32
    tenant_secrets = raw(cluster.core.list_namespaced_secret, ns) or {}
    assert not [s for s in tenant_secrets.get("items", []) if s["metadata"]["name"].startswith("kek-")]
    assert material not in json.dumps(hospital)
    quota_usage = wait_for(
        lambda: (cluster.hospital(name) or {}).get("status", {}).get("quotaUsage"), "quota usage in status"
    )
    assert quota_usage["pods"] == "0"

    def reported() -> list[Json] | None:
        found = cluster.events_about("Hospital", name)
        return found if {"KEKCreated", "Ready"} <= {e["reason"] for e in found} else None

    events = wait_for(reported, "Events about the Hospital")
    assert all(material not in json.dumps(e) for e in events)
    # The onboarding's one Ready Event says what it created; no Event of its own for that.
    (ready,) = [e for e in events if e["reason"] == "Ready"]
    assert f"Namespace {ns}" in ready["message"]
    assert "NetworkPolicy medcloud-default-deny" in ready["message"]
    assert "Created" not in {e["reason"] for e in events}


def test_the_operator_holds_secrets_in_tenant_namespaces_only_and_never_lists_them(
    cluster: Cluster, local_cluster: Any, hospitals: HospitalFactory
) -> None:
    """deploy/ grants no Secrets cluster-wide; the tenancy's RoleBinding grants them per tenant, by name."""
    # The RecordStore RBAC as well: together they are everything the operator is granted.
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "recordstore-operator-rbac.yaml"))
    try:
        name = hospitals("secrets")
        ns = f"hospital-{name}"
        wait_ready(cluster, name)
        wait_for(lambda: operator_may(cluster, "create", ns), "the tenancy's RoleBinding to take effect")
        for verb in ("get", "update", "patch", "delete"):
            assert operator_may(cluster, verb, ns, "emr-credentials"), verb
        for verb in ("list", "watch"):
            assert not operator_may(cluster, verb, ns), f"{verb} secrets in {ns}"
        for elsewhere in ("default", "kube-system", "hospital-not-onboarded"):
            for verb in ("get", "create", "list"):
                assert not operator_may(cluster, verb, elsewhere, "x" if verb != "list" else None), (verb, elsewhere)
        # In its own namespace: KEKs and key rings, by name.
        assert operator_may(cluster, "get", OPERATOR_NAMESPACE, f"kek-{name}")
        assert not operator_may(cluster, "list", OPERATOR_NAMESPACE)
        # The operator may bind that one ClusterRole, not any other (SubjectAccessReview on `bind`).
        review = partial(_may_bind, cluster, ns)
        assert review(TENANT_SECRETS_ROLE)
        assert not review("admin")
        assert not review("cluster-admin")
    finally:
        local_cluster.kubectl(
            "delete", "--ignore-not-found", "-f", str(REPO / "deploy" / "recordstore-operator-rbac.yaml"), check=False
        )


def _may_bind(cluster: Cluster, namespace: str, cluster_role: str) -> bool:
    attributes = {
        "verb": "bind",
        "group": "rbac.authorization.k8s.io",
        "resource": "clusterroles",
        "name": cluster_role,
        "namespace": namespace,
    }
    review = {"spec": {"user": OPERATOR_USER, "groups": list(SA_GROUPS), "resourceAttributes": attributes}}
    return bool(client.AuthorizationV1Api(cluster.api).create_subject_access_review(review).status.allowed)


def test_spec_changes_propagate(cluster: Cluster, hospitals: HospitalFactory) -> None:
    name = hospitals("change", consortium="east-alliance", admins={"users": ["li"]})
    ns = f"hospital-{name}"
    wait_ready(cluster, name)
    cluster.patch_hospital(
        name,
        {"spec": {"tier": "city", "consortium": None, "quota": {"cpu": "2"}, "admins": {"users": ["wang"]}}},
    )
    wait_ready(cluster, name)

    namespace = cluster.namespace(ns)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["medcloud.io/tier"] == "city"
    assert "medcloud.io/consortium" not in namespace["metadata"]["labels"]
    quota = raw(cluster.core.read_namespaced_resource_quota, "medcloud-quota", ns)
    assert quota is not None
    assert quota["spec"]["hard"]["requests.cpu"] == "2"
    binding = raw(cluster.rbac.read_namespaced_role_binding, "medcloud-hospital-admin", ns)
    assert binding is not None
    assert [s["name"] for s in binding["subjects"]] == ["wang"]
    policies = cluster.network_policies(ns)
    assert "medcloud-allow-consortium-ingress" not in policies
    assert "medcloud-allow-consortium-egress" not in policies

    cluster.patch_hospital(name, {"spec": {"admins": {"users": []}}})
    wait_for(
        lambda: raw(cluster.rbac.read_namespaced_role_binding, "medcloud-hospital-admin", ns) is None,
        "the admin binding to be removed when no admins remain",
    )


def test_children_edited_or_deleted_by_hand_are_put_back(
    cluster: Cluster, hospitals: HospitalFactory, operator: RunningOperator
) -> None:
    name = hospitals("drift", admins={"users": ["li"]})
    ns = f"hospital-{name}"
    wait_ready(cluster, name)
    repairs_before = sum(
        sample(operator.metrics(), "medcloud_drift_repairs_total", kind=k)
        for k in ("NetworkPolicy", "Role", "RoleBinding", "ResourceQuota", "Namespace")
    )

    # Open the default-deny policy to everything, and delete the DNS one.
    cluster.net.patch_namespaced_network_policy(
        "medcloud-default-deny", ns, {"spec": {"ingress": [{}]}}, _content_type="application/merge-patch+json"
    )
    cluster.net.delete_namespaced_network_policy("medcloud-allow-dns-egress", ns)
    # Escalate the admin Role, drop the binding, raise the quota, lift Pod Security.
    role = raw(cluster.rbac.read_namespaced_role, "medcloud-hospital-admin", ns)
    assert role is not None
    expected_rules = role["rules"]
    cluster.rbac.patch_namespaced_role(
        "medcloud-hospital-admin",
        ns,
        {"rules": [*expected_rules, {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
        _content_type="application/merge-patch+json",
    )
    cluster.rbac.delete_namespaced_role_binding("medcloud-hospital-admin", ns)
    # Point the operator's own binding at someone else (an identity that would gain its Secrets).
    cluster.rbac.patch_namespaced_role_binding(
        OPERATOR_BINDING,
        ns,
        {"subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]},
        _content_type="application/merge-patch+json",
    )
    cluster.core.patch_namespaced_resource_quota(
        "medcloud-quota", ns, {"spec": {"hard": {"pods": "100000"}}}, _content_type="application/merge-patch+json"
    )
    cluster.core.patch_namespace(
        ns,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
        _content_type="application/merge-patch+json",
    )

    def repaired() -> bool:
        policies = cluster.network_policies(ns)
        deny = policies.get("medcloud-default-deny", {}).get("spec", {})
        role_now = raw(cluster.rbac.read_namespaced_role, "medcloud-hospital-admin", ns) or {}
        quota = raw(cluster.core.read_namespaced_resource_quota, "medcloud-quota", ns) or {}
        namespace = cluster.namespace(ns) or {}
        own = raw(cluster.rbac.read_namespaced_role_binding, OPERATOR_BINDING, ns) or {}
        return (
            not deny.get("ingress")
            and "medcloud-allow-dns-egress" in policies
            and role_now.get("rules") == expected_rules
            and raw(cluster.rbac.read_namespaced_role_binding, "medcloud-hospital-admin", ns) is not None
            and [s["name"] for s in own.get("subjects", [])] == ["medcloud-operator"]
            and quota.get("spec", {}).get("hard", {}).get("pods") == "200"
            and namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
        )

    wait_for(repaired, "every hand-made change to be reverted")
    assert is_ready(cluster.hospital(name))

    # Counted once the repairing reconcile reports what it wrote, a moment after the last write.
    def repairs_counted() -> bool:
        repairs_after = sum(
            sample(operator.metrics(), "medcloud_drift_repairs_total", kind=k)
            for k in ("NetworkPolicy", "Role", "RoleBinding", "ResourceQuota", "Namespace")
        )
        return repairs_after - repairs_before >= 7

    wait_for(repairs_counted, "each of the seven repairs to be counted")

    # Deleted outright, it is put back too.
    cluster.rbac.delete_namespaced_role_binding(OPERATOR_BINDING, ns)
    wait_for(
        lambda: raw(cluster.rbac.read_namespaced_role_binding, OPERATOR_BINDING, ns) is not None,
        "the operator's binding to be put back",
    )
    assert "DriftRepaired" in {e["reason"] for e in cluster.events_about("Hospital", name)}


def test_hospital_admins_manage_their_own_namespace_only(
    cluster: Cluster, hospitals: HospitalFactory, local_cluster: Any
) -> None:
    a = hospitals("rbac-a", admins={"users": ["alice@a"]})
    b = hospitals("rbac-b", admins={"groups": ["b-admins"]})
    wait_ready(cluster, a)
    wait_ready(cluster, b)
    ns_a, ns_b = f"hospital-{a}", f"hospital-{b}"

    def as_user(kubeconfig: Path) -> client.CoreV1Api:
        return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

    alice = as_user(local_cluster.kubeconfig_for_user("alice@a"))
    bob = as_user(local_cluster.kubeconfig_for_user("bob@b", ("b-admins",)))
    nobody = as_user(local_cluster.user_kubeconfig)
    alice_net = client.NetworkingV1Api(alice.api_client)

    def configmap(api: client.CoreV1Api, ns: str) -> int:
        body = {"metadata": {"name": f"cm-{uuid.uuid4().hex[:6]}"}, "data": {"k": "v"}}
        return status_code(lambda: api.create_namespaced_config_map(ns, body))

    assert configmap(alice, ns_a) == 200
    assert status_code(lambda: alice.list_namespaced_secret(ns_a)) == 200
    assert configmap(bob, ns_b) == 200
    assert configmap(alice, ns_b) == 403
    assert configmap(bob, ns_a) == 403
    assert status_code(lambda: alice.list_namespaced_secret(ns_b)) == 403
    for ns in (ns_a, ns_b):
        assert configmap(nobody, ns) == 403
        assert status_code(partial(nobody.list_namespaced_secret, ns)) == 403
    # Admins cannot loosen their own isolation, read KEKs, or act cluster-wide.
    assert status_code(lambda: alice_net.delete_namespaced_network_policy("medcloud-default-deny", ns_a)) == 403
    assert status_code(lambda: alice.read_namespaced_secret(f"kek-{a}", OPERATOR_NAMESPACE)) == 403
    assert status_code(lambda: alice.list_namespace()) == 403
    assert status_code(lambda: alice.delete_namespace(ns_a)) == 403


def test_hospital_admins_read_their_own_hospital_object_and_no_other(
    cluster: Cluster, hospitals: HospitalFactory, local_cluster: Any
) -> None:
    """The Hospital is cluster-scoped: a ClusterRole naming it, bound to spec.admins, lets them get and watch it."""
    a = hospitals("read-a", admins={"users": ["carol@a"]})
    b = hospitals("read-b", admins={"groups": ["b-admins"]})
    wait_ready(cluster, a)
    wait_ready(cluster, b)
    access = f"medcloud:hospital:{a}:admin"

    def as_user(user: str, groups: tuple[str, ...] = ()) -> client.CustomObjectsApi:
        kubeconfig = local_cluster.kubeconfig_for_user(user, groups)
        return client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))

    def get(api: client.CustomObjectsApi, name: str) -> int:
        return status_code(lambda: api.get_cluster_custom_object(GROUP, VERSION, "hospitals", name))

    def watch(api: client.CustomObjectsApi, name: str) -> int:
        """A watch of the one Hospital (what `kubectl get --watch` and the API's progress stream ask for)."""

        def request() -> None:
            response: Any = api.list_cluster_custom_object(
                GROUP, VERSION, "hospitals", field_selector=f"metadata.name={name}", watch=True,
                timeout_seconds=1, _preload_content=False,
            )  # fmt: skip
            response.read()
            response.release_conn()

        return status_code(request)

    carol, dave, bob = as_user("carol@a"), as_user("dave@a"), as_user("bob@b", ("b-admins",))
    wait_for(lambda: get(carol, a) == 200, "carol (admin of A) to read Hospital A")
    assert watch(carol, a) == 200
    assert get(carol, b) == 403
    assert watch(carol, b) == 403
    assert status_code(lambda: carol.list_cluster_custom_object(GROUP, VERSION, "hospitals")) == 403
    quota = {"spec": {"quota": {"cpu": "64"}}}
    patch = partial(carol.patch_cluster_custom_object, GROUP, VERSION, "hospitals", a, quota)
    assert status_code(lambda: patch(_content_type="application/merge-patch+json")) == 403, "the quota is the city's"
    wait_for(lambda: get(bob, b) == 200, "bob (of group b-admins) to read Hospital B")
    assert get(bob, a) == 403
    assert get(dave, a) == 403

    role = raw(cluster.rbac.read_cluster_role, access)
    binding = raw(cluster.rbac.read_cluster_role_binding, access)
    assert role is not None
    assert binding is not None
    assert role["rules"] == [
        {"apiGroups": ["medcloud.io"], "resources": ["hospitals"], "resourceNames": [a], "verbs": ["get", "watch"]}
    ]
    uid = (cluster.hospital(a) or {})["metadata"]["uid"]
    for child in (role, binding):
        assert child["metadata"]["labels"]["medcloud.io/hospital"] == a
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "medcloud-operator"
        owners = child["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"]) for r in owners] == [("Hospital", a, uid)]
    assert binding["roleRef"]["name"] == access
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("User", "carol@a")]

    # The grant follows spec.admins.
    cluster.patch_hospital(a, {"spec": {"admins": {"users": ["dave@a"]}}})
    wait_for(lambda: get(dave, a) == 200 and get(carol, a) == 403, "the grant to move from carol to dave")
    moved = raw(cluster.rbac.read_cluster_role_binding, access) or {}
    assert [(s["kind"], s["name"]) for s in moved["subjects"]] == [("User", "dave@a")]

    # Widened or removed by hand, it is put back.
    cluster.rbac.patch_cluster_role(
        access,
        {"rules": [{"apiGroups": ["medcloud.io"], "resources": ["hospitals"], "verbs": ["get", "list", "watch"]}]},
        _content_type="application/merge-patch+json",
    )
    cluster.rbac.delete_cluster_role_binding(access)

    def reverted() -> bool:
        rules = (raw(cluster.rbac.read_cluster_role, access) or {}).get("rules")
        return rules == role["rules"] and raw(cluster.rbac.read_cluster_role_binding, access) is not None

    wait_for(reverted, "the hand-made changes to be reverted")
    wait_for(lambda: get(dave, a) == 200 and get(dave, b) == 403, "dave to read A again, and still not B")

    # No admins left: the binding goes (the role stays, bound to no one).
    cluster.patch_hospital(a, {"spec": {"admins": {"users": []}}})
    wait_for(lambda: raw(cluster.rbac.read_cluster_role_binding, access) is None, "the binding to be removed")
    assert raw(cluster.rbac.read_cluster_role, access) is not None
    wait_for(lambda: get(dave, a) == 403, "dave to lose Hospital A")

    # Offboarding removes both.
    cluster.patch_hospital(a, {"spec": {"admins": {"users": ["dave@a"]}}})
    wait_for(lambda: raw(cluster.rbac.read_cluster_role_binding, access) is not None, "the binding to be back")
    cluster.delete("Hospital", a)
    wait_for(gone(cluster, a), f"Hospital {a} to be deleted", timeout=120)
    assert raw(cluster.rbac.read_cluster_role, access) is None
    assert raw(cluster.rbac.read_cluster_role_binding, access) is None


# A small evaluator of the Kubernetes NetworkPolicy semantics the operator uses,
# so the test checks what the policies *allow*, not only how they are spelled.
# (The local cluster has no CNI to enforce them.)


@dataclass(frozen=True)
class Endpoint:
    namespace: str
    namespace_labels: dict[str, str]
    pod_labels: dict[str, str]
    ip: str | None = None


def _selector_matches(selector: Json, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and present and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Json, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return other.ip is not None and ipaddress.ip_address(other.ip) in ipaddress.ip_network(peer["ipBlock"]["cidr"])
    ns_ok = (
        _selector_matches(peer["namespaceSelector"], other.namespace_labels)
        if "namespaceSelector" in peer
        else other.namespace == policy_ns
    )
    pod_ok = _selector_matches(peer["podSelector"], other.pod_labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _ports_match(rule: Json, port: int, protocol: str) -> bool:
    ports = rule.get("ports") or []
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def _direction_allows(
    policies: list[Json], direction: str, me: Endpoint, other: Endpoint, port: int, protocol: str
) -> bool:
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if direction in p["spec"].get("policyTypes", []) and _selector_matches(p["spec"]["podSelector"], me.pod_labels)
    ]
    if not selecting:
        return True  # not isolated in this direction
    return any(
        _ports_match(rule, port, protocol)
        and (not rule.get(peers_key) or any(_peer_matches(peer, me.namespace, other) for peer in rule[peers_key]))
        for policy in selecting
        for rule in policy["spec"].get(rules_key) or []
    )


def test_network_policies_say_what_the_specs_say(cluster: Cluster, hospitals: HospitalFactory) -> None:
    a = hospitals("net-a", consortium="east")
    b = hospitals("net-b", consortium="east")
    d = hospitals("net-d", consortium="east", network={"allowConsortiumIngress": False})
    c = hospitals("net-c", network={"allowFromNamespaces": ["monitoring"]})
    for name in (a, b, c, d):
        wait_ready(cluster, name)

    policies = {name: list(cluster.network_policies(f"hospital-{name}").values()) for name in (a, b, c, d)}

    def pod_in(name: str) -> Endpoint:
        ns = cluster.namespace(f"hospital-{name}")
        assert ns is not None
        return Endpoint(f"hospital-{name}", ns["metadata"]["labels"], {"app": "emr"})

    def outside(namespace: str, pod_labels: dict[str, str] | None = None, ip: str | None = None) -> Endpoint:
        return Endpoint(namespace, {"kubernetes.io/metadata.name": namespace}, pod_labels or {}, ip)

    def allowed(src: Endpoint, dst: Endpoint, port: int = 8080, protocol: str = "TCP") -> bool:
        src_policies = policies.get(src.namespace.removeprefix("hospital-"), [])
        dst_policies = policies.get(dst.namespace.removeprefix("hospital-"), [])
        return _direction_allows(src_policies, "Egress", src, dst, port, protocol) and _direction_allows(
            dst_policies, "Ingress", dst, src, port, protocol
        )

    pa, pb, pc, pd = pod_in(a), pod_in(b), pod_in(c), pod_in(d)
    # Same namespace: allowed.
    assert allowed(pa, Endpoint(pa.namespace, pa.namespace_labels, {"app": "other"}))
    # Consortium members reach each other; hospitals outside do not, either way.
    assert allowed(pa, pb)
    assert allowed(pb, pa)
    assert not allowed(pa, pc)
    assert not allowed(pc, pa)
    # D takes no consortium traffic in, but may call out to members.
    assert not allowed(pa, pd)
    assert allowed(pd, pa)
    # The ingress controller reaches every tenant; an arbitrary namespace none,
    # except where the spec lists it.
    ingress = outside("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    for pod in (pa, pb, pc, pd):
        assert allowed(ingress, pod)
    monitoring = outside("monitoring")
    assert allowed(monitoring, pc)
    assert not allowed(monitoring, pa)
    # Egress: cluster DNS on port 53 only, the record storage endpoint on its port only.
    dns = outside("kube-system", {"k8s-app": "kube-dns"})
    assert allowed(pa, dns, 53, "UDP")
    assert allowed(pa, dns, 53, "TCP")
    assert not allowed(pa, dns, 443)
    assert not allowed(pa, outside("kube-system", {"component": "etcd"}), 53, "UDP")
    storage = outside("storage", ip="10.250.0.7")
    assert allowed(pa, storage, STORAGE_PORT)
    assert not allowed(pa, storage, 22)
    assert not allowed(pa, outside("internet", ip="8.8.8.8"), 443)


def test_onboarding_writes_the_hospitals_status_once_and_the_quota_controller_finds_nothing_to_add(
    cluster: Cluster, local_cluster: Any, hospitals: HospitalFactory, operator: RunningOperator
) -> None:
    """The Ready status already reports a new namespace's zero usage; the quota's first count costs no write."""
    audit_log = getattr(local_cluster, "audit_log", None)
    if audit_log is None:
        pytest.skip("needs the local cluster's audit log")
    mark = audit_lines(audit_log)
    skips = sample(operator.metrics(), "medcloud_settled_skips_total", kind="Hospital", trigger="quota-usage")
    name = hospitals("counted")
    ns = f"hospital-{name}"
    wait_ready(cluster, name)
    used = wait_for(
        lambda: (
            (raw(cluster.core.read_namespaced_resource_quota, "medcloud-quota", ns) or {}).get("status") or {}
        ).get("used"),
        "the quota controller's count of the new quota",
    )
    wait_for(
        lambda: (
            sample(operator.metrics(), "medcloud_settled_skips_total", kind="Hospital", trigger="quota-usage") > skips
        ),
        "the quota's count to reach the operator",
    )
    # As the quota controller wrote it, string for string.
    assert (cluster.hospital(name) or {})["status"]["quotaUsage"] == used
    status_writes = [
        w
        for w in audit_writes(audit_log, mark)
        if w["objectRef"].get("resource") == "hospitals"
        and w["objectRef"].get("subresource") == "status"
        and w["objectRef"].get("name") == name
    ]
    assert len(status_writes) == 1, [w["verb"] for w in status_writes]


# Quantities at the model's bounds must be stored exactly as written, or the
# operator would "correct" the ResourceQuota on every reconcile.
EXTREME_QUOTA = {"cpu": "100000", "memory": "1Ei", "storage": "1.5Gi"}


@pytest.mark.parametrize("quota", [None, EXTREME_QUOTA], ids=["default-quota", "extreme-quota"])
def test_an_idle_operator_writes_nothing(
    cluster: Cluster,
    local_cluster: Any,
    operator_kubeconfig: Path,
    hospitals: HospitalFactory,
    operator: RunningOperator,
    quota: dict[str, str] | None,
) -> None:
    audit_log = getattr(local_cluster, "audit_log", None)
    if audit_log is None:
        pytest.skip("needs the local cluster's audit log")
    extra = {} if quota is None else {"quota": quota}
    name = hospitals("idle", consortium="east", admins={"users": ["li"]}, **extra)
    ns = f"hospital-{name}"
    wait_ready(cluster, name)
    wait_for(lambda: (cluster.hospital(name) or {}).get("status", {}).get("quotaUsage"), "quota usage in status")

    # Settle: the first reconciles and the quota controller's status update are done
    # once the operator has sent no write for a while.
    def settled() -> bool:
        mark = audit_lines(audit_log)
        time.sleep(2)
        return not audit_writes(audit_log, mark)

    wait_for(settled, "the operator to settle")
    mark = audit_lines(audit_log)
    writes_before = operator.metrics()
    reconciles = sample(writes_before, "medcloud_reconcile_total", kind="Hospital", result="success")

    # Three reconciles with nothing to change: each is triggered by someone else's
    # write to a child that touches nothing the operator owns.
    def reconciled(count: float) -> Callable[[], bool]:
        return lambda: (
            sample(operator.metrics(), "medcloud_reconcile_total", kind="Hospital", result="success") >= count
        )

    for i in range(3):
        cluster.touch_quota(ns, str(i))
        wait_for(reconciled(reconciles + i + 1), f"reconcile {i + 1} after a foreign change")
    # A restarted operator finds the Hospital settled (Kopf's resume): it sends nothing and reconciles nothing.
    # (Both operators run in this process: their metrics are one registry, hence the difference.)
    skips = sample(operator.metrics(), "medcloud_settled_skips_total", kind="Hospital", trigger="resume")
    with run_operator(operator_kubeconfig, TENANCY_ENV) as second:
        wait_for(
            lambda: sample(second.metrics(), "medcloud_settled_skips_total", kind="Hospital", trigger="resume") > skips,
            "the restarted operator to find the Hospital settled",
        )

    writes = audit_writes(audit_log, mark)
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    assert sample(operator.metrics(), "medcloud_api_writes_total") == sample(writes_before, "medcloud_api_writes_total")


def test_deletion_is_refused_while_record_stores_exist(cluster: Cluster, hospitals: HospitalFactory) -> None:
    name = hospitals("offboard")
    ns = f"hospital-{name}"
    wait_ready(cluster, name)
    store = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecordStore",
        "metadata": {"name": "emr"},
        "spec": {"recordClass": "documents", "retention": {"mode": "GOVERNANCE", "period": "30d"}},
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "recordstores", store)
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "hospitals", name)

    def refused() -> Json | None:
        hospital = cluster.hospital(name)
        cond = condition(hospital, "Ready")
        return hospital if cond and cond["reason"] == "RecordStoresPresent" else None

    hospital = wait_for(refused, "the deletion to be refused")
    assert hospital["status"]["phase"] == "Terminating"
    assert "emr" in (condition(hospital, "Ready") or {})["message"]
    assert cluster.namespace(ns) is not None
    assert cluster.kek_secret(name) is not None
    wait_for(
        lambda: cluster.has_event("Hospital", name, "RecordStoresPresent", type_="Warning"),
        "a Warning event saying why",
    )

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "recordstores", "emr")
    wait_for(lambda: cluster.hospital(name) is None, "the Hospital to be deleted", timeout=120)
    assert cluster.namespace(ns) is None
    assert cluster.kek_secret(name) is None


def test_a_lost_kek_is_reported_and_never_silently_regenerated(cluster: Cluster, hospitals: HospitalFactory) -> None:
    name = hospitals("kek")
    ns = f"hospital-{name}"
    wait_ready(cluster, name)
    backup = cluster.kek_secret(name)
    assert backup is not None
    cluster.core.delete_namespaced_secret(f"kek-{name}", OPERATOR_NAMESPACE)
    cluster.touch_quota(ns, "after-kek-loss")

    def reported() -> Json | None:
        hospital = cluster.hospital(name)
        key = condition(hospital, "KeyReady")
        return hospital if key and key["reason"] == "KEKMissing" else None

    hospital = wait_for(reported, "the lost KEK to be reported")
    assert hospital["status"]["phase"] == "Degraded"
    assert (condition(hospital, "Ready") or {})["status"] == "False"
    assert cluster.kek_secret(name) is None, "a lost KEK must not be replaced behind the users' backs"

    # Restoring the Secret from backup heals the tenant with the same key.
    restored = {"metadata": {"name": backup["metadata"]["name"], "labels": backup["metadata"]["labels"]}}
    cluster.core.create_namespaced_secret(
        OPERATOR_NAMESPACE, {**restored, "type": backup["type"], "data": backup["data"]}
    )
    cluster.touch_quota(ns, "after-restore")
    hospital = wait_ready(cluster, name)
    assert hospital["status"]["kek"]["version"] == 1
    restored_secret = cluster.kek_secret(name)
    assert restored_secret is not None
    assert restored_secret["data"] == backup["data"]


def test_the_safety_net_finds_what_no_watch_reports(
    cluster: Cluster, hospitals: HospitalFactory, operator_kubeconfig: Path
) -> None:
    # A KEK Secret deleted by hand: the operator never watches Secrets, so only a full reconcile sees it.
    # With the full period equal to the tick, each tick reconciles every settled Hospital in full.
    name = hospitals("sweep")
    wait_ready(cluster, name)
    backup = cluster.kek_secret(name)
    assert backup is not None
    env = {**TENANCY_ENV, "MEDCLOUD_RESYNC_SECONDS": "1", "MEDCLOUD_FULL_RESYNC_SECONDS": "1"}
    with run_operator(operator_kubeconfig, env):
        cluster.core.delete_namespaced_secret(f"kek-{name}", OPERATOR_NAMESPACE)

        def reported() -> Json | None:
            hospital = cluster.hospital(name)
            key = condition(hospital, "KeyReady")
            return hospital if key and key["reason"] == "KEKMissing" else None

        wait_for(reported, "the safety net to find the KEK gone")
        restored = {"metadata": {"name": backup["metadata"]["name"], "labels": backup["metadata"]["labels"]}}
        cluster.core.create_namespaced_secret(
            OPERATOR_NAMESPACE, {**restored, "type": backup["type"], "data": backup["data"]}
        )
        wait_ready(cluster, name)


def test_an_unreadable_kek_secret_fails_the_hospital_and_deleting_it_heals(
    cluster: Cluster, operator_kubeconfig: Path
) -> None:
    name = f"kekbad-{uuid.uuid4().hex[:6]}"
    garbage = {"metadata": {"name": f"kek-{name}"}, "data": {"v1": base64.b64encode(b"short").decode()}}
    cluster.core.create_namespaced_secret(OPERATOR_NAMESPACE, garbage)
    cluster.create("Hospital", name, hospital_spec(name))
    # A short recheck keeps the test quick; the default is half a minute.
    with run_operator(operator_kubeconfig, {**TENANCY_ENV, "MEDCLOUD_KEK_RECHECK_SECONDS": "1"}):
        key = condition(wait_failed(cluster, name), "KeyReady")
        assert key is not None
        assert (key["status"], key["reason"]) == ("False", "KEKInvalid")
        assert "names no readable current KEK version" in key["message"]

        cluster.core.delete_namespaced_secret(f"kek-{name}", OPERATOR_NAMESPACE)
        healed = wait_ready(cluster, name)
        assert healed["status"]["kek"]["version"] == 1
        cluster.delete("Hospital", name)
        wait_for(gone(cluster, name), f"Hospital {name} to be deleted", timeout=120)


def test_kek_rotation_on_demand_adds_a_version_once_and_keeps_the_old_one(
    cluster: Cluster, hospitals: HospitalFactory
) -> None:
    name = hospitals("rotate")
    ns = f"hospital-{name}"
    first = wait_ready(cluster, name)["status"]["kek"]
    assert (first["version"], first["observedRotateNow"], first["versions"]) == (1, 0, [1])
    before = cluster.kek_secret(name)
    assert before is not None

    cluster.patch_hospital(name, {"spec": {"keyRotation": {"rotateNow": 1}}})

    def rotated() -> Json | None:
        hospital = cluster.hospital(name)
        kek = ((hospital or {}).get("status") or {}).get("kek") or {}
        return hospital if kek.get("observedRotateNow") == 1 and is_ready(hospital) else None

    hospital = wait_for(rotated, "the KEK rotation")
    kek = hospital["status"]["kek"]
    assert (kek["version"], kek["versions"]) == (2, [1, 2])
    assert kek["createdAt"] >= first["createdAt"]
    secret = cluster.kek_secret(name)
    assert secret is not None
    data = secret["data"]
    assert base64.b64decode(data["current-version"]) == b"2"
    assert len(base64.b64decode(data["v2"])) == 32
    assert data["v2"] != data["v1"]
    # Version 1 is kept byte for byte: stores not yet re-wrapped still need it.
    assert (data["v1"], data["v1-created-at"]) == (before["data"]["v1"], before["data"]["v1-created-at"])
    assert secret["metadata"]["annotations"]["medcloud.io/observed-rotate-now"] == "1"
    assert data["v2"] not in json.dumps(hospital)
    wait_for(
        lambda: "KEKRotated" in {e["reason"] for e in cluster.events_about("Hospital", name)}, "a KEKRotated event"
    )

    # One rotation per request: further reconciles leave the Secret alone.
    version = secret["metadata"]["resourceVersion"]
    for i in range(2):
        cluster.touch_quota(ns, f"after-rotation-{i}")
    time.sleep(2)
    again = cluster.kek_secret(name)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == version

    # The counter only grows: the API server refuses to lower it.
    lowered = status_code(lambda: cluster.patch_hospital(name, {"spec": {"keyRotation": {"rotateNow": 0}}}))
    assert lowered == 422

    cluster.patch_hospital(name, {"spec": {"keyRotation": {"rotateNow": 2}}})
    wait_for(
        lambda: ((cluster.hospital(name) or {}).get("status") or {}).get("kek", {}).get("versions") == [1, 2, 3],
        "a third version",
    )


def test_a_duplicate_institution_code_fails_the_younger_hospital_until_the_older_is_gone(
    cluster: Cluster, hospitals: HospitalFactory
) -> None:
    code = f"DUP{uuid.uuid4().hex[:8].upper()}"
    first = hospitals("code-first", institutionCode=code)
    wait_ready(cluster, first)
    second = hospitals("code-second", institutionCode=code)

    hospital = wait_failed(cluster, second)
    namespace_ready = condition(hospital, "NamespaceReady")
    assert namespace_ready is not None
    assert (namespace_ready["status"], namespace_ready["reason"]) == ("False", "InstitutionCodeTaken")
    assert f"already belongs to Hospital {first}" in namespace_ready["message"]
    assert not is_ready(hospital)
    assert cluster.namespace(f"hospital-{second}") is None
    assert is_ready(cluster.hospital(first))

    cluster.delete("Hospital", first)
    wait_for(gone(cluster, first), f"Hospital {first} to be deleted", timeout=120)
    wait_ready(cluster, second)


def test_an_unrealisable_spec_fails_with_a_reason(cluster: Cluster, hospitals: HospitalFactory) -> None:
    # Valid for the schema (a DNS subdomain), too long for the namespace label it becomes.
    name = hospitals("invalid", consortium="c" * 70)

    hospital = wait_failed(cluster, name)
    ready = condition(hospital, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "63" in ready["message"]


def test_metrics_endpoint_shows_the_documented_series(
    cluster: Cluster, hospitals: HospitalFactory, operator: RunningOperator
) -> None:
    name = hospitals("metrics")
    wait_ready(cluster, name)
    text = operator.metrics()
    # The operator's section only: the control API documents its own series below it.
    operator_section = (REPO / "docs" / "metrics.md").read_text().split("## Control API metrics")[0]
    documented = re.findall(r"^\| `(medcloud_[a-z_]+)` \|", operator_section, re.M)
    assert len(documented) >= 7
    for metric in documented:
        assert f"# TYPE {metric} " in text, f"{metric} is documented but not exported"
    assert sample(text, "medcloud_reconcile_total", kind="Hospital", result="success") >= 1
    assert sample(text, "medcloud_reconcile_duration_seconds_count", kind="Hospital") >= 1
    assert sample(text, "medcloud_resources", kind="Hospital", phase="Ready") >= 1
    assert sample(text, "medcloud_kek_age_seconds", hospital=name) >= 0
    assert f'medcloud_kek_age_seconds{{hospital="{name}"}}' in text
    assert sample(text, "medcloud_api_writes_total", kind="Namespace", verb="create") >= 1

    def probe_counts_ready() -> bool:
        # Kopf caches probe results for a few seconds: poll until the new Hospital shows.
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.probe_port}/healthz", timeout=5) as r:
            return bool(json.loads(r.read())["hospitals"]["Ready"] >= 1)

    wait_for(probe_counts_ready, "the liveness probe to report the Ready Hospital", timeout=30)


def test_with_peering_the_operator_announces_itself_and_acts(
    cluster: Cluster, local_cluster: Any, operator_kubeconfig: Path
) -> None:
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "kopf-peering-crds.yaml"))
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    # The operator creates the peering object itself; start from none.
    local_cluster.kubectl("delete", "clusterkopfpeering", "medcloud", "--ignore-not-found")
    name = f"peered-{uuid.uuid4().hex[:6]}"
    with run_operator(operator_kubeconfig, TENANCY_ENV, standalone=False):

        def announced() -> Json | None:
            peering = raw(cluster.custom.get_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings", "medcloud")
            return peering if (peering or {}).get("status") else None

        peering = wait_for(announced, "the operator's heartbeat in ClusterKopfPeering medcloud")
        assert len(peering["status"]) == 1
        cluster.create("Hospital", name, {"displayName": "Peered", "institutionCode": "PEER0001", "tier": "village"})
        try:
            wait_ready(cluster, name)
        finally:
            cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "hospitals", name)
            wait_for(gone(cluster, name), f"Hospital {name} to be deleted", timeout=120)
