"""The device gateway of examples/ as real pods: Ready because its listeners are; an HL7 v2 message stored, read back.

One private local cluster with a real kubelet node for this module (Linux
root; skipped elsewhere, or while another real node runs on the machine).
MinIO and the broker are the cluster's host processes, which pods reach
through the platform Services (``medcloud_cli.localcluster.platformservices``);
the key service runs beside them on the node address, behind a Service of
the same kind; the operator runs in this process as its own ServiceAccount.
Everything the gateway pod has comes from the operator: the image and
``args``, the key-service token, the broker address and client certificate,
the serving certificate, the device CA and CRL.

The flow: the examples' Hospital, device-data RecordStore and ``wards``
DeviceGateway, and the example Device, applied as they are; a second Device
enrolled with a key this test holds; the gateway's pods Running and Ready
(the readiness probe is the gateway's own ``/readyz``: MQTT subscribed at the
real broker, MLLP and HTTPS listening); a public IHE PCD-01 message sent
through the gateway's Service over MLLP with TLS and that device's
certificate, answered AA; the record in MinIO is ciphertext; `medcloud
records get` reads the Observation back with the gateway's own key-service
identity; `kubectl logs` and `kubectl exec` work on a gateway pod.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config
from minio import Minio
from typer.testing import CliRunner

from medcloud.kube.crds import install_crds
from medcloud.tenancy.mqtt import readings_topic
from medcloud_cli.localcluster import netsetup, platform, platformservices
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.kubeconfig import build_token_kubeconfig, write_kubeconfig
from medcloud_cli.localcluster.process import free_port
from medcloud_cli.main import app as medcloud_cli
from tests.device_support import blood_pressure, device, device_csr, https_reading, mqtt_reading
from tests.node_support import imported_image, private_node_cluster
from tests.operator_support import RunningOperator, run_operator, sample
from tests.support import wait_for

pytestmark = [pytest.mark.node, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PCD01 = REPO / "tests" / "data" / "devices" / "hl7v2" / "ipf-pcd01-request.hl7"
NAMESPACE = "hospital-city-general"
GATEWAY = "wards"
DEVICE = "ward-7-monitor-02"
KEY_SERVICE = platformservices.PlatformService("keyservice", platformservices.KEY_SERVICE_IP, 8443)
Json = dict[str, Any]


def example(path: Path, kind: str, name: str) -> Json:
    """One document of an examples/ file, exactly as written there."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
            return dict(doc)
    raise AssertionError(f"{path.name} has no {kind} {name}")


def apply(cluster: LocalCluster, *manifests: Json) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))


def get(cluster: LocalCluster, *args: str) -> Json:
    return dict(json.loads(cluster.kubectl("get", *args, "-o", "json").stdout))


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback-only URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- the platform


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # MinIO and the broker too (PostgreSQL is the exchange's, not needed here).
    options = ClusterOptions(nodes=1, real_node=True, with_postgres=False)
    with private_node_cluster(tmp_path_factory.mktemp("medcloud-gateway-node"), options, "gateway node") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def image(node_cluster: LocalCluster) -> str:
    return imported_image(node_cluster)


@pytest.fixture(scope="module")
def service_kubeconfigs(node_cluster: LocalCluster) -> dict[str, Path]:
    """MedCloud's CRDs and RBAC (deploy/), and a kubeconfig per platform ServiceAccount, as `dev up` makes them."""
    state = node_cluster.state
    assert state is not None
    api = config.new_client_from_config(config_file=str(node_cluster.kubeconfig))
    try:
        install_crds(api)
        node_cluster.kubectl("create", "namespace", platform.SYSTEM_NAMESPACE, check=False)
        node_cluster.kubectl("apply", "-f", str(platform.deploy_dir()))
        tokens = {sa: platform.service_account_token(api, sa) for sa in platform.SERVICE_ACCOUNTS}
    finally:
        api.close()
    return {
        sa: write_kubeconfig(
            node_cluster.state_dir / f"kubeconfig-{sa}",
            build_token_kubeconfig(
                state.server,
                node_cluster.ca.paths.cert,
                f"system:serviceaccount:{platform.SYSTEM_NAMESPACE}:{sa}",
                token,
            ),
        )
        for sa, token in tokens.items()
    }


@pytest.fixture(scope="module")
def key_service_port(node_cluster: LocalCluster, service_kubeconfigs: dict[str, Path]) -> int:
    """The key service on the node address, published to pods as a platform Service; returns its port there."""
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PYTHONUNBUFFERED": "1",
        "MEDCLOUD_KEYSERVICE_KUBECONFIG": str(service_kubeconfigs["medcloud-keyservice"]),
        "MEDCLOUD_KEYSERVICE_OPERATOR_NAMESPACE": platform.SYSTEM_NAMESPACE,
        "MEDCLOUD_KEYSERVICE_AUDIENCE": platform.KEY_SERVICE_AUDIENCE,
        "MEDCLOUD_KEYSERVICE_HOST": netsetup.NODE_IP,
        "MEDCLOUD_KEYSERVICE_PORT": str(port),
    }
    keys = node_cluster.spawn("keyservice", [sys.executable, "-m", "medcloud_keyservice"], (port,), env=env)
    keys.wait_ready(lambda: answers(f"http://{netsetup.NODE_IP}:{port}/readyz"), 60)
    apply(node_cluster, platformservices.namespace_manifest(), *platformservices.service_manifests(KEY_SERVICE, port))
    return port


@pytest.fixture(scope="module")
def operator(
    node_cluster: LocalCluster, image: str, service_kubeconfigs: dict[str, Path], key_service_port: int
) -> Iterator[RunningOperator]:
    """The whole operator as `dev up` would configure it for a real node: pods reach everything by Service."""
    state = node_cluster.state
    assert state is not None
    storage = platform.storage_env(node_cluster)
    egress = json.loads(storage.get("MEDCLOUD_PLATFORM_EGRESS", "[]"))
    egress.append({"name": "keyservice", "cidrs": [platformservices.NODE_CIDR], "port": key_service_port})
    repository, tag = image.rsplit(":", 1)
    env = {
        **storage,
        **platform.broker_env(node_cluster),
        "MEDCLOUD_PLATFORM_EGRESS": json.dumps(egress),
        "MEDCLOUD_KEY_SERVICE_URL": f"http://{KEY_SERVICE.cluster_ip}:{KEY_SERVICE.port}",
        "MEDCLOUD_OPERATOR_NAMESPACE": platform.SYSTEM_NAMESPACE,
        "MEDCLOUD_GATEWAY_IMAGE": repository,
        "MEDCLOUD_GATEWAY_VERSION": tag,
        "MEDCLOUD_IMAGE_PULL_POLICY": "Never",
        **platform.presence_env(node_cluster),
        "MEDCLOUD_GATEWAY_PRESENCE_SECONDS": "2",
    }
    assert "MEDCLOUD_BROKER_HOST" in env, "the broker is not published to pods (platformservices)"
    with run_operator(service_kubeconfigs["medcloud-operator"], env, timeout=120) as running:
        yield running


# --------------------------------------------------------------------------- a device of the ward


def mllp_tls(host: str, server_name: str, ca_pem: bytes, cert: Path, key: Path, message: bytes) -> str:
    """One MLLP block over TLS with a device certificate; the ACK's text."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.load_cert_chain(str(cert), str(key))
    with (
        socket.create_connection((host, 2575), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(b"\x0b" + message + b"\x1c\x0d")
        answer = b""
        while not answer.endswith(b"\x1c\x0d"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.strip(b"\x0b\x1c\x0d").decode()


# --------------------------------------------------------------------------- the test


def test_the_example_gateway_runs_as_ready_pods_and_stores_a_pcd01_message_read_back_encrypted(
    node_cluster: LocalCluster, operator: RunningOperator, key_service_port: int, tmp_path: Path
) -> None:
    city = EXAMPLES / "hospital-city-general.yaml"
    apply(
        node_cluster,
        example(city, "Namespace", NAMESPACE),
        example(city, "Hospital", "city-general"),
        example(city, "RecordStore", "device-data"),
        example(city, "DeviceGateway", GATEWAY),
        example(EXAMPLES / "ward-devices.yaml", "Device", "ward-7-oximeter-01"),
    )
    csr, key_file = device_csr(tmp_path, DEVICE)
    apply(node_cluster, device(DEVICE, NAMESPACE, GATEWAY, "blood-pressure", csr))

    def enrolled() -> str | None:
        status = get(node_cluster, "device", DEVICE, "-n", NAMESPACE).get("status") or {}
        return status.get("certificate") if status.get("state") == "Enrolled" else None

    cert_file = tmp_path / f"{DEVICE}.crt"
    cert_file.write_text(wait_for(enrolled, "the device enrolled", 180, interval=1))

    # The gateway Ready because its pods are, and they are because the gateway process's /readyz says so.
    def ready() -> Json | None:
        gateway = get(node_cluster, "devicegateway", GATEWAY, "-n", NAMESPACE)
        conditions = {c["type"]: c for c in (gateway.get("status") or {}).get("conditions", [])}
        return gateway if conditions.get("Ready", {}).get("status") == "True" else None

    wait_for(ready, "the DeviceGateway Ready", 300, interval=1)
    spec = example(city, "DeviceGateway", GATEWAY)["spec"]
    pods = get(node_cluster, "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={GATEWAY}")["items"]
    assert len(pods) == spec["replicas"]
    for pod in pods:
        assert pod["spec"]["nodeName"] == "medcloud-node"
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        container = pod["spec"]["containers"][0]
        assert container["args"] == ["gateway"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # Its Devices counted: the example's (waiting for an approver) and ours.
    def counted() -> Json | None:
        devices = get(node_cluster, "devicegateway", GATEWAY, "-n", NAMESPACE)["status"]["devices"]
        return devices if (devices["enrolled"], devices["pending"]) == (1, 1) else None

    wait_for(counted, "the gateway counting one enrolled and one pending Device", 60, interval=1)
    pod_name = pods[0]["metadata"]["name"]

    # kubectl logs: the real process, subscribed at the real broker through its Service.
    logs = node_cluster.kubectl("logs", "-n", NAMESPACE, pod_name).stdout
    broker = platformservices.BROKER
    hospital = NAMESPACE.removeprefix("hospital-")
    assert f"subscribed to devices/{hospital}/+/readings on {broker.cluster_ip}:{broker.port}" in logs
    # kubectl exec: the broker client certificate is there, on a read-only mount, and it is the operator's.
    mounts = node_cluster.kubectl("exec", "-n", NAMESPACE, pod_name, "--", "cat", "/proc/self/mounts").stdout
    options = {line.split()[1]: line.split()[3].split(",") for line in mounts.splitlines()}
    for directory in ("broker-tls", "serving-tls", "device-trust"):
        assert "ro" in options[f"/etc/medcloud/{directory}"], directory
    mounted = node_cluster.kubectl(
        "exec", "-n", NAMESPACE, pod_name, "--", "cat", "/etc/medcloud/broker-tls/tls.crt"
    ).stdout
    secret = get(node_cluster, "secret", f"gw-{GATEWAY}-broker", "-n", NAMESPACE)
    assert mounted == base64.b64decode(secret["data"]["tls.crt"]).decode()

    # A public IHE PCD-01 message (oehf/ipf, tests/data/devices/SOURCES.md) through the gateway's Service,
    # MLLP over TLS with the enrolled device's certificate; the server certificate is checked for the
    # Service's name, with the hospital's device CA.
    service = get(node_cluster, "service", f"gw-{GATEWAY}", "-n", NAMESPACE)["spec"]["clusterIP"]
    trust = get(node_cluster, "secret", "medcloud-device-trust", "-n", NAMESPACE)
    ca_pem = base64.b64decode(trust["data"]["ca.crt"])
    ack = mllp_tls(service, f"gw-{GATEWAY}.{NAMESPACE}.svc", ca_pem, cert_file, key_file, PCD01.read_bytes())
    msa = next(line for line in ack.split("\r") if line.startswith("MSA")).split("|")
    assert msa[1:4] == ["AA", "MSGID1234", "stored 1 observation(s)"], ack

    # HTTPS with the same certificate: the reading's device is the certificate's.
    reading = blood_pressure("Patient/789567", 131, 86)
    status, body = https_reading(service, f"gw-{GATEWAY}.{NAMESPACE}.svc", ca_pem, cert_file, key_file, reading)
    assert (status, body["result"]) == (201, "stored"), body

    # MQTT through the platform broker: the operator's trust bundle names the hospital's CA and the gateway's
    # grant, dev up's broker-sync hands it to Mosquitto; the enrolled device publishes on its own topic and a
    # gateway pod, subscribed under its identity, stores it.
    platform_broker = node_cluster.state.broker if node_cluster.state else None
    assert platform_broker is not None
    topic = readings_topic(hospital, DEVICE)
    over_mqtt = blood_pressure("Patient/789567", 128, 82, time="2024-05-01T08:45:00+08:00")  # a later reading
    wait_for(
        lambda: mqtt_reading(
            platform_broker.host, platform_broker.port, platform_broker.ca_file, cert_file, key_file, topic, over_mqtt
        ),
        "the broker accepting the enrolled device once the sync wrote the operator's bundle",
        60,
        interval=1,
    )

    # Active: the enrolled device one replica saw just now (the MLLP message named its monitor, no Device).
    def active() -> int | None:
        devices = get(node_cluster, "devicegateway", GATEWAY, "-n", NAMESPACE)["status"]["devices"]
        return devices.get("active") or None

    assert wait_for(active, "status.devices.active", 60, interval=1) == 1
    assert sample(operator.metrics(), "medcloud_devices", namespace=NAMESPACE, gateway=GATEWAY, state="active") == 1

    # Stored encrypted: what MinIO holds names neither the patient nor the resource.
    store = get(node_cluster, "recordstore", "device-data", "-n", NAMESPACE)
    bucket = store["status"]["bucket"]
    state = node_cluster.state
    assert state is not None
    assert state.minio is not None
    root = Minio(
        state.minio.endpoint, access_key=state.minio.access_key, secret_key=state.minio.secret_key, secure=False
    )

    def stored_three() -> list[str] | None:
        names = [str(o.object_name) for o in root.list_objects(bucket, prefix="fhir/Observation/", recursive=True)]
        return names if len(names) >= 3 else None

    try:
        stored = wait_for(stored_three, "the MLLP, HTTPS and MQTT readings stored", 60, interval=1)
    except AssertionError:
        # What a failure needs to be read: the pods' logs, the broker's, the sync's and the ACL it wrote.
        for pod in pods:
            print(node_cluster.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"]).stdout[-4000:])
        for log_name in ("mosquitto.log", "broker-sync.log"):
            print(log_name, (node_cluster.log_dir / log_name).read_text()[-4000:])
        print((node_cluster.state_dir / "broker-trust" / "acl").read_text())
        raise
    assert len(stored) == 3
    for name in stored:
        response = root.get_object(bucket, name)
        try:
            ciphertext = response.read()
        finally:
            response.close()
            response.release_conn()
        for plain in (b"789567", b"Observation", b"MDC_PRESS_BLD_NONINV", b"85354-9"):
            assert plain not in ciphertext

    # Read back with `medcloud records get`, as the gateway's own key-service identity.
    token = node_cluster.kubectl(
        "create", "token", f"gw-{GATEWAY}", "-n", NAMESPACE, "--audience", platform.KEY_SERVICE_AUDIENCE
    ).stdout.strip()
    observations = []
    for name in stored:
        result = CliRunner().invoke(
            medcloud_cli,
            [
                "records", "get", "device-data", name, "-", "-n", NAMESPACE,
                "--kubeconfig", str(node_cluster.kubeconfig),
                "--key-service", f"http://{netsetup.NODE_IP}:{key_service_port}",
                "--token", token,
            ],
            env={"MEDCLOUD_KEY_SERVICE_TOKEN": None},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        observations.append(json.loads(result.stdout))
    by_device: dict[str, list[Json]] = {}
    for observation in observations:
        by_device.setdefault(observation["device"]["identifier"]["value"], []).append(observation)
    assert set(by_device) == {"0123456789ABCDEF", DEVICE}
    [pcd01] = by_device["0123456789ABCDEF"]
    assert pcd01["resourceType"] == "Observation"
    assert pcd01["subject"] == {"reference": "Patient/789567"}
    assert [c["code"] for c in pcd01["code"]["coding"]] == ["85354-9", "150020"]
    assert pcd01["effectiveDateTime"] == "2009-08-13T09:57:15+05:00"
    cuff = sorted([c["valueQuantity"]["value"] for c in o["component"]] for o in by_device[DEVICE])
    assert cuff == [[128, 82], [131, 86]]  # over MQTT, over HTTPS

    # Revocation through a real kubelet: the operator re-signs the CRL Secret, the kubelet swaps the mounted
    # file at its next sync of the pod's Secret volume (syncFrequency, 60 s by default), each replica re-reads
    # it within MEDCLOUD_GATEWAY_CRL_RELOAD_SECONDS (10 s). The bound stated in docs/devices.md is about
    # 70 s plus the operator's reconcile; measured here and printed, never asserted on as a time.
    revoked_at = time.monotonic()
    node_cluster.kubectl("patch", "device", DEVICE, "-n", NAMESPACE, "--type=merge", "-p", '{"spec":{"revoked":true}}')

    def refused() -> bool:
        # With TLS 1.3 the server's verdict on the client certificate arrives after the client's handshake: a
        # refusal is an alert or a closed connection, so anything but an AA counts.
        try:
            answer = mllp_tls(service, f"gw-{GATEWAY}.{NAMESPACE}.svc", ca_pem, cert_file, key_file, PCD01.read_bytes())
        except (ssl.SSLError, ConnectionError, OSError):
            return True
        return "MSA|AA|" not in answer

    def every_replica_refuses() -> bool:
        # The Service picks a replica per connection: ten refusals in a row leave no replica likely unchecked.
        return all(refused() for _ in range(10))

    wait_for(refused, "the revoked device refused by a replica", 300, interval=1)
    first = time.monotonic() - revoked_at
    wait_for(every_replica_refuses, "the revoked device refused by every replica", 300, interval=1)
    # Kopf's runner holds sys.stdout while the operator runs: the figure goes to the process's own stderr.
    print(
        f"[gateway node] revocation: first refusal {first:.1f} s, every replica {time.monotonic() - revoked_at:.1f} s",
        file=sys.__stderr__,
        flush=True,
    )
    trusted = get(node_cluster, "secret", "medcloud-device-trust", "-n", NAMESPACE)
    assert int(trusted["metadata"]["annotations"]["medcloud.io/crl-number"]) >= 2
