"""`medcloud dev up` in chart mode: MedCloud from its Helm chart as pods on the real node, then examples/.

Runs the command a person runs (as subprocesses, detached servers, its own
state folder), so it needs Linux root and skips when another real node runs.
The operator reconciling examples/ is the chart's pod (no operator process
runs on the machine): Hospitals and RecordStores go Ready with buckets made in
the host's MinIO through the platform Service, and a store's own credentials
(from its Secret, the Service address in it) put and read an object. `dev
down` at the end leaves no chain, bridge, cgroup or mount.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from medcloud_cli import environment as env
from medcloud_cli.localcluster import netsetup, platformservices
from medcloud_cli.localcluster.chartplatform import NAMESPACE, RELEASE
from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster
from medcloud_cli.localcluster.node import NODE_NAME, real_node_supported
from tests.device_support import blood_pressure, device, device_csr, https_reading
from tests.node_support import connects
from tests.support import wait_for

pytestmark = [pytest.mark.node, pytest.mark.cluster]

SUPPORTED, WHY_NOT = real_node_supported()
REPO = Path(__file__).resolve().parents[2]
MEDCLOUD = [sys.executable, "-m", "medcloud_cli.main"]
Json = dict[str, Any]


@dataclass
class DevUp:
    state_dir: Path
    exports: dict[str, str]
    stderr: str
    cluster: LocalCluster

    @property
    def state(self) -> ClusterState:
        return ClusterState.load(self.state_dir / LocalCluster.STATE_FILE)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = self.cluster.kubectl(*args, check=check)
        return done

    def get(self, *args: str) -> Json:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))


def medcloud(
    *args: str, timeout: float = 900, exports: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCLOUD_") and k != "KUBECONFIG"}
    env.update(exports or {})
    return subprocess.run(
        [*MEDCLOUD, *args], capture_output=True, text=True, check=False, timeout=timeout, env=env, cwd=REPO
    )


@pytest.fixture(scope="module")
def dev_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevUp]:
    if not SUPPORTED:
        pytest.skip(WHY_NOT)
    if netsetup.link_exists(netsetup.NODE_BRIDGE):
        pytest.skip("another real node runs on this machine (one at a time)")
    state_dir = tmp_path_factory.mktemp("medcloud-dev-chart")
    up = medcloud("dev", "up", "--state-dir", str(state_dir), "--nodes", "1", "--platform", "chart")
    try:
        assert up.returncode == 0, f"dev up failed:\n{up.stderr[-6000:]}"
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines() if line.startswith("export ")
        )
        yield DevUp(state_dir, exports, up.stderr, LocalCluster(state_dir))
    finally:
        down = medcloud("dev", "down", "--state-dir", str(state_dir), timeout=300)
        print(down.stderr)


def ready(item: Json) -> bool:
    conditions = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def test_dev_up_runs_operator_api_and_key_service_from_the_chart_as_restricted_pods(dev_up: DevUp) -> None:
    state = dev_up.state
    assert state.extra["platformMode"] == "chart"
    # No MedCloud process on the machine: the operator, API and key service are the chart's pods.
    assert not {"operator", "api", "keyservice"} & set(state.pids)
    namespace = dev_up.get("namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = dev_up.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in pods}
    assert set(components) == {"operator", "api", "keyservice"}
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["spec"]["containers"][0]["image"] == state.extra["image"]
        assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Never"
        assert ready(pod), pod["metadata"]["name"]
    policies = {p["metadata"]["name"] for p in dev_up.get("networkpolicies", "-n", NAMESPACE)["items"]}
    assert {f"{RELEASE}-operator", f"{RELEASE}-api", f"{RELEASE}-keyservice"} <= policies

    # The export lines point at the pods: the API answers the city administrator's token from the machine.
    api_url = dev_up.exports[env.API_URL]
    assert api_url == f"http://{platformservices.API_IP}:8080"
    request = urllib.request.Request(  # noqa: S310 - the Service address dev up printed
        f"{api_url}/v1/hospitals", headers={"Authorization": f"Bearer {dev_up.exports[env.API_TOKEN]}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 200
    assert dev_up.exports[env.KEY_SERVICE_URL] == f"http://{platformservices.KEY_SERVICE_IP}:8443"
    # The consortium's exchange is the operator's pod once the Consortium is applied (the next test).
    assert dev_up.exports[env.EXCHANGE_URL] == f"http://{platformservices.EXCHANGE.cluster_ip}:8080"

    status = medcloud("dev", "status", "--state-dir", str(dev_up.state_dir), timeout=120)
    assert status.returncode == 0, status.stderr
    assert "deployed" in status.stdout  # helm list
    for component in ("operator", "api", "keyservice"):
        assert f"{RELEASE}-{component}-" in status.stdout


def wait_all_ready(dev_up: DevUp, kind: str, expected: int, timeout: float = 300) -> list[Json]:
    deadline = time.monotonic() + timeout
    items: list[Json] = []
    while time.monotonic() < deadline:
        items = dev_up.get(kind, "-A")["items"]
        if len(items) == expected and all(ready(i) for i in items):
            return items
        time.sleep(2)
    summary = [(i["metadata"].get("namespace"), i["metadata"]["name"], i.get("status", {})) for i in items]
    logs = dev_up.kubectl("logs", "-n", NAMESPACE, f"deployment/{RELEASE}-operator", "--tail=40", check=False)
    raise AssertionError(f"{kind} not all Ready: {json.dumps(summary)[:3000]}\n{logs.stdout[-3000:]}")


def examples_count(kind: str) -> int:
    import yaml

    return sum(
        1
        for path in (REPO / "examples").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == kind
    )


def test_the_operator_pod_reconciles_examples_with_real_minio_through_the_service(dev_up: DevUp) -> None:
    dev_up.kubectl("apply", "-f", str(REPO / "examples"))
    wait_all_ready(dev_up, "hospitals", examples_count("Hospital"))
    stores = wait_all_ready(dev_up, "recordstores", examples_count("RecordStore"))

    state = dev_up.state
    assert state.minio is not None
    root = Minio(state.minio.endpoint, state.minio.access_key, state.minio.secret_key, secure=False)
    store = stores[0]
    secret = dev_up.get("secret", f"{store['metadata']['name']}-credentials", "-n", store["metadata"]["namespace"])
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    # The endpoint tenants get is MinIO's platform Service; the bucket exists in the host's MinIO.
    assert data["COSI_S3_ENDPOINT"] == f"http://{platformservices.MINIO.cluster_ip}:9000"
    assert data["MEDCLOUD_KEY_SERVICE_URL"] == f"http://{platformservices.KEY_SERVICE_IP}:8443"
    assert root.bucket_exists(data["BUCKET_NAME"])
    assert root.get_object_lock_config(data["BUCKET_NAME"]) is not None
    # The store's own least-privilege credentials work at the Service address (reachable from the machine too).
    own = Minio(
        f"{platformservices.MINIO.cluster_ip}:9000",
        data["AWS_ACCESS_KEY_ID"],
        data["AWS_SECRET_ACCESS_KEY"],
        secure=False,
    )
    own.put_object(data["BUCKET_NAME"], "probe/ciphertext", io.BytesIO(b"\x00\x01"), 2)
    assert own.get_object(data["BUCKET_NAME"], "probe/ciphertext").read() == b"\x00\x01"

    operator_log = dev_up.kubectl("logs", "-n", NAMESPACE, f"deployment/{RELEASE}-operator", check=False).stdout
    assert store["metadata"]["name"] in operator_log

    # The Consortium's exchange is the operator's pod, on the platform PostgreSQL through its Service.
    wait_all_ready(dev_up, "consortia", examples_count("Consortium"))
    with urllib.request.urlopen(f"{dev_up.exports[env.EXCHANGE_URL]}/fhir/metadata", timeout=10) as response:  # noqa: S310
        assert json.loads(response.read())["resourceType"] == "CapabilityStatement"


PRESENCE_DEVICE = "ward-7-cuff-03"


def gateway_pods(dev_up: DevUp, namespace: str, expected: int) -> list[Json]:
    """The gateway ``wards`` of ``namespace``: its pods once ``expected`` of them are Ready."""

    def all_ready() -> list[Json] | None:
        found = dev_up.get("pods", "-n", namespace, "-l", "app.kubernetes.io/instance=wards")["items"]
        return found if len(found) == expected and all(ready(p) for p in found) else None

    return wait_for(all_ready, f"{namespace}/wards: {expected} pods Ready", 600, interval=2)


def test_the_operator_pod_counts_a_device_that_sent_over_https_and_other_tenants_cannot_ask(
    dev_up: DevUp, tmp_path: Path
) -> None:
    """status.devices.active from the chart's operator pod: the gateway's policy admits it (its namespace and
    labels) to the health port, its own egress policy lets it out to that port; a pod of another hospital,
    whose egress reaches that hospital (a fellow consortium member), still cannot open the port."""
    city, county = "hospital-city-general", "hospital-county-people"
    dev_up.kubectl("apply", "-f", str(REPO / "examples" / "hospital-city-general.yaml"))
    dev_up.kubectl("apply", "-f", str(REPO / "examples" / "hospital-county-people.yaml"))
    csr, key_file = device_csr(tmp_path, PRESENCE_DEVICE)
    cuff = device(PRESENCE_DEVICE, city, "wards", "blood-pressure", csr)
    dev_up.cluster.kubectl("apply", "-f", "-", input=json.dumps(cuff))

    def enrolled() -> str | None:
        status = dev_up.get("device", PRESENCE_DEVICE, "-n", city).get("status") or {}
        return status.get("certificate") if status.get("state") == "Enrolled" else None

    cert_file = tmp_path / f"{PRESENCE_DEVICE}.crt"
    cert_file.write_text(wait_for(enrolled, "the device enrolled", 300, interval=1))
    city_pods = gateway_pods(dev_up, city, 3)

    # The policy the operator pod built: its namespace and its selector labels, the health port only.
    policy = dev_up.get("networkpolicy", "gw-wards", "-n", city)
    operator_pods = dev_up.get("deployment", f"{RELEASE}-operator", "-n", NAMESPACE)["spec"]["selector"]
    assert policy["spec"]["ingress"][-1] == {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "podSelector": operator_pods,
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }

    service = dev_up.get("service", "gw-wards", "-n", city)["spec"]["clusterIP"]
    trust = dev_up.get("secret", "medcloud-device-trust", "-n", city)
    ca_pem = base64.b64decode(trust["data"]["ca.crt"])
    reading = blood_pressure("Patient/p-1001", 128, 84)
    status, body = https_reading(service, f"gw-wards.{city}.svc", ca_pem, cert_file, key_file, reading)
    assert (status, body["result"]) == (201, "stored"), body

    def active() -> int | None:
        devices = dev_up.get("devicegateway", "wards", "-n", city)["status"]["devices"]
        return devices.get("active") or None

    try:
        # The operator asks every 30 s (the chart's gatewayPresenceSeconds).
        assert wait_for(active, "status.devices.active", 180, interval=2) == 1
    except AssertionError:
        logs = dev_up.kubectl("logs", "-n", NAMESPACE, f"deployment/{RELEASE}-operator", "--tail=60", check=False)
        raise AssertionError(f"active never counted:\n{logs.stdout[-4000:]}") from None

    # Another hospital's pod (a City General gateway's: a consortium member, whose egress reaches County
    # People, which admits members, allowConsortiumIngress being the default): County People's gateway
    # takes it on its device port, never on its health port.
    county_ip = gateway_pods(dev_up, county, 2)[0]["status"]["podIP"]
    caller = city_pods[0]["metadata"]["name"]

    def opens(port: int) -> str:
        return connects(dev_up.cluster, city, caller, county_ip, port)

    assert wait_for(lambda: opens(2575) == "open" or None, "the device port open to another tenant", 60)
    assert opens(8080) == "blocked"


IN_POD_GET = "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"


def test_every_app_of_examples_runs_as_ready_pods_that_reach_their_exchange_by_its_service_name(
    dev_up: DevUp,
) -> None:
    """The catalog apps of examples/ as pods on the one node: all scheduled (small requests), all Ready
    (the kubelet's probe of each app's process), and each reaches the exchange by name (cluster DNS)."""
    dev_up.kubectl("apply", "-f", str(REPO / "examples"))
    started = time.monotonic()
    apps = wait_all_ready(dev_up, "appinstances", examples_count("AppInstance"), timeout=900)
    print(f"examples/ AppInstances all Ready {time.monotonic() - started:.0f} s after the apply")
    for app in apps:
        namespace, name = app["metadata"]["namespace"], app["metadata"]["name"]
        selector = f"app.kubernetes.io/component=appinstance,app.kubernetes.io/instance={name}"
        pods = dev_up.get("pods", "-n", namespace, "-l", selector)["items"]
        assert pods, f"{namespace}/{name} has no pods"
        for pod in pods:
            assert pod["spec"]["nodeName"] == NODE_NAME
            assert ready(pod), f"{namespace}/{pod['metadata']['name']}"
        (container,) = pods[0]["spec"]["containers"]
        exchange = next(e["value"] for e in container["env"] if e["name"] == "MEDCLOUD_EXCHANGE_URL")
        assert ".svc" in exchange, exchange
        # The app's own pod, through its tenant's policies: the name resolves and the exchange answers.
        status = dev_up.kubectl(
            "exec", "-n", namespace, pods[0]["metadata"]["name"], "--",
            "python3", "-c", IN_POD_GET, f"{exchange}/fhir/metadata",
        )  # fmt: skip
        assert status.stdout.strip() == "200", (namespace, name, status.stderr)


def test_the_scenario_runs_through_the_app_pods_as_medcloud_demo_scenario_runs_it(dev_up: DevUp) -> None:
    """The issue's scenario after `kubectl apply -f examples/`, as a person runs it with `dev up`'s exports:
    every step through the app pod that fronts it at its hospital (its Service's ClusterIP, from the machine
    through kube-proxy), each app calling the exchange pod as its own service account."""
    dev_up.kubectl("apply", "-f", str(REPO / "examples"))
    wait_all_ready(dev_up, "appinstances", examples_count("AppInstance"), timeout=900)
    started = time.monotonic()
    done = medcloud("demo", "scenario", "--mint", "--through-apps", timeout=600, exports=dev_up.exports)
    print(f"the scenario through the app pods took {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    print(done.stdout)
    # Every AppInstance of examples/ found at its Service (a step whose app is not there would stop the run).
    assert f"through {examples_count('AppInstance')} catalog apps at their Services" in done.stderr
    said = done.stdout.splitlines()
    assert said[-1] == "scenario complete"
    assert [line.split(".", 1)[0] for line in said[:-1]] == [str(step) for step in range(8)]
    assert "tests not repeated" in said[2]
    assert said[7].endswith(": city-general, county-people, village-willow")


def test_dev_down_removes_everything_from_the_machine(dev_up: DevUp) -> None:
    down = medcloud("dev", "down", "--state-dir", str(dev_up.state_dir), timeout=300)
    assert down.returncode == 0, down.stderr
    assert "kubelet" in down.stderr
    assert netsetup.kube_chains_left() == []
    assert netsetup.kube_ipsets() == []
    assert netsetup.kube_cgroups() == []
    assert not netsetup.link_exists(netsetup.NODE_BRIDGE)
    assert not netsetup.link_exists(netsetup.POD_BRIDGE)
    assert netsetup.mounts_under([dev_up.state_dir, *netsetup.NETNS_DIRS, Path("/run/containerd")]) == []
