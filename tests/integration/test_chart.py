"""The Helm chart, rendered by the real Helm and checked against the sources it must agree with.

- ``helm lint --strict`` passes, and ``helm template`` renders with the
  default values and with every optional part on.
- Its RBAC grants exactly the rules of ``deploy/*.yaml``, rule for rule
  (the key service's included).
- The environment it gives the operator, the API and the key service is what
  their settings classes read, and every setting they have is either set or
  deliberately left at its default; the operator names the chart's key
  service in the stores' Secrets unless told another URL.
- Values that break the schema (or a rule the schema cannot express) are
  refused by ``helm template`` with a message naming the value.
- Every value in ``values.yaml`` is commented, and the schema says the same.
- Alerts and dashboard query only metrics documented in ``docs/metrics.md``;
  each alert's runbook link lands on a section of ``docs/alerts.md``.
- With the real API server (the only tests marked ``cluster``): every
  rendered object except the ServiceMonitors and PrometheusRule (whose CRDs
  the local cluster lacks) is accepted by ``kubectl apply --dry-run=server``,
  and the pods meet Pod Security "restricted".
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from medcloud_cli.localcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medcloud"
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs"

RELEASE = "medcloud"
NAMESPACE = "medcloud-system"
# `helm template` assumes Kubernetes 1.20 unless told, which the chart's
# kubeVersion (>= 1.30) refuses; render for the version the local cluster runs.
KUBE_VERSION = binaries.KUBERNETES_VERSION

MONITORING_ON: dict[str, Any] = {
    "monitoring": {
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "interval": "15s",
            "endpointAdditionalProperties": {
                "metricRelabelings": [{"action": "drop", "regex": "python_gc_.*", "sourceLabels": ["__name__"]}]
            },
        },
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "additionalRuleLabels": {"team": "city-it"},
        },
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "MedCloud"}},
    }
}

# The analytics writer as a city turns it on (docs/analytics.md).
ANALYTICS_WRITER: dict[str, Any] = {
    "enabled": True,
    "schedule": "15 3 * * *",
    "timeZone": "Asia/Shanghai",
    "exchangeUrl": "http://medcloud-exchange-riverton-medical-alliance.medcloud-system.svc",
    "endpoint": "minio.medcloud-storage.svc:9000",
    "credentials": {"secretName": "analytics-writer-key"},
    "tiers": {"township-maple": "township", "county-people": "county", "city-general": "city"},
}

# Every optional part the API server can check, on at once.
EVERYTHING_ON: dict[str, Any] = {
    **MONITORING_ON,
    "analyticsWriter": ANALYTICS_WRITER,
    "api": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "medcloud.city.example", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "medcloud-api-tls", "hosts": ["medcloud.city.example"]}],
        }
    },
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "apiFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "egress": {"enabled": True, "apiServerCidrs": ["10.96.0.1/32", "192.168.10.0/24"]},
        "keyServiceFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}],
    },
    "operator": {"config": {"storageCidrs": ["10.20.0.0/24"], "storageNamespace": "minio"}},
    "keyService": {"tls": {"secretName": "medcloud-keyservice-tls"}},
}


# ---------------------------------------------------------------------------
# Helm
# ---------------------------------------------------------------------------


@cache
def helm_binary() -> Path:
    return binaries.ensure_binaries(["helm"])["helm"]


def helm(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, input=input, check=False, timeout=120
    )


def template(
    values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> subprocess.CompletedProcess[str]:
    """``helm template`` with ``values`` on stdin (as ``-f -``), the way a values file is given."""
    return helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--values",
        "-",
        input=yaml.safe_dump(values or {}),
    )


def render(
    values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    proc = template(values, release=release, namespace=namespace)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def kinds(docs: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(d["kind"] for d in docs)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


# ---------------------------------------------------------------------------
# Lint and render
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_helm_lint_strict_passes(values: dict[str, Any], tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    proc = helm("lint", "--strict", str(CHART), "--values", str(values_file), "--kube-version", KUBE_VERSION)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_values_render_operator_api_key_service_and_rbac_and_no_monitoring() -> None:
    docs = render()
    assert kinds(docs) == Counter(
        {
            "ServiceAccount": 3,
            # operator, operator-tenant-secrets, operator-recordstores, api, city-admin, exchange-client, exchange,
            # city-health-commission, gateway-keys
            "ClusterRole": 9,
            "ClusterRoleBinding": 4,  # ... and the key service's system:auth-delegator
            "Role": 2,  # the operator's and the key service's, for key Secrets
            "RoleBinding": 2,
            "Deployment": 3,
            "Service": 3,  # the API, the key service, and the operator's headless metrics Service
            "ValidatingAdmissionPolicy": 2,  # tenant admins: no key-service tokens, no legacy token Secrets
            "ValidatingAdmissionPolicyBinding": 2,
        }
    )
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "medcloud"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "medcloud"
        assert labels["helm.sh/chart"] == "medcloud-0.1.0"
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", *ADMISSION_KINDS):
            assert doc["metadata"]["namespace"] == NAMESPACE
    operator = one(docs, "Deployment", "medcloud-operator")
    assert container(operator)["command"] == ["medcloud", "operator"]
    assert container(one(docs, "Deployment", "medcloud-api"))["command"] == ["medcloud", "api"]
    assert container(one(docs, "Deployment", "medcloud-keyservice"))["command"] == ["medcloud", "keyservice"]


def build_exchange_service(consortium: str) -> dict[str, Any]:
    """The Service the operator makes for a Consortium's exchange in the release namespace."""
    from medcloud_operator.builders.exchangeserver import ExchangeNames, build_service

    body = {"apiVersion": "medcloud.io/v1alpha1", "kind": "Consortium", "metadata": {"name": consortium, "uid": "u"}}
    return build_service(body, ExchangeNames.of(consortium, "medcloud-system"))


def test_monitoring_enabled_renders_service_monitors_rule_and_dashboard() -> None:
    docs = render(MONITORING_ON)
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"medcloud-operator-metrics", "medcloud-api", "medcloud-keyservice", "medcloud-exchanges"}
    # The exchanges' Services are the operator's, one per Consortium: the monitor selects them by the operator's labels.
    exchanges = monitors.pop("medcloud-exchanges")
    exchange_service = build_exchange_service("riverton")
    assert exchanges["spec"]["selector"]["matchLabels"].items() <= exchange_service["metadata"]["labels"].items()
    assert exchanges["spec"]["namespaceSelector"] == {"matchNames": ["medcloud-system"]}
    assert exchanges["spec"]["endpoints"][0]["port"] in {p["name"] for p in exchange_service["spec"]["ports"]}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, monitor in monitors.items():
        # Labels, interval and extra endpoint properties are passed through.
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["interval"] == "15s"
        assert endpoint["metricRelabelings"][0]["regex"] == "python_gc_.*"
        # The monitor selects exactly its own Service, on a port that Service has.
        service = services[name]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()] == [service]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}

    rule = one(docs, "PrometheusRule", "medcloud")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} == {
        "MedcloudOperatorDown",
        "MedcloudReconcileErrorRateHigh",
        "MedcloudReconcileLatencyHigh",
        "MedcloudHospitalNotReady",
        "MedcloudRecordStoreDegraded",
        "MedcloudRecordStorageUnavailable",
        "MedcloudKEKRotationOverdue",
        "MedcloudAPIDown",
        "MedcloudAPIErrorRateHigh",
        "MedcloudAPILatencyHigh",
        "MedcloudKeyServiceDown",
        "MedcloudExchangeDatabaseUnavailable",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["labels"]["team"] == "city-it"
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["runbook_url"] == f"docs/alerts.md#{alert['alert'].lower()}"
        # Series are those of this release's scrape jobs only.
        assert 'namespace="medcloud-system"' in alert["expr"]

    dashboard = one(docs, "ConfigMap", "medcloud-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "MedCloud"}
    panels = json.loads(dashboard["data"]["medcloud.json"])["panels"]
    titles = {p["title"] for p in panels}
    assert {
        "Reconciliations by kind and result",
        "Reconcile errors by kind and reason",
        "Reconcile duration p50 / p99",
        "Resources by kind and phase",
        "API requests by status",
        "API latency p50 / p99",
        "KEK age by hospital",
    } <= titles


def test_monitoring_objects_are_absent_unless_enabled() -> None:
    rendered = kinds(render())
    assert rendered["ServiceMonitor"] == rendered["PrometheusRule"] == rendered["ConfigMap"] == 0


def test_optional_ingress_and_network_policies_render() -> None:
    docs = render(EVERYTHING_ON)
    ingress = one(docs, "Ingress", "medcloud-api")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "medcloud.city.example"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "medcloud-api", "port": {"name": "http"}}
    operator_policy = one(docs, "NetworkPolicy", "medcloud-operator")
    assert operator_policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_cidrs = {
        peer["ipBlock"]["cidr"]
        for rule in operator_policy["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    # The API server, and the record storage the operator manages buckets on.
    assert egress_cidrs == {"10.96.0.1/32", "192.168.10.0/24", "10.20.0.0/24"}


def gateway_health_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in policy["spec"]["egress"] if r["ports"] == [{"protocol": "TCP", "port": 8080}]]


def test_operator_egress_reaches_the_gateways_health_port_in_tenant_namespaces_only_with_presence_on() -> None:
    assert gateway_health_rules(one(render(EVERYTHING_ON), "NetworkPolicy", "medcloud-operator")) == []
    values = {**EVERYTHING_ON, "operator": {"config": {"gatewayPresenceCidrs": ["10.244.0.0/16"]}}}
    (rule,) = gateway_health_rules(one(render(values), "NetworkPolicy", "medcloud-operator"))
    # One peer, both selectors (ANDed): gateway pods (the operator's children) of tenant namespaces.
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchExpressions": [{"key": "medcloud.io/hospital", "operator": "Exists"}]},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/managed-by": "medcloud-operator",
                    "app.kubernetes.io/component": "devicegateway",
                }
            },
        }
    ]


def test_object_names_stay_within_kubernetes_limits_for_a_long_release_name() -> None:
    release = "riverton-city-medical-consortium-production-west"  # 49 characters
    docs = render(MONITORING_ON, release=release)
    for doc in docs:
        name = doc["metadata"]["name"]
        limit = 63 if doc["kind"] == "Service" else 253
        assert len(name) <= limit, f"{doc['kind']} {name} is {len(name)} characters"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        for value in doc["metadata"]["labels"].values():
            assert len(value) <= 63


# ---------------------------------------------------------------------------
# Security context and probes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["medcloud-operator", "medcloud-api", "medcloud-keyservice"])
def test_pods_run_restricted(name: str) -> None:
    deployment = one(render(), "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "hostNetwork" not in pod
    assert container(deployment)["resources"]["requests"]


def test_operator_probes_and_metrics_ports_are_its_settings() -> None:
    deployment = one(render({"operator": {"metricsPort": 9191, "probePort": 8181}}), "Deployment", "medcloud-operator")
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"metrics": 9191, "probes": 8181}
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "probes"}
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["MEDCLOUD_METRICS_PORT"] == "9191"
    assert env["MEDCLOUD_PROBE_PORT"] == "8181"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }


def test_api_probes() -> None:
    main = container(one(render(), "Deployment", "medcloud-api"))
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


# ---------------------------------------------------------------------------
# RBAC: the same rules as deploy/*.yaml
# ---------------------------------------------------------------------------

# What the chart does with each file of deploy/. A new file there fails
# test_every_deploy_file_is_accounted_for until someone decides.
MIRRORED = (
    "operator-rbac.yaml",
    "recordstore-operator-rbac.yaml",
    "api-rbac.yaml",
    "keyservice-rbac.yaml",
    "exchange-client-rbac.yaml",
    "exchange-rbac.yaml",
    "city-health-commission-rbac.yaml",
    "gateway-rbac.yaml",
)
ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
NOT_MIRRORED = {
    "tenant-admission-policy.yaml": "mirrored as a whole: test_admission_policies_are_those_of_deploy",
    "kopf-peering-crds.yaml": "CRDs: shipped in charts/medcloud/crds (tests/unit/medcloud/test_chart_crds.py)",
    "city-admin-rbac.yaml": "its ClusterRole is mirrored below; its ServiceAccount and binding are for dev up only",
}
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount")


def deploy_docs(*names: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in names:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if d]
    return docs


def normalized_rules(rules: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], ...]]:
    """Rules as sorted tuples: order within and between rules grants nothing."""
    keys = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
    return sorted(tuple(tuple(sorted(rule.get(key) or ())) for key in keys) for rule in rules)


def test_every_deploy_file_is_accounted_for() -> None:
    present = {path.name for path in DEPLOY.glob("*.yaml")}
    assert present == set(MIRRORED) | set(NOT_MIRRORED), (
        "deploy/ changed: mirror the new file in the chart's templates, or list it in NOT_MIRRORED with a reason"
    )


def test_rbac_is_exactly_that_of_deploy() -> None:
    """Same objects, same names (for release "medcloud" in medcloud-system), same rules, same subjects."""
    expected = [d for d in deploy_docs(*MIRRORED) if d["kind"] in RBAC_KINDS]
    rendered = [d for d in render() if d["kind"] in RBAC_KINDS and d["metadata"]["name"] != "medcloud-city-admin"]
    key = lambda d: (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(map(key, expected))
    by_key = {key(d): d for d in rendered}
    for want in expected:
        got = by_key[key(want)]
        if "rules" in want:
            assert normalized_rules(got["rules"]) == normalized_rules(want["rules"]), f"{key(want)} rules differ"
        if "roleRef" in want:
            assert got["roleRef"] == want["roleRef"]
            assert got["subjects"] == want["subjects"]


def test_admission_policies_are_those_of_deploy() -> None:
    """Same policies and bindings, rule for rule, for release "medcloud" in medcloud-system; the operator follows."""
    expected = deploy_docs("tenant-admission-policy.yaml")
    rendered = [d for d in render() if d["kind"] in ADMISSION_KINDS]
    assert sorted((d["kind"], d["metadata"]["name"], yaml.safe_dump(d["spec"])) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"], yaml.safe_dump(d["spec"])) for d in expected
    )
    elsewhere = render(release="riverton", namespace="city-ops")
    policy = one(elsewhere, "ValidatingAdmissionPolicy", "riverton-medcloud-tenant-token-audiences")
    trusted = next(v for v in policy["spec"]["variables"] if v["name"] == "trusted")
    assert "'system:serviceaccount:city-ops:riverton-medcloud-operator'" in trusted["expression"]
    binding = one(elsewhere, "ValidatingAdmissionPolicyBinding", "riverton-medcloud-tenant-token-audiences")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]


def test_city_admin_role_is_that_of_deploy() -> None:
    (want,) = [d for d in deploy_docs("city-admin-rbac.yaml") if d["kind"] == "ClusterRole"]
    got = one(render(), "ClusterRole", want["metadata"]["name"])
    assert normalized_rules(got["rules"]) == normalized_rules(want["rules"])
    assert not [d for d in render({"rbac": {"cityAdminRole": False}}) if d["metadata"]["name"].endswith("city-admin")]


def test_rbac_follows_release_name_and_namespace() -> None:
    docs = render(release="riverton", namespace="city-ops")
    for doc in docs:
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            # The one built-in role bound: the key service's TokenReviews and SubjectAccessReviews.
            assert doc["roleRef"]["name"].startswith("riverton-medcloud-") or (
                doc["metadata"]["name"] == "riverton-medcloud-keyservice-auth-delegator"
                and doc["roleRef"]["name"] == "system:auth-delegator"
            )
            for subject in doc["subjects"]:
                assert subject["namespace"] == "city-ops"
                assert subject["name"] in {
                    "riverton-medcloud-operator",
                    "riverton-medcloud-api",
                    "riverton-medcloud-keyservice",
                }
    role = one(docs, "Role", "riverton-medcloud-operator-keys")
    assert role["metadata"]["namespace"] == "city-ops"
    assert one(docs, "Role", "riverton-medcloud-keyservice-keys")["metadata"]["namespace"] == "city-ops"
    # The operator binds its tenant Secrets ClusterRole by the release's name, and is told that name.
    one(docs, "ClusterRole", "riverton-medcloud-operator-tenant-secrets")
    operator_rules = one(docs, "ClusterRole", "riverton-medcloud-operator")["rules"]
    bind = [r for r in operator_rules if "clusterroles" in r["resources"] and "bind" in r["verbs"]]
    assert bind == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [
                "riverton-medcloud-operator-tenant-secrets",
                "riverton-medcloud-exchange",
                "riverton-medcloud-gateway-keys",
                "riverton-medcloud-exchange-client",
            ],
        }
    ]
    one(docs, "ClusterRole", "riverton-medcloud-exchange")
    deployment = one(docs, "Deployment", "riverton-medcloud-operator")
    env = env_of(deployment, {"metadata.name": "p", "metadata.namespace": "city-ops"})
    assert env["MEDCLOUD_TENANT_SECRETS_CLUSTER_ROLE"] == "riverton-medcloud-operator-tenant-secrets"
    assert env["MEDCLOUD_EXCHANGE_CLUSTER_ROLE"] == "riverton-medcloud-exchange"
    assert env["MEDCLOUD_GATEWAY_KEYS_CLUSTER_ROLE"] == "riverton-medcloud-gateway-keys"
    one(docs, "ClusterRole", "riverton-medcloud-gateway-keys")
    assert env["MEDCLOUD_EXCHANGE_CLIENT_CLUSTER_ROLE"] == "riverton-medcloud-exchange-client"
    assert env["MEDCLOUD_EXCHANGE_NAMESPACE"] == "city-ops"
    assert (env["MEDCLOUD_OPERATOR_SUBJECT_KIND"], env["MEDCLOUD_OPERATOR_SUBJECT_NAME"]) == (
        "ServiceAccount",
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
    )
    assert env["MEDCLOUD_OPERATOR_SUBJECT_NAMESPACE"] == "city-ops"


def test_reused_service_accounts_are_bound_and_not_created() -> None:
    docs = render(
        {
            "operator": {"serviceAccount": {"create": False, "name": "existing-operator"}},
            "api": {"serviceAccount": {"create": False, "name": "existing-api"}},
            "keyService": {"serviceAccount": {"create": False, "name": "existing-keyservice"}},
        }
    )
    assert kinds(docs)["ServiceAccount"] == 0
    subjects = {s["name"] for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding") for s in d["subjects"]}
    assert subjects == {"existing-operator", "existing-api", "existing-keyservice"}
    policy = one(docs, "ValidatingAdmissionPolicy", "medcloud-tenant-token-audiences")
    assert ":existing-operator'" in next(v for v in policy["spec"]["variables"] if v["name"] == "trusted")["expression"]
    accounts = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["serviceAccountName"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert accounts == {
        "medcloud-operator": "existing-operator",
        "medcloud-api": "existing-api",
        "medcloud-keyservice": "existing-keyservice",
    }


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = render({"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]


# ---------------------------------------------------------------------------
# Environment: what the settings classes read
# ---------------------------------------------------------------------------


def env_of(deployment: dict[str, Any], downward: dict[str, str]) -> dict[str, str]:
    """The container's environment, filled in as the kubelet would (Secret values become ``secret:<name>/<key>``)."""
    env = {}
    for item in container(deployment)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"secret:{ref['name']}/{ref['key']}"
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


# Settings the chart leaves at their defaults, and why.
OPERATOR_DEFAULTED = {
    "metrics_address": "0.0.0.0 is right in a pod: Prometheus scrapes the pod address",
    "peering_priority": "random per replica, so exactly one of the peered replicas acts",
}
API_DEFAULTED = {
    "kubeconfig": "unset, so the API uses its in-cluster ServiceAccount",
}
ANALYTICS_FIELDS = {
    "analytics_endpoint",
    "analytics_bucket",
    "analytics_access_key",
    "analytics_secret_key",
    "analytics_secure",
}
"""Set by the chart only with api.analytics.endpoint: without it the API serves no dashboard (404)."""
KEYSERVICE_DEFAULTED = {"kubeconfig": "unset, so the key service uses its in-cluster ServiceAccount"}


def test_operator_environment_is_read_by_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud_operator.settings import OperatorSettings, WorkloadSettings

    values = {
        "operator": {
            "config": {
                "namespaces": ["hospital-a", "hospital-b"],
                "storageCidrs": ["10.20.0.0/24"],
                "storageNamespace": "minio",
                "dnsPodLabels": {"k8s-app": "coredns"},
                "logLevel": "DEBUG",
                "resyncSeconds": 120.5,
                "shardSelector": "medcloud.io/shard=east",
                "minioEndpoint": "https://minio.medcloud-storage.svc:9000",
                "minioPublicEndpoint": "https://s3.city.example",
                "keyServiceUrl": "https://keys.medcloud-system.svc",
                "gatewayPresenceCidrs": ["10.244.0.0/16"],
            },
            "minioCredentials": {"secretName": "minio-admin"},
            "minioCA": {"secretName": "minio-ca", "key": "bundle.pem"},
        }
    }
    deployment = one(render(values), "Deployment", "medcloud-operator")
    env = env_of(deployment, {"metadata.name": "medcloud-operator-abc", "metadata.namespace": NAMESPACE})
    # The images of apps and gateways (WorkloadSettings) are not chart values yet: the chart runs the
    # operator with their defaults, as it did when they were a settings class of their own. What the
    # chart derives from the release counts: MedCloud's own image (the exchange's, and the apps' with
    # MedCloud's code), the key service's audience, the exchange-client ClusterRole and the namespace.
    from_release = {
        "own_image",
        "key_service_audience",
        "exchange_client_cluster_role",
        "exchange_namespace",
        "gateway_presence_from_namespace",
        "gateway_presence_from_pod_labels",
    }
    fields = set(OperatorSettings.model_fields) - (set(WorkloadSettings.model_fields) - from_release)
    # Only what the chart sets may count: drop settings this shell happens to carry.
    for field in OperatorSettings.model_fields:
        monkeypatch.delenv(f"MEDCLOUD_{field.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = storage = OperatorSettings()

    assert settings.operator_namespace == NAMESPACE
    assert settings.namespaces == ["hospital-a", "hospital-b"]
    assert settings.storage_cidrs == ["10.20.0.0/24"]
    assert settings.storage_namespace == "minio"
    assert settings.dns_pod_labels == {"k8s-app": "coredns"}
    assert settings.log_level == "DEBUG"
    assert settings.resync_seconds == 120.5
    assert settings.shard_selector == "medcloud.io/shard=east"
    assert settings.peering_name == "medcloud"
    assert settings.standalone is False
    # In every tenant namespace the operator binds its own ServiceAccount to the chart's tenant Secrets role.
    assert settings.operator_subject() == {
        "kind": "ServiceAccount",
        "name": "medcloud-operator",
        "namespace": NAMESPACE,
    }
    assert settings.tenant_secrets_cluster_role == "medcloud-operator-tenant-secrets"
    # Device gateways run the chart's own image, as `medcloud gateway`, and get the chart's keys role.
    assert (settings.gateway_image, settings.image_pull_policy) == ("medcloud", "IfNotPresent")
    assert settings.gateway_keys_cluster_role == "medcloud-gateway-keys"
    # Tenants may reach the chart's key service pods on their port, and nothing of the release else.
    (keys,) = settings.platform_egress
    assert (keys.name, keys.namespace, keys.port) == ("keyservice", NAMESPACE, 8443)
    key_pods = one(render(values), "Deployment", "medcloud-keyservice")["spec"]["selector"]["matchLabels"]
    assert keys.pod_labels == key_pods
    one(render(values), "ClusterRole", settings.gateway_keys_cluster_role)
    one(render(values), "ClusterRole", settings.tenant_secrets_cluster_role)
    # The operator pods ask gateway pods in the pod range, and each gateway's policy admits them (their
    # namespace and their selector labels) to its health port.
    assert settings.gateway_presence_cidrs == ["10.244.0.0/16"]
    assert settings.gateway_presence_from_namespace == NAMESPACE
    assert settings.gateway_presence_from_pod_labels == deployment["spec"]["selector"]["matchLabels"]
    assert storage.minio_endpoint == "https://minio.medcloud-storage.svc:9000"
    assert storage.minio_public_endpoint == "https://s3.city.example"
    assert storage.key_service_url == "https://keys.medcloud-system.svc"
    # Credentials come from the Secret, the CA from the mounted Secret.
    assert storage.minio_access_key == "secret:minio-admin/accessKey"
    assert storage.minio_secret_key is not None
    assert storage.minio_secret_key.get_secret_value() == "secret:minio-admin/secretKey"
    assert storage.minio_ca_file == "/etc/medcloud/minio-ca/bundle.pem"
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert mounts["minio-ca"] == "/etc/medcloud/minio-ca"

    # Every setting is either set by the chart or deliberately defaulted;
    # a new setting fails here until the chart passes it (or says why not).
    set_by_chart = {n.removeprefix("MEDCLOUD_").lower() for n in env if n.startswith("MEDCLOUD_")}
    known = set(OperatorSettings.model_fields)
    assert set_by_chart <= known, f"the chart sets what no settings class reads: {set_by_chart - known}"
    assert fields - set_by_chart == set(OPERATOR_DEFAULTED), "operator settings the chart neither sets nor defaults"


def test_minio_credentials_are_never_in_values() -> None:
    """Without a Secret named, the chart sets no credentials at all (RecordStores say StorageNotConfigured)."""
    env = {e["name"] for e in container(one(render(), "Deployment", "medcloud-operator"))["env"]}
    assert not {"MEDCLOUD_MINIO_ACCESS_KEY", "MEDCLOUD_MINIO_SECRET_KEY", "MEDCLOUD_MINIO_ENDPOINT"} & env


def test_api_environment_is_read_by_api_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud_api.config import APISettings

    values = {"api": {"port": 8443, "config": {"tokenAudiences": ["medcloud"], "listScanLimit": 1000000}}}
    env = env_of(one(render(values), "Deployment", "medcloud-api"), {})
    for field in APISettings.model_fields:
        monkeypatch.delenv(f"MEDCLOUD_API_{field.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = APISettings()
    assert settings.host == "0.0.0.0"  # noqa: S104 - reachable through the Service
    assert settings.port == 8443
    assert settings.token_audiences == ["medcloud"]
    # Whole numbers reach the environment as integers, never as 1e+06.
    assert env["MEDCLOUD_API_LIST_SCAN_LIMIT"] == "1000000"
    assert settings.list_scan_limit == 1000000
    set_by_chart = {n.removeprefix("MEDCLOUD_API_").lower() for n in env}
    assert set_by_chart <= set(APISettings.model_fields), set_by_chart - set(APISettings.model_fields)
    assert set(APISettings.model_fields) - set_by_chart == set(API_DEFAULTED) | ANALYTICS_FIELDS
    assert settings.analytics_endpoint is None


def test_the_dashboard_settings_reach_the_api_and_its_key_stays_in_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud_api.config import APISettings

    analytics = {
        "endpoint": "minio.medcloud-storage.svc:9000",
        "bucket": "city-analytics",
        "credentials": {"secretName": "analytics-dashboard-key"},
    }
    env = env_of(one(render({"api": {"analytics": analytics}}), "Deployment", "medcloud-api"), {})
    assert env["MEDCLOUD_API_ANALYTICS_ACCESS_KEY"] == "secret:analytics-dashboard-key/accessKey"
    assert env["MEDCLOUD_API_ANALYTICS_SECRET_KEY"] == "secret:analytics-dashboard-key/secretKey"
    for field in APISettings.model_fields:
        monkeypatch.delenv(f"MEDCLOUD_API_{field.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = APISettings()
    assert (settings.analytics_endpoint, settings.analytics_bucket, settings.analytics_secure) == (
        "minio.medcloud-storage.svc:9000",
        "city-analytics",
        True,
    )
    set_by_chart = {n.removeprefix("MEDCLOUD_API_").lower() for n in env}
    assert set(APISettings.model_fields) - set_by_chart == set(API_DEFAULTED)


def _pod_env(item: list[dict[str, Any]]) -> dict[str, str]:
    return {
        e["name"]: e["value"] if "value" in e else "secret:{name}/{key}".format(**e["valueFrom"]["secretKeyRef"])
        for e in item
    }


def test_the_analytics_writer_is_off_unless_enabled() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] == "CronJob" or "analytics-writer" in d["metadata"]["name"]]


def test_the_analytics_writer_loads_then_publishes_on_its_schedule_as_the_commission_with_its_key_in_a_secret() -> None:
    """A CronJob whose init container runs `medcloud analytics load` and whose container then runs `publish`,
    as a ServiceAccount of its own bound to the commission's export role, restricted, the key in its Secret."""
    import typer.main

    from medcloud_analytics.command import app

    docs = render({"analyticsWriter": ANALYTICS_WRITER})
    cron = one(docs, "CronJob", "medcloud-analytics-writer")
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("15 3 * * *", "Asia/Shanghai")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    account = one(docs, "ServiceAccount", "medcloud-analytics-writer")["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    binding = one(docs, "ClusterRoleBinding", "medcloud-analytics-writer")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole", "medcloud-city-health-commission")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # No Kubernetes API token in the pod: only a projected token for the exchange's audience.
    assert pod["automountServiceAccountToken"] is False
    (projected,) = [v["projected"] for v in pod["volumes"] if "projected" in v]
    assert projected["sources"][0]["serviceAccountToken"]["audience"] == "medcloud-exchange"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    (load,) = pod["initContainers"]
    (publish,) = pod["containers"]
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for step, name in ((load, "load"), (publish, "publish")):
        assert step["command"][:3] == ["medcloud", "analytics", name]
        security = step["securityContext"]
        assert (security["readOnlyRootFilesystem"], security["allowPrivilegeEscalation"]) == (True, False)
        assert security["capabilities"] == {"drop": ["ALL"]}
        env = _pod_env(step["env"])
        assert env["MEDCLOUD_ANALYTICS_ACCESS_KEY"] == "secret:analytics-writer-key/accessKey"
        assert env["MEDCLOUD_ANALYTICS_SECRET_KEY"] == "secret:analytics-writer-key/secretKey"
        assert (env["MEDCLOUD_ANALYTICS_ENDPOINT"], env["MEDCLOUD_ANALYTICS_BUCKET"]) == (
            "minio.medcloud-storage.svc:9000",
            "analytics",
        )
        # Every option the command requires is given, by the environment it reads or on the command line.
        given = {a.split("=", 1)[0] for a in step["command"][3:]}
        reads = {
            p.name: {p.envvar} if isinstance(p.envvar, str) else set(p.envvar or ()) for p in commands[name].params
        }
        for param in commands[name].params:
            if param.required:
                assert given & set(param.opts) or reads[param.name] & set(env), (name, param.name)
        assert given <= {o for p in commands[name].params for o in p.opts}, (name, given)
        assert set(env) <= set().union(*reads.values()), (name, set(env) - set().union(*reads.values()))
    assert "--token-file=/var/run/secrets/medcloud/exchange/token" in load["command"]
    assert {m["mountPath"] for m in load["volumeMounts"]} >= {"/var/run/secrets/medcloud/exchange"}
    assert _pod_env(load["env"])["MEDCLOUD_EXCHANGE_URL"] == ANALYTICS_WRITER["exchangeUrl"]
    assert sorted(a for a in publish["command"] if a.startswith("--tier")) == [
        "--tier=city-general=city",
        "--tier=county-people=county",
        "--tier=township-maple=township",
    ]


def test_the_analytics_writer_reuses_a_service_account_and_binds_nothing_without_rbac() -> None:
    values = {**ANALYTICS_WRITER, "serviceAccount": {"create": False, "name": "commission-writer"}}
    docs = render({"analyticsWriter": values, "rbac": {"create": False}})
    cron = one(docs, "CronJob", "medcloud-analytics-writer")
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == "commission-writer"
    assert not [d for d in docs if "analytics-writer" in d["metadata"]["name"] and d["kind"] != "CronJob"]
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"]


def test_standalone_operator_and_namespaced_peering() -> None:
    standalone = render({"operator": {"replicaCount": 1, "peering": {"enabled": False}}})
    env = env_of(one(standalone, "Deployment", "medcloud-operator"), {"metadata.name": "p", "metadata.namespace": "n"})
    assert env["MEDCLOUD_STANDALONE"] == "true"
    assert "MEDCLOUD_PEERING_NAME" not in env

    namespaced = render({"operator": {"config": {"namespaces": ["hospital-a", "hospital-b"]}}})
    peerings = [d for d in namespaced if d["kind"] == "KopfPeering"]
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings} == {
        ("hospital-a", "medcloud"),
        ("hospital-b", "medcloud"),
    }
    # Serving all namespaces, the operator creates its ClusterKopfPeering itself.
    assert not [d for d in render() if "Peering" in d["kind"]]


# ---------------------------------------------------------------------------
# The key service
# ---------------------------------------------------------------------------


def _operator_env(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    deployment = one(render(values, namespace=namespace), "Deployment", "medcloud-operator")
    return env_of(deployment, {"metadata.name": "medcloud-operator-abc", "metadata.namespace": namespace})


def test_key_service_environment_is_read_by_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud_keyservice.settings import KeyServiceSettings

    values = {
        "keyService": {
            "port": 9443,
            "audience": "keys.city.example",
            "kubeTimeoutSeconds": 4.5,
            "tls": {"secretName": "keyservice-tls"},
        }
    }
    deployment = one(render(values, namespace="city-ops"), "Deployment", "medcloud-keyservice")
    env = env_of(deployment, {"metadata.namespace": "city-ops"})
    for field in KeyServiceSettings.model_fields:
        monkeypatch.delenv(f"MEDCLOUD_KEYSERVICE_{field.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = KeyServiceSettings()
    assert settings.host == "0.0.0.0"  # noqa: S104 - reachable through the Service
    assert settings.port == 9443
    # The KEK and key ring Secrets are where the operator keeps them: the release namespace.
    assert settings.operator_namespace == "city-ops"
    assert settings.audience == "keys.city.example"
    assert settings.kube_timeout_seconds == 4.5
    assert str(settings.tls_cert_file) == "/etc/medcloud/keyservice-tls/tls.crt"
    assert str(settings.tls_key_file) == "/etc/medcloud/keyservice-tls/tls.key"
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/medcloud/keyservice-tls"
    assert mounts["tls"]["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "keyservice-tls"
    set_by_chart = {n.removeprefix("MEDCLOUD_KEYSERVICE_").lower() for n in env}
    fields = set(KeyServiceSettings.model_fields)
    assert set_by_chart <= fields, set_by_chart - fields
    assert fields - set_by_chart == set(KEYSERVICE_DEFAULTED), (
        "key service settings the chart neither sets nor defaults"
    )


def test_key_service_probes_port_and_service() -> None:
    docs = render()
    deployment = one(docs, "Deployment", "medcloud-keyservice")
    main = container(deployment)
    assert main["ports"] == [{"name": "keys", "containerPort": 8443, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "keys", "scheme": "HTTP"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "keys", "scheme": "HTTP"}
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert main["resources"]["requests"]
    assert main["resources"]["limits"]["memory"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "medcloud-keyservice"
    service = one(docs, "Service", "medcloud-keyservice")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8443, "targetPort": "keys", "protocol": "TCP"}]
    # The Service selects the key service's pods and nothing else.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for other in ("medcloud-operator", "medcloud-api"):
        labels = one(docs, "Deployment", other)["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= labels.items()

    tls = render({"keyService": {"tls": {"secretName": "keyservice-tls"}}})
    main = container(one(tls, "Deployment", "medcloud-keyservice"))
    assert main["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert main["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert one(tls, "Service", "medcloud-keyservice")["spec"]["ports"][0]["name"] == "https"


def test_operator_names_the_charts_key_service_unless_told_another() -> None:
    assert _operator_env()["MEDCLOUD_KEY_SERVICE_URL"] == "http://medcloud-keyservice.medcloud-system.svc:8443"
    tls = {"keyService": {"tls": {"secretName": "t"}, "service": {"port": 443}}}
    assert _operator_env(tls, namespace="city-ops")["MEDCLOUD_KEY_SERVICE_URL"] == (
        "https://medcloud-keyservice.city-ops.svc:443"
    )
    # An explicit URL wins, and appears once.
    explicit = {"operator": {"config": {"keyServiceUrl": "https://keys.city.example"}}}
    deployment = one(render(explicit), "Deployment", "medcloud-operator")
    names = [e["name"] for e in container(deployment)["env"]]
    assert names.count("MEDCLOUD_KEY_SERVICE_URL") == 1
    assert _operator_env(explicit)["MEDCLOUD_KEY_SERVICE_URL"] == "https://keys.city.example"
    # Without the chart's key service the operator names none (unless told).
    assert "MEDCLOUD_KEY_SERVICE_URL" not in _operator_env({"keyService": {"enabled": False}})
    disabled_explicit = {"keyService": {"enabled": False}, **explicit}
    assert _operator_env(disabled_explicit)["MEDCLOUD_KEY_SERVICE_URL"] == "https://keys.city.example"


def test_the_url_the_operator_names_is_the_key_service_service() -> None:
    release, namespace = "riverton", "city-ops"
    docs = render(release=release, namespace=namespace)
    env = env_of(
        one(docs, "Deployment", "riverton-medcloud-operator"), {"metadata.name": "p", "metadata.namespace": namespace}
    )
    service = one(docs, "Service", "riverton-medcloud-keyservice")
    port = service["spec"]["ports"][0]["port"]
    assert env["MEDCLOUD_KEY_SERVICE_URL"] == f"http://{service['metadata']['name']}.{namespace}.svc:{port}"


def test_key_service_disabled_renders_none_of_it() -> None:
    docs = render({"keyService": {"enabled": False}, "networkPolicy": {"enabled": True}})
    assert not [d for d in docs if "keyservice" in d["metadata"]["name"]]
    assert kinds(docs)["Deployment"] == 2


def test_key_service_network_policy_admits_tenants_the_release_namespace_and_listed_peers_only() -> None:
    docs = render(EVERYTHING_ON)
    policy = one(docs, "NetworkPolicy", "medcloud-keyservice")
    deployment = one(docs, "Deployment", "medcloud-keyservice")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "keys"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchExpressions": [{"key": "medcloud.io/hospital", "operator": "Exists"}]}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}},
    ]
    # The label it selects tenants by is the one the operator puts on tenant namespaces.
    from medcloud.tenancy import labels

    assert labels.HOSPITAL == "medcloud.io/hospital"
    # Egress, when restricted: DNS and the Kubernetes API, no storage and nothing else.
    egress_cidrs = {p["ipBlock"]["cidr"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p}
    assert egress_cidrs == {"10.96.0.1/32", "192.168.10.0/24"}
    # Off by default, like the chart's other policies.
    assert not [d for d in render() if d["kind"] == "NetworkPolicy"]


def test_notes_name_the_key_service_and_warn_without_tls(tmp_path: Path) -> None:
    # NOTES.txt renders only on install, which needs a cluster. A copy of the chart renders the same
    # text inside a ConfigMap, so `helm template` shows it.
    chart = tmp_path / "medcloud"
    shutil.copytree(CHART, chart)
    body = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "_notes_body.tpl").write_text('{{- define "test.notes" -}}\n' + body + "\n{{- end -}}\n")
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "test.notes" . | toJson }}\n'
    )

    def notes(values: dict[str, Any]) -> str:
        proc = helm(
            "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
            "--show-only", "templates/notes-under-test.yaml", "--values", "-", input=yaml.safe_dump(values),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return str(yaml.safe_load(proc.stdout)["data"]["notes"])

    plain = notes({})
    assert "Key service: http://medcloud-keyservice.medcloud-system.svc:8443" in plain
    assert 'audience "medcloud-keyservice"' in plain
    assert "WARNING: keyService.tls.secretName is empty" in plain
    tls = notes({"keyService": {"tls": {"secretName": "t"}}})
    assert "Key service: https://medcloud-keyservice.medcloud-system.svc:8443" in tls
    assert "WARNING" not in tls
    assert "Key service" not in notes({"keyService": {"enabled": False}})


# ---------------------------------------------------------------------------
# Values: schema, comments and refusals
# ---------------------------------------------------------------------------

INVALID_VALUES = [
    pytest.param({"operater": {}}, "additional properties 'operater' not allowed", id="typo-at-top"),
    pytest.param(
        {"operator": {"config": {"storageCIDRs": ["10.0.0.0/8"]}}},
        "at '/operator/config': additional properties 'storageCIDRs' not allowed",
        id="typo-in-config",
    ),
    pytest.param(
        {"operator": {"config": {"logLevel": "TRACE"}}},
        "at '/operator/config/logLevel': value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
        id="enum",
    ),
    pytest.param({"operator": {"metricsPort": 70000}}, "at '/operator/metricsPort'", id="port-range"),
    pytest.param({"api": {"replicaCount": "two"}}, "at '/api/replicaCount': got string, want integer", id="type"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'", id="pull-policy"),
    pytest.param({"image": {"digest": "latest"}}, "at '/image/digest'", id="digest"),
    pytest.param(
        {"keyService": {"audiance": "x"}},
        "at '/keyService': additional properties 'audiance' not allowed",
        id="ks-typo",
    ),
    pytest.param({"keyService": {"audience": ""}}, "at '/keyService/audience'", id="ks-empty-audience"),
    pytest.param({"keyService": {"port": 0}}, "at '/keyService/port'", id="ks-port"),
    pytest.param({"keyService": {"enabled": "yes"}}, "at '/keyService/enabled'", id="ks-enabled-type"),
    pytest.param(
        {"operator": {"config": {"storageCidrs": ["minio.local"]}}}, "at '/operator/config/storageCidrs/0'", id="cidr"
    ),
    pytest.param(
        {"monitoring": {"serviceMonitor": {"interval": "often"}}},
        "at '/monitoring/serviceMonitor/interval'",
        id="duration",
    ),
    pytest.param(
        {"monitoring": {"prometheusRule": {"thresholds": {"apiErrorRatio": 5}}}},
        "at '/monitoring/prometheusRule/thresholds/apiErrorRatio'",
        id="ratio",
    ),
    pytest.param(
        {"api": {"ingress": {"enabled": True, "hosts": [{"host": "a.example"}]}}},
        "missing property 'paths'",
        id="ingress-host-without-paths",
    ),
    # What the schema cannot say, the templates refuse with a reason.
    pytest.param(
        {"operator": {"replicaCount": 2, "peering": {"enabled": False}}},
        "needs operator.peering.enabled=true",
        id="standalone-replicas",
    ),
    pytest.param(
        {"operator": {"config": {"namespaces": ["hospital-*"]}}},
        'operator.config.namespaces has the glob "hospital-*"',
        id="glob-with-peering",
    ),
    pytest.param(
        {"networkPolicy": {"enabled": True, "egress": {"enabled": True}}},
        "needs networkPolicy.egress.apiServerCidrs",
        id="egress-without-apiserver",
    ),
    pytest.param(
        {"api": {"analytics": {"endpoint": "minio:9000"}}},
        "api.analytics.credentials.secretName is required with api.analytics.endpoint",
        id="dashboard-without-its-key",
    ),
    pytest.param(
        {"api": {"analytics": {"endpoint": "minio:9000", "accessKey": "in-values"}}},
        "accessKey",
        id="dashboard-key-in-values",
    ),
    pytest.param(
        {"analyticsWriter": {**ANALYTICS_WRITER, "credentials": {}}},
        "analyticsWriter.credentials.secretName is required with analyticsWriter.enabled",
        id="writer-without-its-key",
    ),
    pytest.param(
        {"analyticsWriter": {**ANALYTICS_WRITER, "exchangeUrl": ""}},
        "analyticsWriter.exchangeUrl is required with analyticsWriter.enabled",
        id="writer-without-exchange",
    ),
    pytest.param(
        {"analyticsWriter": {**ANALYTICS_WRITER, "secretKey": "in-values"}},
        "secretKey",
        id="writer-key-in-values",
    ),
    pytest.param(
        {"analyticsWriter": {**ANALYTICS_WRITER, "tiers": {"township-maple": "hamlet"}}},
        "at '/analyticsWriter/tiers/township-maple'",
        id="writer-unknown-tier",
    ),
]


@pytest.mark.parametrize(("values", "message"), INVALID_VALUES)
def test_invalid_values_are_refused_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    proc = template(values)
    assert proc.returncode != 0, f"helm template accepted {values}"
    assert message in proc.stderr, proc.stderr


def values_comments(text: str) -> dict[str, str]:
    """The comment block right above each key of values.yaml, by dotted path."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
        elif stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
        elif match := re.match(r"^( *)([A-Za-z_][\w.-]*):", line):
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            if pending:
                comments[".".join(key for _, key in stack)] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


def schema_properties(node: dict[str, Any], path: str = "") -> Iterable[tuple[str, dict[str, Any]]]:
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        yield child_path, child
        yield from schema_properties(child, child_path)


def test_the_local_clusters_chart_values_reach_the_operator_as_the_platform_contract_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`dev up`'s chart mode: the platform Services in the operator's settings, the broker CA mounted, fixed
    Service addresses for the API and the key service."""
    from medcloud_cli.localcluster import chartplatform, platformservices
    from medcloud_cli.localcluster.broker import BrokerInfo
    from medcloud_cli.localcluster.cluster import ClusterState, MinioInfo
    from medcloud_operator.settings import OperatorSettings

    state = ClusterState(
        state_dir=str(tmp_path),
        server="https://10.89.0.1:21005",
        kubeconfig="",
        user_kubeconfig="",
        audit_log="",
        minio=MinioInfo(endpoint="10.89.0.1:21000", access_key="root", secret_key="s3cret"),
        broker=BrokerInfo(host="127.0.0.1", port=21001, ca_file="ca.crt", client_cert="", client_key=""),
    )
    for process, port in {"minio": 21000, "mosquitto": 21001}.items():
        platformservices.record(state, process, port)
    state.extra["clusterDNS"] = {"ip": "10.96.0.10", "node_port": 21053}
    values = chartplatform.chart_values("medcloud.local/medcloud:abc", state, 21005, broker_ca=True)
    docs = render(values)
    deployment = one(docs, "Deployment", "medcloud-operator")
    for field in OperatorSettings.model_fields:
        monkeypatch.delenv(f"MEDCLOUD_{field.upper()}", raising=False)
    for name, value in env_of(deployment, {"metadata.name": "op", "metadata.namespace": NAMESPACE}).items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.minio_endpoint == settings.minio_public_endpoint == "http://10.96.0.20:9000"
    assert (settings.storage_cidrs, settings.storage_port) == (["10.89.0.1/32"], 21000)
    assert (settings.broker_host, settings.broker_port) == ("10.96.0.21", 8883)
    assert settings.key_service_url == "http://10.96.0.30:8443"
    assert [p.name for p in settings.platform_egress] == ["mqtt", "keyservice"]
    assert settings.broker_client_ca_file == "/etc/medcloud/broker-client-ca/ca.crt"
    assert settings.broker_client_ca_key_file == "/etc/medcloud/broker-client-ca/ca.key"
    assert (settings.image_pull_policy, settings.own_image) == ("Never", "medcloud.local/medcloud:abc")
    # Tenants may query the node's CoreDNS on its own port; every pod reserves little CPU on the one node.
    assert (settings.dns_cidrs, settings.dns_port) == (["10.89.0.1/32"], 21053)
    assert settings.max_cpu_request == chartplatform.SMALL_CPU_REQUEST
    for component in ("medcloud-operator", "medcloud-api", "medcloud-keyservice"):
        resources = container(one(docs, "Deployment", component))["resources"]
        assert resources["requests"]["cpu"] == chartplatform.SMALL_CPU_REQUEST
        assert resources["requests"]["memory"]
        assert resources["limits"]["memory"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["broker-client-ca"]["secret"]["secretName"] == chartplatform.BROKER_CA_SECRET
    assert one(docs, "Service", "medcloud-api")["spec"]["clusterIP"] == "10.96.0.31"
    assert one(docs, "Service", "medcloud-keyservice")["spec"]["clusterIP"] == "10.96.0.30"
    # Without a broker CA nothing is mounted, and a Service's address is the cluster's choice by default.
    plain = render()
    assert "broker-client-ca" not in {
        v["name"] for v in one(plain, "Deployment", "medcloud-operator")["spec"]["template"]["spec"]["volumes"]
    }
    assert "clusterIP" not in one(plain, "Service", "medcloud-api")["spec"]


def test_every_value_is_commented_and_the_schema_says_the_same() -> None:
    comments = values_comments((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    for path, node in schema_properties(schema):
        assert path in comments, f"values.yaml has no comment above {path}"
        assert node.get("description") == comments[path], f"schema description of {path} differs from its comment"


def test_schema_closes_every_chart_owned_object() -> None:
    """additionalProperties: false wherever the chart defines the keys, so a typo is an error."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    for path, node in schema_properties(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path


def test_every_default_value_is_in_the_schema() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            if "properties" not in node:
                return  # a Kubernetes object passed through as it is
            assert key in node["properties"], f"{path}{key} is not in the schema"
            if isinstance(value, dict):
                walk(value, node["properties"][key], f"{path}{key}.")

    walk(defaults, schema, "")


# ---------------------------------------------------------------------------
# Alerts and dashboard against docs/metrics.md and docs/alerts.md
# ---------------------------------------------------------------------------

# Series Prometheus itself writes for every target, not ours to document.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> set[str]:
    """Names in the first column of docs/metrics.md's table(s), with each histogram's series."""
    names: set[str] = set()
    for line in (DOCS / "metrics.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*(\w+)\s*\|", line)
        if not match:
            continue
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL (or Grafana) expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors ([5m], [$__rate_interval])
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    # A name is taken whole (never a prefix of a longer word) and is no function call.
    for match in re.finditer(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", expr):
        name = match.group(1)
        if name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def test_metric_name_extraction() -> None:
    """The parser below must see every selector; were it blind, the next test would pass vacuously."""
    expr = (
        'sum by (kind) (rate(medcloud_reconcile_total{result="error", x="a{b}"}[5m])) / ignoring(le) '
        "histogram_quantile(0.99, sum by (le) (rate(medcloud_x_bucket[$__rate_interval]))) > 1e3 "
        "and on (pod) absent(up == 1) or medcloud_undocumented offset 5m"
    )
    assert metric_names(expr) == {"medcloud_reconcile_total", "medcloud_x_bucket", "up", "medcloud_undocumented"}


def rendered_expressions() -> dict[str, str]:
    docs = render(MONITORING_ON)
    rule = one(docs, "PrometheusRule", "medcloud")
    exprs = {f"alert {r['alert']}": r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    dashboard = json.loads(one(docs, "ConfigMap", "medcloud-dashboard")["data"]["medcloud.json"])
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label): the metric is the first argument.
            exprs[f"variable {variable['name']}"] = variable["definition"].removeprefix("label_values(").split(",")[0]
    return exprs


def test_alerts_and_dashboard_query_only_documented_metrics() -> None:
    documented = documented_metrics() | PROMETHEUS_SERIES
    assert "medcloud_reconcile_total" in documented, "docs/metrics.md no longer parses"
    undocumented = {
        where: sorted(metric_names(expr) - documented)
        for where, expr in rendered_expressions().items()
        if metric_names(expr) - documented
    }
    assert not undocumented, f"queries use metrics docs/metrics.md does not document: {undocumented}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_each_alert_has_a_runbook_section_in_docs_alerts() -> None:
    text = (DOCS / "alerts.md").read_text(encoding="utf-8")
    anchors = {github_anchor(h) for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)}
    rule = one(render(MONITORING_ON), "PrometheusRule", "medcloud")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for alert in alerts:
        anchor = alert["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor in anchors, f"docs/alerts.md has no section #{anchor} for {alert['alert']}"
        section = text.split(f"## {alert['alert']}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("Meaning", "Impact", "Diagnosis", "Mitigation"):
            assert f"**{part}.**" in section, f"the runbook of {alert['alert']} lacks {part}"
    documented_alerts = set(re.findall(r"^## (Medcloud\w+)$", text, flags=re.MULTILINE))
    assert documented_alerts == {a["alert"] for a in alerts}, "docs/alerts.md and the PrometheusRule disagree"


# ---------------------------------------------------------------------------
# The real API server
# ---------------------------------------------------------------------------


def _install_crds(local_cluster: Any, k8s_api_client: Any) -> None:
    """The chart's CRDs, as Helm would install them first (idempotent; other tests share them)."""
    from medcloud.kube.crds import install_crds

    install_crds(k8s_api_client)
    peering = str(CHART / "crds" / "kopf.dev_peerings.yaml")
    local_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=medcloud-tests", "-f", peering
    )
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", peering)


def _dry_run(local_cluster: Any, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    proc: subprocess.CompletedProcess[str] = local_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False
    )
    return proc


@pytest.mark.cluster
@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_rendered_objects_are_accepted_by_the_api_server(
    values: dict[str, Any], local_cluster: Any, k8s_api_client: Any, namespace: str
) -> None:
    _install_crds(local_cluster, k8s_api_client)
    # Warn on the "restricted" profile: the API server then answers every
    # pod template that would violate it with a warning kubectl prints.
    local_cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )  # fmt: skip
    # Serving the test namespace only, so a KopfPeering is rendered and checked too.
    values = copy.deepcopy(values)
    values.setdefault("operator", {}).setdefault("config", {})["namespaces"] = [namespace]
    release = f"t{uuid.uuid4().hex[:6]}"
    docs = [
        d for d in render(values, release=release, namespace=namespace)
        if d["kind"] not in ("ServiceMonitor", "PrometheusRule")
    ]  # fmt: skip
    assert len(docs) >= 15

    proc = _dry_run(local_cluster, docs)

    assert proc.returncode == 0, proc.stderr
    assert "PodSecurity" not in proc.stderr, proc.stderr
    for doc in docs:
        assert f"{doc['metadata']['name']} created (server dry run)" in proc.stdout, doc["kind"]


@pytest.mark.cluster
def test_api_server_flags_a_pod_that_is_not_restricted(local_cluster: Any, namespace: str) -> None:
    """The check above can fail: running as root is reported by Pod Security admission."""
    local_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted")
    docs = render({"operator": {"podSecurityContext": {"runAsNonRoot": False}}}, namespace=namespace)
    deployment = one(docs, "Deployment", "medcloud-operator")
    proc = _dry_run(local_cluster, [deployment])
    assert proc.returncode == 0, proc.stderr
    assert 'would violate PodSecurity "restricted:latest"' in proc.stderr
    assert "runAsNonRoot != true" in proc.stderr
