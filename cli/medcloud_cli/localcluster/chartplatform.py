"""MedCloud from its Helm chart on the real node: what `medcloud dev up` runs when a real node runs (chart mode).

`helm upgrade --install medcloud charts/medcloud` in ``medcloud-system`` with
the registry-free image (`medcloud dev images`, ``imagePullPolicy: Never``):
the operator, the control API and the key service run as pods, under the
chart's RBAC, Pod Security ``restricted`` (the namespace enforces it) and the
chart's NetworkPolicies (egress restricted too: the API server and, for the
operator, MinIO). The chart's settings point at the platform Services
(platformservices.py): MinIO and the broker as pods reach them, the tenants'
egress to them, MinIO's root credentials and the broker's client CA from
Secrets the chart mounts.

The machine reaches the chart's Services at fixed Service addresses
(``API_IP``, ``KEY_SERVICE_IP``): kube-proxy translates them for local
processes as well as for pods, so one URL serves both (the key service's is
written into every store's Secret), it survives `dev up` again, and no
port-forward process has to be kept alive. They are reachable from this
machine only (the service range is routed to the pod bridge).

The consortium exchange runs as the pod the operator builds for the
Consortium (database: the platform PostgreSQL, through a connection Secret
made here), and ``EXCHANGE_IP`` is a Service of this module's in front of
that pod: it answers once the Consortium is applied.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import config

from medcloud_cli.localcluster import clusterdns, netsetup, platformservices, prometheus
from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster
from medcloud_cli.localcluster.exchange import example_consortium
from medcloud_cli.localcluster.platform import (
    CITY_ADMIN,
    KEY_SERVICE_AUDIENCE,
    SYSTEM_NAMESPACE,
    PlatformInfo,
    deploy_dir,
    service_account_token,
)
from medcloud_cli.localcluster.process import StartupError
from medcloud_operator.builders.exchange import exchange_labels

RELEASE = "medcloud"
NAMESPACE = SYSTEM_NAMESPACE
MINIO_SECRET = "medcloud-minio-admin"  # noqa: S105 - a Secret's name
BROKER_CA_SECRET = "medcloud-broker-client-ca"  # noqa: S105 - a Secret's name
EXCHANGE_ALIAS = "medcloud-exchange-dev"
EXCHANGE_IP = platformservices.EXCHANGE.cluster_ip
API_PORT = 8080
KEY_SERVICE_PORT = 8443
EXCHANGE_PORT = 8080
HELM_TIMEOUT = "300s"
SMALL_CPU_REQUEST = "25m"
"""What each pod requests on the local cluster's one real node (docs/real-node.md, "CPU on one node")."""
MODE = "chart"
"""``state.extra["platformMode"]`` of a chart-mode cluster (absent: process mode)."""


def chart() -> Path:
    return deploy_dir().parent / "charts" / "medcloud"


def _small_resources() -> dict[str, Any]:
    """The chart's pods on the one-node cluster: a small CPU request (Helm merges the chart's memory into it)."""
    return {"requests": {"cpu": SMALL_CPU_REQUEST}}


def chart_values(image: str, state: ClusterState, api_server_port: int, broker_ca: bool) -> dict[str, Any]:
    """The chart's values for the local cluster: one replica each, the local image, the platform Services."""
    published = platformservices.endpoints(state)
    if "minio" not in published:
        raise StartupError("chart mode needs MinIO published to pods (a real node and MinIO)")
    minio = published["minio"]
    minio_url = platformservices.minio_url(state)
    repository, tag = image.rsplit(":", 1)
    operator_config: dict[str, Any] = {
        "minioEndpoint": minio_url,
        "minioPublicEndpoint": minio_url,
        "storageCidrs": [platformservices.NODE_CIDR],
        "storagePort": minio.node_port,
        "platformEgress": platformservices.platform_egress(published),
        "keyServiceUrl": f"http://{platformservices.KEY_SERVICE_IP}:{KEY_SERVICE_PORT}",
        # A development audit trail is locked for a day only.
        "exchangeAuditRetentionDays": 1,
        # Tenants' DNS egress: CoreDNS on the node address (clusterdns.py).
        **clusterdns.operator_config(state),
        # One 2-core node runs examples/ (39 pods): small reservations, not a larger node.
        "maxCpuRequest": SMALL_CPU_REQUEST,
        # The node's pod range: the operator pod asks the gateway pods which devices they saw (docs/devices.md).
        "gatewayPresenceCidrs": [netsetup.POD_CIDR],
    }
    if broker := published.get("mosquitto"):
        operator_config |= {"brokerHost": broker.cluster_ip, "brokerPort": broker.port}
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "operator": {
            "replicaCount": 1,
            "peering": {"enabled": False},
            "config": operator_config,
            "resources": _small_resources(),
            "minioCredentials": {"secretName": MINIO_SECRET},
            "brokerClientCA": {"secretName": BROKER_CA_SECRET if broker_ca else ""},
        },
        "api": {
            "replicaCount": 1,
            "port": API_PORT,
            "service": {"clusterIP": platformservices.API_IP},
            "resources": _small_resources(),
        },
        "keyService": {
            "replicaCount": 1,
            "resources": _small_resources(),
            "port": KEY_SERVICE_PORT,
            "service": {"clusterIP": platformservices.KEY_SERVICE_IP, "port": KEY_SERVICE_PORT},
        },
        "networkPolicy": {
            "enabled": True,
            "egress": {
                "enabled": True,
                # The API server listens on the node address; policies see it after translation.
                "apiServerCidrs": [platformservices.NODE_CIDR],
                "apiServerPorts": [443, api_server_port],
            },
        },
    }


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": data,
    }


def _namespace() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def city_admin_manifests() -> list[dict[str, Any]]:
    """The city administrator `dev up` prints a token for, bound to the chart's city-admin ClusterRole."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CITY_ADMIN, "namespace": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{RELEASE}-dev-city-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{RELEASE}-city-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": CITY_ADMIN, "namespace": NAMESPACE}],
        },
    ]


def exchange_alias(consortium: str) -> dict[str, Any]:
    """A Service on a fixed address in front of the operator's exchange pod of ``consortium``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": EXCHANGE_ALIAS, "namespace": NAMESPACE},
        "spec": {
            "clusterIP": EXCHANGE_IP,
            "selector": exchange_labels(consortium),
            "ports": [{"name": "http", "protocol": "TCP", "port": EXCHANGE_PORT, "targetPort": "http"}],
        },
    }


def _apply(cluster: LocalCluster, *items: dict[str, Any]) -> None:
    # Through stdin: Secrets' values never appear in a command line.
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)}))


def _exchange_database(cluster: LocalCluster, consortium: str) -> dict[str, Any] | None:
    """The exchange's connection Secret (the operator's default name), on the platform PostgreSQL's Service."""
    state = cluster._require_state()
    postgres = platformservices.endpoints(state).get("postgres")
    if state.postgres is None or postgres is None:
        return None
    database = f"exchange_{consortium.replace('-', '_')}"
    with psycopg.connect(state.postgres.dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{database}"')
    info = state.postgres
    uri = f"postgresql://{info.user}:{info.password}@{postgres.address}/{database}"
    return _secret(f"exchange-{consortium}-app", {"uri": uri})


def helm(cluster: LocalCluster, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    command = [str(cluster.binary("helm")), f"--kubeconfig={cluster.kubeconfig}", "-n", NAMESPACE, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)


def _diagnose(cluster: LocalCluster) -> str:
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
    described = cluster.kubectl("describe", "pods", "-n", NAMESPACE, check=False).stdout
    return f"{pods}\n{described[-3000:]}"


def install(cluster: LocalCluster, image: str) -> None:
    """Secrets and values, then `helm upgrade --install --wait`: returns once every chart pod is Ready."""
    state = cluster._require_state()
    assert state.minio is not None, "chart mode needs the local MinIO"
    api_server_port = int(state.server.rsplit(":", 1)[1])
    secrets = [_secret(MINIO_SECRET, {"accessKey": state.minio.access_key, "secretKey": state.minio.secret_key})]
    broker_ca = state.broker is not None and bool(state.broker.ca_key_file)
    if state.broker is not None and broker_ca:
        ca = {"ca.crt": Path(state.broker.ca_file).read_text(), "ca.key": Path(state.broker.ca_key_file).read_text()}
        secrets.append(_secret(BROKER_CA_SECRET, ca))
    _apply(cluster, _namespace(), *secrets)
    values = chart_values(image, state, api_server_port, broker_ca)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=cluster.state_dir) as file:
        json.dump(values, file)
        file.flush()
        cluster.progress(f"helm install {RELEASE} (operator, API, key service as pods) ...")
        upgrade = ["upgrade", "--install", RELEASE, str(chart()), "-f", file.name]
        done = helm(cluster, *upgrade, "--wait", f"--timeout={HELM_TIMEOUT}")
    if done.returncode != 0:
        raise StartupError(f"helm install failed: {done.stderr.strip()}\n{_diagnose(cluster)}")
    # helm --wait counts a Deployment ready at replicas - maxUnavailable: the operator's rollout
    # (maxUnavailable 1, one leader at a time) counts ready with no pod Ready, so wait for the pods.
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        "pod",
        "-n",
        NAMESPACE,
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        f"--timeout={HELM_TIMEOUT}",
        check=False,
    )
    if waited.returncode != 0:
        raise StartupError(f"the chart's pods are not Ready: {waited.stderr.strip()}\n{_diagnose(cluster)}")


def _operator_metrics_address(cluster: LocalCluster) -> str:
    """The operator pod's metrics address: its chart Service is headless (one target per replica, for a
    ServiceMonitor), so Prometheus here scrapes the one pod; a new pod (after `helm upgrade`) needs `dev up`."""
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    listing = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json")
    pod = json.loads(listing.stdout)["items"][0]
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
    return f"{pod['status']['podIP']}:{port}"


def start_chart_platform(cluster: LocalCluster, image: str) -> PlatformInfo:
    """MedCloud from its chart on the node, the example consortium's exchange pod wired, Prometheus on it."""
    state = cluster._require_state()
    install(cluster, image)
    consortium = example_consortium(deploy_dir().parent)
    extras = [*city_admin_manifests(), exchange_alias(consortium)]
    if database := _exchange_database(cluster, consortium):
        extras.append(database)
    _apply(cluster, *extras)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        token = service_account_token(api, CITY_ADMIN)
    finally:
        api.close()
    operator_metrics = _operator_metrics_address(cluster)
    api_url = f"http://{platformservices.API_IP}:{API_PORT}"
    key_service_url = f"http://{platformservices.KEY_SERVICE_IP}:{KEY_SERVICE_PORT}"
    exchange_url = f"http://{EXCHANGE_IP}:{EXCHANGE_PORT}"
    _, prometheus_url = prometheus.start_prometheus(
        cluster,
        {
            prometheus.OPERATOR_JOB: operator_metrics,
            prometheus.API_JOB: api_url.removeprefix("http://"),
            prometheus.KEYSERVICE_JOB: key_service_url.removeprefix("http://"),
            prometheus.EXCHANGE_JOB: exchange_url.removeprefix("http://"),
        },
    )
    info = PlatformInfo(
        api_url=api_url,
        city_admin_token=token,
        operator_metrics=f"http://{operator_metrics}/metrics",
        key_service_url=key_service_url,
        prometheus_url=prometheus_url,
        exchange_url=exchange_url,
        exchange_consortium=consortium,
        key_service_audience=KEY_SERVICE_AUDIENCE,
    )
    state.extra["platformMode"] = MODE
    state.extra["release"] = {"name": RELEASE, "namespace": NAMESPACE, "image": image}
    state.extra["urls"] = {
        "api": info.api_url,
        "keyservice": info.key_service_url,
        "operator-metrics": info.operator_metrics,
        "exchange": exchange_url,
        "prometheus": prometheus_url,
    }
    state.extra["keyServiceAudience"] = info.key_service_audience
    cluster.save_state()
    return info
