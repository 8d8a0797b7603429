"""The operator's RBAC manifest: least privilege, and the deliberate exceptions stay narrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
MANIFEST = DEPLOY / "operator-rbac.yaml"
OPERATOR_FILES = ("operator-rbac.yaml", "recordstore-operator-rbac.yaml")
TENANT_SECRETS = "medcloud-operator-tenant-secrets"


def documents(*files: str) -> list[dict[str, Any]]:
    paths = [DEPLOY / f for f in files] if files else [MANIFEST]
    return [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]


def _cluster_bound_roles() -> list[dict[str, Any]]:
    """The operator's ClusterRoles that a ClusterRoleBinding grants everywhere."""
    docs = documents(*OPERATOR_FILES)
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    return [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound]


def test_no_wildcards_and_no_cluster_wide_secrets() -> None:
    roles = _cluster_bound_roles()
    assert {r["metadata"]["name"] for r in roles} == {"medcloud-operator", "medcloud-operator-recordstores"}
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"]
            assert "*" not in rule["resources"]
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
            if {"clusterroles", "clusterrolebindings"} & set(rule["resources"]):
                # Binding the tenant Secrets role and the exchanges' role (deploy/exchange-rbac.yaml), by name;
                # and writing the Hospital admins' ClusterRoles and their bindings, which the escalation check
                # limits to what the operator holds: never `escalate` on ClusterRoles, never `bind` on another.
                assert rule in (
                    {
                        "apiGroups": ["rbac.authorization.k8s.io"],
                        "resources": ["clusterroles"],
                        "verbs": ["bind"],
                        "resourceNames": [
                            TENANT_SECRETS,
                            "medcloud-exchange",
                            "medcloud-gateway-keys",
                            "medcloud-exchange-client",
                        ],
                    },
                    {
                        "apiGroups": ["rbac.authorization.k8s.io"],
                        "resources": ["clusterroles", "clusterrolebindings"],
                        "verbs": ["get", "list", "watch", "create", "update", "delete"],
                    },
                ), rule


def test_escalate_only_on_namespaced_roles_and_bind_only_named_roles() -> None:
    cluster_role = next(d for d in documents() if d["kind"] == "ClusterRole")
    escalating = [r for r in cluster_role["rules"] if {"escalate", "bind"} & set(r["verbs"])]
    assert escalating
    bindable = set()
    for rule in escalating:
        assert rule["apiGroups"] == ["rbac.authorization.k8s.io"]
        if "escalate" in rule["verbs"]:
            assert rule["resources"] == ["roles"]
        if "bind" in rule["verbs"]:
            assert rule["verbs"] == ["bind"]
            assert len(rule["resources"]) == 1
            assert rule.get("resourceNames"), "bind without resourceNames would bind any role"
            bindable |= {(rule["resources"][0], name) for name in rule["resourceNames"]}
    assert bindable == {
        ("roles", "medcloud-hospital-admin"),
        ("clusterroles", TENANT_SECRETS),
        # A consortium exchange's keys in a member namespace, and its shared ClusterRole (docs/exchange.md).
        ("roles", "medcloud-exchange"),
        ("clusterroles", "medcloud-exchange"),
        # A device gateway's keys in its own namespace (deploy/gateway-rbac.yaml).
        ("clusterroles", "medcloud-gateway-keys"),
        # A catalog app's use of the exchange in its own namespace (deploy/exchange-client-rbac.yaml).
        ("clusterroles", "medcloud-exchange-client"),
    }


def test_tenant_secrets_role_grants_secrets_by_name_only_and_is_never_bound_cluster_wide() -> None:
    (role,) = [d for d in documents() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == TENANT_SECRETS]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update", "patch", "delete"]},
        # What lets it bind an app's Role on its store's keys (builders/appinstance.build_store_keys).
        {"apiGroups": ["medcloud.io"], "resources": ["recordstores/keys"], "verbs": ["get"]},
    ]
    every_file = sorted(path.name for path in DEPLOY.glob("*.yaml"))
    for doc in documents(*every_file):
        if doc["kind"] == "ClusterRoleBinding":
            assert doc["roleRef"]["name"] != TENANT_SECRETS, doc["metadata"]["name"]


def test_the_operator_binds_the_role_deploy_grants_to_the_account_deploy_creates() -> None:
    from medcloud_operator.builders.hospital import build_operator_role_binding
    from medcloud_operator.settings import OperatorSettings

    account = next(d for d in documents() if d["kind"] == "ServiceAccount")
    binding = build_operator_role_binding("riverton", OperatorSettings())
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": TENANT_SECRETS,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    ]


def test_the_operator_holds_everything_a_hospital_admin_cluster_role_grants() -> None:
    """RBAC lets the operator write that ClusterRole and bind it only because it holds its rules, cluster-wide."""
    from medcloud_operator.builders.hospital import build_admin_cluster_role

    operator = next(d for d in documents() if d["kind"] == "ClusterRole")
    # On every object of the kind: a rule limited by resourceNames would not cover another Hospital's name.
    held = [r for r in operator["rules"] if not r.get("resourceNames")]
    role = build_admin_cluster_role("riverton", "0000-uid")
    for rule in role["rules"]:
        assert rule["resourceNames"] == ["riverton"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert any(
                        group in h["apiGroups"] and resource in h["resources"] and verb in h["verbs"] for h in held
                    ), (group, resource, verb)


def test_secrets_only_in_the_operator_namespace_and_never_listed() -> None:
    roles = [d for d in documents() if d["kind"] == "Role"]
    secret_rules = [r for role in roles for r in role["rules"] if "secrets" in r["resources"]]
    assert [role["metadata"]["namespace"] for role in roles] == ["medcloud-system"]
    assert secret_rules
    for rule in secret_rules:
        assert not {"list", "watch"} & set(rule["verbs"])


def _granted() -> dict[tuple[str, str], set[str]]:
    cluster_role = next(d for d in documents() if d["kind"] == "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in cluster_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_workloads_get_what_they_run_and_nothing_that_reaches_into_pods() -> None:
    granted = _granted()
    # What AppInstances and DeviceGateways become, watched for drift and repaired.
    children = (
        ("apps", "deployments"),
        ("", "services"),
        ("", "configmaps"),
        ("networking.k8s.io", "ingresses"),
        # A DeviceGateway's own identity; its token is projected by the kubelet, never minted by the operator.
        ("", "serviceaccounts"),
    )
    for child in children:
        assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= granted[child], child
    # Controllers make the pods; the operator never touches them, let alone execs into them or mints tokens.
    for _group, resource in granted:
        assert not resource.startswith("pods"), resource
        assert resource not in ("replicasets", "daemonsets", "statefulsets", "serviceaccounts/token"), resource
    # An exchange-client app's own ServiceAccount (docs/operator.md): no escalation, since the
    # operator can ask no token for it and binds it only the ClusterRoles it may bind by name.
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= granted[("", "serviceaccounts")]
    # Kopf's finalizer and annotations, and the status the operator writes.
    for kind in ("appinstances", "devicegateways", "consortia"):
        assert {"get", "list", "watch", "patch"} <= granted[("medcloud.io", kind)]
        assert "patch" in granted[("medcloud.io", f"{kind}/status")]


def test_the_operator_never_creates_or_deletes_what_users_own() -> None:
    granted = _granted()
    for kind in ("hospitals", "recordstores", "devicegateways", "appinstances", "consortia"):
        assert not {"create", "delete", "deletecollection"} & granted.get(("medcloud.io", kind), set()), kind


def test_city_admins_get_no_record_keys() -> None:
    """Data keys are an explicit grant per store: the city admin role names its resources, never "*"."""
    (role,) = [d for d in documents("city-admin-rbac.yaml") if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule["resources"]
        assert not any(resource.startswith("recordstores/") for resource in rule["resources"])
    medcloud = [r for r in role["rules"] if "medcloud.io" in r["apiGroups"]]
    assert {res for r in medcloud for res in r["resources"]} == {
        "hospitals", "recordstores", "devicegateways", "appinstances", "consortia",
    }  # fmt: skip
