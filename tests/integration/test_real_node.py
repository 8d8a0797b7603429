"""The real node: MedCloud's registry-free image runs as a real pod, and `stop()` leaves the machine clean.

One private local cluster with a real kubelet node (containerd, kube-proxy,
kube-router) for this module; it needs Linux root and is skipped elsewhere, or
when another real node runs on the machine (there can be one at a time). The
last test stops the cluster and checks, one by one, that no iptables chain,
ipset, cgroup, bridge, mount or fixed path is left behind; the very last one
crashes a detached node and checks that `dev down` undoes it all the same.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import pytest
from kubernetes import config

from medcloud.kube.crds import install_crds
from medcloud.models import HospitalSpec, hospital_namespace
from medcloud_cli.localcluster import clusterdns, netsetup, platformservices
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster, stop_from_state
from medcloud_cli.localcluster.images import PAUSE_REFERENCE
from medcloud_cli.localcluster.node import KWOK_TOLERATION, NODE_NAME, shim_pids
from medcloud_operator.builders.hospital import build_namespace, build_network_policies
from medcloud_operator.settings import OperatorSettings
from tests.node_support import connects, imported_image, private_node_cluster

pytestmark = [pytest.mark.node, pytest.mark.cluster]

CONSORTIUM = "node-test-alliance"
T = TypeVar("T")
Json = dict[str, Any]


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # MinIO, the broker and PostgreSQL too: pods reach them through the platform Services.
    options = ClusterOptions(nodes=1, real_node=True)
    with private_node_cluster(tmp_path_factory.mktemp("medcloud-node"), options, "real node") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def image(node_cluster: LocalCluster) -> str:
    return imported_image(node_cluster)


def apply(cluster: LocalCluster, *manifests: Json, namespace: str = "default") -> None:
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=items)


def get(cluster: LocalCluster, *args: str) -> Json:
    return dict(json.loads(cluster.kubectl("get", *args, "-o", "json").stdout))


@pytest.fixture
def restricted_namespace(node_cluster: LocalCluster) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    apply(
        node_cluster,
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        },
    )
    try:
        yield name
    finally:
        node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def restricted_pod(name: str, image: str, args: list[str], env: dict[str, str] | None = None) -> Json:
    """A pod that Pod Security `restricted` admits: the shape the chart's deployments have."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                    "ports": [{"containerPort": 8080}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def ready_pod(cluster: LocalCluster, namespace: str, name: str, timeout: float = 120) -> Json:
    def ready() -> Json | None:
        pod = get(cluster, "pod", name, "-n", namespace)
        conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        return pod if conditions.get("Ready") == "True" else None

    try:
        return wait_for(ready, f"pod {namespace}/{name} Ready", timeout)
    except AssertionError:
        described = cluster.kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
        raise AssertionError(f"pod {namespace}/{name} not Ready:\n{described[-3000:]}") from None


def test_the_medcloud_image_serves_the_api_in_a_restricted_pod(
    node_cluster: LocalCluster, image: str, restricted_namespace: str
) -> None:
    """`medcloud api` from the image: its readiness needs the cluster, reached through the Service IP
    (kube-proxy) with the pod's own service-account token."""
    ns = restricted_namespace
    api = config.new_client_from_config(config_file=str(node_cluster.kubeconfig))
    try:
        install_crds(api)
    finally:
        api.close()
    apply(
        node_cluster,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{ns}-read-hospitals"},
            "rules": [{"apiGroups": ["medcloud.io"], "resources": ["hospitals"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{ns}-read-hospitals"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{ns}-read-hospitals"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        },
    )
    pod = restricted_pod("api", image, ["api"], {"MEDCLOUD_API_HOST": "0.0.0.0", "MEDCLOUD_API_PORT": "8080"})  # noqa: S104 - in the pod
    pod["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/readyz", "port": 8080},
        "periodSeconds": 2,
    }
    apply(node_cluster, pod, namespace=ns)
    running = ready_pod(node_cluster, ns, "api")
    assert running["spec"]["nodeName"] == NODE_NAME

    # From the machine, the pod answers on its own address on the pod bridge.
    with urllib.request.urlopen(f"http://{running['status']['podIP']}:8080/readyz", timeout=5) as response:
        assert json.loads(response.read())["kubernetes"].startswith("v1.35")

    # logs and exec go through the API server to the kubelet (kubelet-client RBAC).
    logs = node_cluster.kubectl("logs", "-n", ns, "api").stdout
    assert "Application startup complete" in logs
    whoami = node_cluster.kubectl("exec", "-n", ns, "api", "--", "python3", "-c", "import os; print(os.getuid())")
    assert whoami.stdout.strip() == "10001"
    write = node_cluster.kubectl("exec", "-n", ns, "api", "--", "python3", "-c", "open('/x', 'w')", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr + write.stdout


def test_a_missing_image_is_never_ready(node_cluster: LocalCluster, restricted_namespace: str) -> None:
    """The untruth the real node ends: no image, no Running pod."""
    ns = restricted_namespace
    ghost = restricted_pod("ghost", "registry.medcloud.local/apps/emr-sharing:2.3.1", ["serve"])
    apply(node_cluster, ghost, namespace=ns)

    def refused() -> str | None:
        pod = get(node_cluster, "pod", "ghost", "-n", ns)
        for status in pod.get("status", {}).get("containerStatuses", []):
            reason = (status.get("state", {}).get("waiting") or {}).get("reason")
            if reason and reason != "ContainerCreating":
                return str(reason)
        return None

    assert wait_for(refused, "the kubelet's verdict on a missing image") == "ErrImageNeverPull"
    assert get(node_cluster, "pod", "ghost", "-n", ns)["status"]["phase"] == "Pending"


def test_a_pull_never_leaves_the_machine(node_cluster: LocalCluster, restricted_namespace: str) -> None:
    """An image nobody imported, pulled IfNotPresent: containerd asks a closed loopback port, no DNS, no registry."""
    ns = restricted_namespace
    pod = restricted_pod("pull", "registry.medcloud.local/apps/emr-sharing:2.3.1", ["serve"])
    pod["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    apply(node_cluster, pod, namespace=ns)

    def pull_failure() -> str | None:
        events = get(node_cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=pull")["items"]
        failed = [e["message"] for e in events if e.get("reason") == "Failed" and "pull" in e["message"]]
        return failed[0] if failed else None

    message = wait_for(pull_failure, "the failed pull")
    assert "127.0.0.1:1" in message
    assert "lookup" not in message


def test_kwok_nodes_take_only_pods_that_tolerate_them(node_cluster: LocalCluster, restricted_namespace: str) -> None:
    ns = restricted_namespace
    kwok = [n for n in get(node_cluster, "nodes")["items"] if n["metadata"]["labels"].get("type") == "kwok"]
    assert kwok
    for item in kwok:
        assert {"key": "medcloud.io/fake-node", "value": "kwok", "effect": "NoSchedule"} in item["spec"]["taints"]
    scale = restricted_pod("scale", "registry.medcloud.local/none:0", ["x"])
    scale["spec"]["tolerations"] = [KWOK_TOLERATION]
    scale["spec"]["nodeSelector"] = {"type": "kwok"}
    apply(node_cluster, scale, namespace=ns)

    def running() -> Json | None:
        pod = get(node_cluster, "pod", "scale", "-n", ns)
        return pod if pod["status"].get("phase") == "Running" else None

    pod = wait_for(running, "a scale pod Running on a KWOK node")
    assert pod["spec"]["nodeName"].startswith("kwok-node-")


CHART = Path(__file__).resolve().parents[2] / "charts" / "medcloud"


def test_the_chart_runs_operator_api_and_key_service_as_restricted_pods(
    node_cluster: LocalCluster, image: str, tmp_path: Path
) -> None:
    """`helm install` with the registry-free image: every pod Ready because its process answers its probes."""
    namespace = f"medcloud-{uuid.uuid4().hex[:6]}"
    apply(
        node_cluster,
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        },
    )
    repository, tag = image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "operator": {"replicaCount": 1},
        "api": {"replicaCount": 1},
        "keyService": {"replicaCount": 1},
    }
    (tmp_path / "values.yaml").write_text(json.dumps(values))
    helm = [str(node_cluster.binary("helm")), f"--kubeconfig={node_cluster.kubeconfig}", "-n", namespace]
    release = f"mc-{namespace.rsplit('-', 1)[1]}"
    installed = subprocess.run(
        [*helm, "install", release, str(CHART), "-f", str(tmp_path / "values.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    try:
        deployments = get(node_cluster, "deployments", "-n", namespace)["items"]
        components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments}
        assert {"operator", "api", "keyservice"} <= components
        for deployment in deployments:
            name = deployment["metadata"]["name"]
            rollout = ["rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=180s"]
            if node_cluster.kubectl(*rollout, check=False).returncode != 0:
                described = node_cluster.kubectl("describe", "pods", "-n", namespace, check=False).stdout
                logs = node_cluster.kubectl("logs", "-n", namespace, f"deployment/{name}", check=False)
                raise AssertionError(f"{name} not rolled out:\n{described[-4000:]}\n{logs.stdout[-3000:]}")
        pods = get(node_cluster, "pods", "-n", namespace)["items"]
        for pod in pods:
            assert pod["spec"]["nodeName"] == NODE_NAME
            assert pod["spec"]["containers"][0]["image"] == image
            assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        api_pod = next(p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == "api")
        port = api_pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
        if isinstance(port, str):
            port = next(c["containerPort"] for c in api_pod["spec"]["containers"][0]["ports"] if c["name"] == port)
        with urllib.request.urlopen(f"http://{api_pod['status']['podIP']}:{port}/readyz", timeout=5) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        subprocess.run([*helm, "uninstall", release, "--wait=false"], capture_output=True, check=False, timeout=60)
        node_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def tenant(
    cluster: LocalCluster, name: str, allow_consortium_ingress: bool, settings: OperatorSettings | None = None
) -> str:
    """A tenant namespace with exactly the namespace and NetworkPolicies the operator builds for a Hospital."""
    spec = HospitalSpec.model_validate(
        {
            "displayName": name,
            "institutionCode": "NODETEST" + name.upper().replace("-", "")[:10],
            "tier": "township",
            "consortium": CONSORTIUM,
            "admins": {"groups": [f"{name}-staff"]},
            "network": {"allowConsortiumIngress": allow_consortium_ingress},
        }
    )
    settings = settings or OperatorSettings()
    namespace = hospital_namespace(name)
    apply(cluster, build_namespace(name, spec, settings))
    apply(cluster, *build_network_policies(name, spec, settings), namespace=namespace)
    return namespace


def http_server(cluster: LocalCluster, image: str, namespace: str, name: str) -> str:
    """A pod serving HTTP on 8080 with a readiness probe (kubelet probes pass default-deny); returns its IP."""
    pod = restricted_pod(name, image, [])
    container = pod["spec"]["containers"][0]
    container["command"] = ["python3", "-m", "http.server", "8080", "--directory", "/tmp"]
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2}
    apply(cluster, pod, namespace=namespace)
    return str(ready_pod(cluster, namespace, name)["status"]["podIP"])


def settle(cluster: LocalCluster, namespace: str, pod: str, host: str, port: int, expected: str) -> None:
    """Wait for the enforcer to apply a policy change (kube-router syncs within seconds)."""
    wait_for(
        lambda: connects(cluster, namespace, pod, host, port) == expected,
        f"{namespace}/{pod} -> {host}:{port} {expected}",
        60,
    )


def test_tenant_policies_refuse_other_hospitals_until_the_consortium_allows_them(
    node_cluster: LocalCluster, image: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    caller = tenant(node_cluster, f"np-caller-{suffix}", allow_consortium_ingress=False)
    callee_name = f"np-callee-{suffix}"
    callee = tenant(node_cluster, callee_name, allow_consortium_ingress=False)
    try:
        server = http_server(node_cluster, image, callee, "records")
        http_server(node_cluster, image, caller, "client")
        http_server(node_cluster, image, callee, "neighbour")
        # Same namespace: allowed, so a refusal below is the policy, not the network.
        settle(node_cluster, callee, "neighbour", server, 8080, "open")
        settle(node_cluster, caller, "client", server, 8080, "blocked")

        # The callee lets its consortium in: the operator's policy for that, applied as it would apply it.
        tenant(node_cluster, callee_name, allow_consortium_ingress=True)
        settle(node_cluster, caller, "client", server, 8080, "open")
    finally:
        node_cluster.kubectl("delete", "namespace", caller, callee, "--wait=false", check=False)


def test_a_tenant_pod_cannot_reach_the_kubernetes_api(
    node_cluster: LocalCluster, image: str, restricted_namespace: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    namespace = tenant(node_cluster, f"np-api-{suffix}", allow_consortium_ingress=False)
    try:
        http_server(node_cluster, image, namespace, "client")
        http_server(node_cluster, image, restricted_namespace, "control")
        service = get(node_cluster, "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
        # Without tenant policies a pod reaches the API server through its Service (kube-proxy) ...
        settle(node_cluster, restricted_namespace, "control", service, 443, "open")
        # ... a tenant pod reaches neither the Service nor the node address the API server binds.
        settle(node_cluster, namespace, "client", service, 443, "blocked")
        api_port = int(node_cluster.state.server.rsplit(":", 1)[1])
        assert connects(node_cluster, namespace, "client", netsetup.NODE_IP, api_port) == "blocked"
    finally:
        node_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def node_address_service(cluster: LocalCluster, namespace: str, name: str, port: int) -> str:
    """A Service whose one endpoint is ``port`` on the node's address; returns its ClusterIP."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"}]},
    }
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name},
        "subsets": [{"addresses": [{"ip": netsetup.NODE_IP}], "ports": [{"name": "tcp", "port": port}]}],
    }
    apply(cluster, service, endpoints, namespace=namespace)
    return str(get(cluster, "service", name, "-n", namespace)["spec"]["clusterIP"])


def test_tenant_pods_reach_the_platform_services_on_their_ports_and_nothing_else(
    node_cluster: LocalCluster, image: str, restricted_namespace: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    # The broker as a process on the node's address, not a pod; pods have no route to that address,
    # so they reach it through a Service whose endpoint it is (the policy sees the address after DNAT).
    broker = socket.create_server((netsetup.NODE_IP, 0))
    broker_port = broker.getsockname()[1]
    settings = OperatorSettings(
        platform_egress=[
            {"name": "keyservice", "namespace": restricted_namespace, "pod_labels": {"app": "keys"}, "port": 8080},
            {"name": "broker", "cidrs": [f"{netsetup.NODE_IP}/32"], "port": broker_port},
        ]
    )
    namespace = tenant(node_cluster, f"np-platform-{suffix}", allow_consortium_ingress=False, settings=settings)
    try:
        keys = http_server(node_cluster, image, restricted_namespace, "keys")
        other = http_server(node_cluster, image, restricted_namespace, "other")
        http_server(node_cluster, image, namespace, "client")
        broker_ip = node_address_service(node_cluster, restricted_namespace, "broker", broker_port)
        settle(node_cluster, namespace, "client", keys, 8080, "open")
        # The same namespace and port, another pod: not the key service, so refused.
        assert connects(node_cluster, namespace, "client", other, 8080) == "blocked"
        # Without tenant policies a pod reaches the broker, so a refusal would be the policy, not the network.
        settle(node_cluster, restricted_namespace, "other", broker_ip, broker_port, "open")
        assert connects(node_cluster, namespace, "client", broker_ip, broker_port) == "open"
        # The broker's address on another port (the API server's, behind the same kind of Service): refused.
        api_port = int(node_cluster.state.server.rsplit(":", 1)[1])
        api_ip = node_address_service(node_cluster, restricted_namespace, "not-broker", api_port)
        assert connects(node_cluster, namespace, "client", api_ip, api_port) == "blocked"
    finally:
        broker.close()
        node_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


TLS_HANDSHAKE = (
    "import pathlib, socket, ssl, sys\n"
    "host, port, ca, cert, key = sys.argv[1:]\n"
    "pathlib.Path('/tmp/c.pem').write_text(cert); pathlib.Path('/tmp/k.pem').write_text(key)\n"
    "context = ssl.create_default_context(cadata=ca)\n"
    "context.load_cert_chain('/tmp/c.pem', '/tmp/k.pem')\n"
    "with socket.create_connection((host, int(port)), timeout=5) as raw:\n"
    "    with context.wrap_socket(raw, server_hostname=host) as tls:\n"
    "        print(tls.version())\n"
)
HTTP_STATUS = "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"


def test_tenant_pods_reach_minio_and_the_broker_through_the_platform_services_and_nothing_else(
    node_cluster: LocalCluster, image: str, restricted_namespace: str
) -> None:
    """The host's MinIO and broker as the operator's own settings (the platform contract) present them to tenants:
    Services on fixed addresses; the tenant's egress admits them and still refuses the API and other hospitals."""
    state = node_cluster.state
    assert state is not None
    assert state.broker is not None
    published = platformservices.endpoints(state)
    assert set(published) == {"minio", "mosquitto", "postgres"}
    # Read from the environment as the operator reads it.
    with mock.patch.dict(os.environ, platformservices.operator_env(state)):
        settings = OperatorSettings()
    assert settings.minio_public_endpoint == f"http://{platformservices.MINIO.cluster_ip}:9000"
    assert (settings.broker_host, settings.broker_port) == (platformservices.BROKER.cluster_ip, 8883)
    suffix = uuid.uuid4().hex[:6]
    namespace = tenant(node_cluster, f"np-services-{suffix}", allow_consortium_ingress=False, settings=settings)
    other = tenant(node_cluster, f"np-other-{suffix}", allow_consortium_ingress=False, settings=settings)
    try:
        http_server(node_cluster, image, namespace, "client")
        neighbour = http_server(node_cluster, image, other, "records")
        minio_health = f"{settings.minio_public_endpoint}/minio/health/live"
        wait_for(
            lambda: (
                node_cluster.kubectl(
                    "exec", "-n", namespace, "client", "--", "python3", "-c", HTTP_STATUS, minio_health, check=False
                ).stdout.strip()
                == "200"
            ),
            "MinIO answering a tenant pod at its Service",
            60,
        )
        broker = platformservices.BROKER
        handshake = node_cluster.kubectl(
            "exec", "-n", namespace, "client", "--", "python3", "-c", TLS_HANDSHAKE,
            broker.cluster_ip, str(broker.port), Path(state.broker.ca_file).read_text(),
            Path(state.broker.client_cert).read_text(), Path(state.broker.client_key).read_text(),
        )  # fmt: skip
        # Mutual TLS with the broker's certificate verified for its Service address.
        assert handshake.stdout.strip().startswith("TLSv1.")
        # PostgreSQL is the exchange's, not the tenants': its Service answers a pod without tenant
        # policies, and is refused to the tenant.
        postgres = platformservices.POSTGRES
        http_server(node_cluster, image, restricted_namespace, "control")
        settle(node_cluster, restricted_namespace, "control", postgres.cluster_ip, postgres.port, "open")
        assert connects(node_cluster, namespace, "client", postgres.cluster_ip, postgres.port) == "blocked"
        api = get(node_cluster, "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
        assert connects(node_cluster, namespace, "client", api, 443) == "blocked"
        # Another hospital's pod (it does not admit its consortium).
        assert connects(node_cluster, namespace, "client", neighbour, 8080) == "blocked"
    finally:
        node_cluster.kubectl("delete", "namespace", namespace, other, "--wait=false", check=False)


RESOLVE = (
    "import socket, sys\ntry:\n    print(socket.gethostbyname(sys.argv[1]))\nexcept OSError:\n    print('unresolved')\n"
)


def resolves(cluster: LocalCluster, namespace: str, pod: str, name: str) -> str:
    """The address ``name`` resolves to inside ``pod`` (its resolv.conf, the kubelet's), or 'unresolved'."""
    args = ["exec", "-n", namespace, pod, "--", "python3", "-c", RESOLVE, name]
    return str(cluster.kubectl(*args).stdout.strip())


def test_a_tenant_pod_resolves_service_names_through_the_cluster_dns_and_still_cannot_reach_the_api(
    node_cluster: LocalCluster, image: str, restricted_namespace: str
) -> None:
    """CoreDNS on the node behind kube-dns: a tenant's DNS egress admits it, and nothing more of the node."""
    state = node_cluster.state
    assert state is not None
    with mock.patch.dict(os.environ, platformservices.operator_env(state)):
        settings = OperatorSettings()
    assert settings.dns_cidrs == [platformservices.NODE_CIDR]
    suffix = uuid.uuid4().hex[:6]
    namespace = tenant(node_cluster, f"np-dns-{suffix}", allow_consortium_ingress=False, settings=settings)
    try:
        http_server(node_cluster, image, namespace, "client")
        resolv = node_cluster.kubectl("exec", "-n", namespace, "client", "--", "cat", "/etc/resolv.conf").stdout
        assert f"nameserver {clusterdns.DNS_IP}" in resolv
        # A Service made now (CoreDNS watches), by the short name an app uses (the pod's search path) ...
        exchange_ip = node_address_service(node_cluster, restricted_namespace, "exchange-like", 18080)
        wait_for(
            lambda: (
                resolves(node_cluster, namespace, "client", f"exchange-like.{restricted_namespace}.svc") == exchange_ip
            ),
            "a new Service's name resolving in a tenant pod",
            60,
        )
        # ... and by its full name; the platform Services too.
        full = f"minio.{platformservices.PLATFORM_NAMESPACE}.svc.cluster.local"
        assert resolves(node_cluster, namespace, "client", full) == platformservices.MINIO.cluster_ip
        api = get(node_cluster, "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
        assert resolves(node_cluster, namespace, "client", "kubernetes.default.svc") == api
        # Names outside the cluster are answered by no one: CoreDNS forwards nothing off the machine.
        assert resolves(node_cluster, namespace, "client", "example.com") == "unresolved"
        # DNS is let out; the API server (its Service, and its port on the node address) is not.
        assert connects(node_cluster, namespace, "client", api, 443) == "blocked"
        api_port = int(node_cluster.state.server.rsplit(":", 1)[1])
        assert connects(node_cluster, namespace, "client", netsetup.NODE_IP, api_port) == "blocked"
    finally:
        node_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_stop_leaves_no_chain_ipset_cgroup_bridge_mount_or_path(node_cluster: LocalCluster) -> None:
    """Stops the module's cluster and checks each kind of side effect."""
    node = node_cluster.node
    assert node is not None
    assert node.footprint is not None
    footprint, state_dir = node.footprint, node_cluster.state_dir
    # The node really had each kind of footprint while it ran.
    assert netsetup.kube_chains_left()
    assert netsetup.kube_cgroups()
    assert netsetup.mounts_under([state_dir])
    node_cluster.stop()
    assert netsetup.kube_chains_left() == []
    assert netsetup.kube_ipsets() == []
    assert netsetup.kube_cgroups() == []
    assert not netsetup.link_exists(netsetup.NODE_BRIDGE)
    assert not netsetup.link_exists(netsetup.POD_BRIDGE)
    assert netsetup.mounts_under([state_dir, *netsetup.NETNS_DIRS, Path("/run/containerd")]) == []
    assert netsetup.leftovers(state_dir, footprint) == []


def test_dev_down_undoes_a_crashed_node(node_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """After the module's cluster stopped: a detached node whose servers all die at once (nothing undone),
    then what `medcloud dev down` runs. Containers, shims and every side effect go."""
    state_dir = tmp_path_factory.mktemp("medcloud-node-crash")
    options = ClusterOptions(nodes=0, with_kwok=False, with_minio=False, with_broker=False, real_node=True, detach=True)
    cluster = LocalCluster(state_dir, options)
    cluster.start()
    try:
        assert cluster.node is not None
        assert cluster.node.footprint is not None
        node_dir, footprint = cluster.node.dir, cluster.node.footprint
        pod = restricted_pod("sandbox", PAUSE_REFERENCE, [])
        pod["spec"]["containers"][0]["command"] = ["/pause"]
        apply(cluster, pod)
        ready_pod(cluster, "default", "sandbox")
        assert shim_pids(node_dir)
        for proc in cluster.processes:
            assert proc.pid is not None
            os.killpg(proc.pid, signal.SIGKILL)
        assert shim_pids(node_dir), "shims outlive containerd: the teardown must find them"
    finally:
        stop_from_state(state_dir)
    assert shim_pids(node_dir) == []
    assert netsetup.leftovers(state_dir, footprint) == []
