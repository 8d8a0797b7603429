"""The platform broker (Mosquitto, medcloud_gateway.broker's configuration) over every hospital's device CA.

A Mosquitto of this module's own runs the configuration the platform runs: a
trust bundle of two hospitals' device CAs (made and signed as the operator does,
``medcloud.tenancy.deviceca``) plus the broker's own client CA, their CRLs, and
the operator's ACL (``builders.brokertrust``), written as the broker's sync
writes them (``medcloud_gateway.brokersync``) and reloaded with SIGHUP. A
device's reading on its own topic is stored; one on another device's or another
hospital's topic never reaches that hospital's gateway; a hospital's CA joins
the bundle without a restart; a revoked device is refused once the bundle's CRL
changed and the broker got SIGHUP.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import queue
import signal
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from paho.mqtt.enums import CallbackAPIVersion

from medcloud.records.client import RecordClient
from medcloud.tenancy import deviceca
from medcloud.tenancy.devicecrl import Revocation, build_crl
from medcloud.tenancy.mqtt import TRUST_CONFIGMAP, GatewayGrant, acl, readings_topic
from medcloud_cli.localcluster.broker import TRUST_NAMESPACE as SYNC_NAMESPACE
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority, KeyPair
from medcloud_cli.localcluster.process import ServerProcess, free_port, port_accepts
from medcloud_gateway.broker import BrokerFiles, mosquitto_config
from medcloud_gateway.brokersync import FILES, write_trust_files
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics
from medcloud_gateway.service import Gateway
from medcloud_gateway.settings import GatewaySettings
from medcloud_operator.builders.brokertrust import trust_configmap
from tests.integration import test_gateway as base
from tests.support import wait_for

pytestmark = [pytest.mark.minio]

records = base.records
serving_ca = base.serving_ca
CITY = base.HOSPITAL
COUNTY = "county"
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Hospital:
    """A hospital's device CA as the operator makes it, its CRL, and its devices' keys and certificates."""

    name: str
    directory: Path
    ca: deviceca.TenantCA = field(init=False)
    revoked: list[Revocation] = field(default_factory=list)
    number: int = 0

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = deviceca.new_ca(self.name, now=NOW)

    def enrol(self, device_id: str) -> KeyPair:
        """A device's key and the certificate the operator signs for its CSR (CN ``<hospital>/<id>``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        issued = deviceca.sign_device(
            self.ca, csr.public_bytes(serialization.Encoding.PEM).decode(), device_id, now=NOW
        )
        pair = KeyPair(self.directory / f"{device_id}.crt", self.directory / f"{device_id}.key")
        pair.cert.write_bytes(issued.cert_pem)
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pair.key.chmod(0o600)
        return pair

    def crl(self) -> bytes:
        self.number += 1
        # lastUpdate grows with each CRL; OpenSSL prefers the newer of two CRLs of one issuer.
        return build_crl(
            self.ca.cert_pem, self.ca.key_pem, self.revoked, now=dt.datetime.now(dt.UTC), number=self.number
        )

    def revoke(self, pair: KeyPair) -> None:
        serial = x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number
        self.revoked.append(Revocation(serial, dt.datetime.now(dt.UTC)))


@dataclass
class PlatformBroker:
    """The broker, its trust directory, the platform client CA and what the bundle holds now."""

    info: BrokerInfo
    process: ServerProcess
    directory: Path
    platform: CertificateAuthority
    hospitals: list[Hospital]
    grants: list[GatewayGrant]

    def publish_bundle(self) -> None:
        """The operator's ConfigMap for the hospitals and grants, written as the sync writes it, then SIGHUP."""
        platform = deviceca.TenantCA(self.platform.cert_pem, self.platform.paths.key.read_bytes())
        platform_crl = build_crl(platform.cert_pem, platform.key_pem, [], now=dt.datetime.now(dt.UTC), number=1)
        configmap = trust_configmap(
            "medcloud-system",
            [(h.ca.cert_pem, h.crl()) for h in self.hospitals],
            platform.cert_pem,
            platform_crl,
            self.grants,
        )
        # Each new CRL of a hospital is one second newer at least: OpenSSL compares lastUpdate in seconds.
        time.sleep(1.1)
        write_trust_files(configmap["data"], self.directory)
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGHUP)

    def gateway_identity(self, hospital: str) -> KeyPair:
        identity = f"gw-wards.hospital-{hospital}"
        ca = deviceca.TenantCA(self.platform.cert_pem, self.platform.paths.key.read_bytes())
        leaf = deviceca.sign_client(ca, identity, now=dt.datetime.now(dt.UTC))
        pair = KeyPair(self.directory / f"{identity}.crt", self.directory / f"{identity}.key")
        pair.cert.write_bytes(leaf.cert_pem)
        pair.key.write_bytes(leaf.key_pem)
        pair.key.chmod(0o600)
        return pair


@contextlib.contextmanager
def device_mosquitto(
    directory: Path, ca_file: Path, serving: KeyPair, crl_file: Path
) -> Iterator[tuple[int, ServerProcess]]:
    """A Mosquitto of medcloud_gateway.broker's configuration over one CA and CRL, no gateway grants: port, process."""
    files = BrokerFiles(ca_file, serving.cert, serving.key, crl_file, directory / "acl")
    files.acl_file.write_text(acl([]))
    port, process = mosquitto_of(files, directory, "mosquitto-devices", directory / "mosquitto.log")
    with running(port, process):
        yield port, process


def mosquitto_of(files: BrokerFiles, directory: Path, name: str, log_path: Path) -> tuple[int, ServerProcess]:
    """A Mosquitto of medcloud_gateway.broker's configuration over ``files`` on a free port, not started yet.
    It stays as this user (the keys are readable by it alone), as the local cluster's broker does."""
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"user {getpass.getuser()}\n" + mosquitto_config(files, hosts=["127.0.0.1"], port=port))
    process = ServerProcess(
        name=name, args=["mosquitto", "-c", str(config)], log_path=log_path, ports=(port,), die_with_parent=True
    )
    return port, process


@contextlib.contextmanager
def running(port: int, process: ServerProcess) -> Iterator[None]:
    """``process`` started and taking connections on ``port``, stopped afterwards."""
    process.start()
    try:
        process.wait_ready(lambda: port_accepts(port), 30)
        yield
    finally:
        process.stop()


@pytest.fixture
def platform_broker(tmp_path: Path) -> Iterator[PlatformBroker]:
    directory = tmp_path / "broker-trust"
    directory.mkdir()
    platform = CertificateAuthority(tmp_path / "pki", "platform-ca", "medcloud platform broker client CA")
    serving = platform.issue("broker", "broker", server_names=("127.0.0.1",), client=False)
    hospitals = [Hospital(CITY, tmp_path / CITY), Hospital(COUNTY, tmp_path / COUNTY)]
    grants = [GatewayGrant(f"gw-wards.hospital-{h.name}", h.name) for h in hospitals]
    files = BrokerFiles(
        directory / FILES["ca-bundle.crt"],
        serving.cert,
        serving.key,
        directory / FILES["crl-bundle.crl"],
        directory / FILES["acl"],
    )
    port, process = mosquitto_of(files, directory, "mosquitto-platform", tmp_path / "mosquitto.log")
    broker = PlatformBroker(
        BrokerInfo(host="127.0.0.1", port=port, ca_file=str(platform.paths.cert), client_cert="", client_key=""),
        process,
        directory,
        platform,
        hospitals,
        grants,
    )
    platform_ca = deviceca.TenantCA(platform.cert_pem, platform.paths.key.read_bytes())
    configmap = trust_configmap(
        "medcloud-system",
        [(h.ca.cert_pem, h.crl()) for h in hospitals],
        platform.cert_pem,
        build_crl(platform_ca.cert_pem, platform_ca.key_pem, [], now=NOW, number=1),
        grants,
    )
    write_trust_files(configmap["data"], directory)
    with running(port, process):
        yield broker


def connect(
    broker: BrokerInfo, pair: KeyPair, on_message: Any = None, subscribe: str | None = None
) -> mqtt.Client | None:
    """A connected client (subscribed to ``subscribe`` once connected), or None if the broker refused it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:6]}")
    client.tls_set(
        ca_certs=broker.ca_file, certfile=str(pair.cert), keyfile=str(pair.key), tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    subscribed = queue.Queue[int]()
    closed: list[bool] = []
    client.on_disconnect = lambda *_: closed.append(True)
    if on_message is not None:
        client.on_message = on_message
    if subscribe is not None:
        client.on_subscribe = lambda *_: subscribed.put(1)
        client.on_connect = lambda c, *_: c.subscribe(subscribe, qos=1)
    try:
        client.connect(broker.host, broker.port)
    except (ssl.SSLError, ConnectionError, OSError):
        return None
    client.loop_start()
    for _ in range(1000):  # CONNACK within 10 s, or the broker closed the connection
        if closed:
            break
        if client.is_connected():
            if subscribe is not None:
                subscribed.get(timeout=10)
            return client
        time.sleep(0.01)
    client.loop_stop()
    return None


def close(client: mqtt.Client) -> None:
    client.loop_stop()
    client.disconnect()


def reading(minute: int) -> str:
    return json.dumps(
        {
            "patient": "Patient/p-1001",
            "kind": "spo2",
            "value": 95,
            "unit": "%",
            "time": f"2024-05-01T08:{minute:02d}:00Z",
        }
    )


def city_gateway_settings(
    records: RecordClient, minio_server: MinioInfo, broker: PlatformBroker, serving_ca: CertificateAuthority
) -> GatewaySettings:
    identity = broker.gateway_identity(CITY)
    info = BrokerInfo(
        host=broker.info.host,
        port=broker.info.port,
        ca_file=broker.info.ca_file,
        client_cert=str(identity.cert),
        client_key=str(identity.key),
    )
    plain = base.session_gateway_settings(records, minio_server, info, serving_ca)
    return GatewaySettings.model_validate({**plain.model_dump(), "protocols": ["mqtt"], "hospital": CITY})


def listening(broker: PlatformBroker, hospital: str, subscribe: str) -> tuple[mqtt.Client, queue.Queue[str]]:
    """A client of ``hospital``'s gateway identity subscribed to ``subscribe``, and the topics it receives."""
    received: queue.Queue[str] = queue.Queue()
    client = connect(
        broker.info,
        broker.gateway_identity(hospital),
        on_message=lambda _c, _u, message: received.put(message.topic),
        subscribe=subscribe,
    )
    assert client is not None
    return client, received


def test_devices_publish_only_for_themselves_within_their_hospital(
    platform_broker: PlatformBroker, records: RecordClient, minio_server: MinioInfo, serving_ca: CertificateAuthority
) -> None:
    city, county = platform_broker.hospitals
    settings = city_gateway_settings(records, minio_server, platform_broker, serving_ca)
    county_gateway, county_seen = listening(
        platform_broker, COUNTY, f"$share/gw-wards.hospital-{COUNTY}/devices/{COUNTY}/+/readings"
    )
    # A gateway identity may not read another hospital's topics: its subscription is granted, nothing delivered.
    snooper, snooping = listening(platform_broker, COUNTY, f"devices/{CITY}/+/readings")
    ox = city.enrol("ox-12")
    # The same device id at the county hospital: another device, another broker user.
    county_ox = county.enrol("ox-12")
    with base.running(Gateway(settings, Ingestor(records, GatewayMetrics())), serving_ca.paths.cert):
        device = connect(platform_broker.info, ox)
        intruder = connect(platform_broker.info, county_ox)
        assert device is not None
        assert intruder is not None
        try:
            for topic, minute in (
                (readings_topic(CITY, "ox-12"), 1),
                (readings_topic(CITY, "ox-13"), 2),  # another device's topic
                (readings_topic(COUNTY, "ox-12"), 3),  # another hospital's device of the same id
            ):
                device.publish(topic, reading(minute), qos=1).wait_for_publish(timeout=30)
            # A certificate of the county's CA on the city's topic of the same device id.
            intruder.publish(readings_topic(CITY, "ox-12"), reading(4), qos=1).wait_for_publish(timeout=30)
            intruder.publish(readings_topic(COUNTY, "ox-12"), reading(5), qos=1).wait_for_publish(timeout=30)
            device.publish(readings_topic(CITY, "ox-12"), reading(6), qos=1).wait_for_publish(timeout=30)

            def sixth() -> list[dict[str, Any]] | None:
                found = base.stored(records)
                return found if any(o["effectiveDateTime"].startswith("2024-05-01T08:06") for o in found) else None

            stored = wait_for(sixth, "ox-12's sixth reading")
            county_topic = county_seen.get(timeout=30)
        finally:
            close(device)
            close(intruder)
    # In order: once the sixth is stored, the others the city's gateway could have had would have been too.
    assert sorted(o["effectiveDateTime"] for o in stored) == ["2024-05-01T08:01:00Z", "2024-05-01T08:06:00Z"]
    assert {o["device"]["identifier"]["value"] for o in stored} == {"ox-12"}
    # The county's gateway got its own device's reading only (the city device's publish on it came before).
    assert county_topic == readings_topic(COUNTY, "ox-12")
    assert county_seen.empty()
    assert snooping.empty()
    close(county_gateway)
    close(snooper)


def test_a_new_hospitals_ca_joins_and_a_revoked_device_is_refused_after_the_reload(
    platform_broker: PlatformBroker, tmp_path: Path
) -> None:
    village = Hospital("village", tmp_path / "village")
    newcomer = village.enrol("bp-1")
    assert connect(platform_broker.info, newcomer) is None  # its CA is not in the bundle yet
    platform_broker.hospitals.append(village)
    platform_broker.publish_bundle()
    joined = wait_for(lambda: connect(platform_broker.info, newcomer), "the village's device accepted after SIGHUP")
    close(joined)

    city = platform_broker.hospitals[0]
    ox, other = city.enrol("ox-21"), city.enrol("ox-22")
    connected = connect(platform_broker.info, ox)
    assert connected is not None
    city.revoke(ox)
    platform_broker.publish_bundle()
    started = time.monotonic()

    def refused() -> bool:
        attempt = connect(platform_broker.info, ox)
        if attempt is None:
            return True
        close(attempt)
        return False

    wait_for(refused, "the broker to refuse the revoked device", timeout=30)
    print(f"revoked device refused {time.monotonic() - started:.2f} s after the bundle and SIGHUP")
    # A session opened before the revocation is kept until the device reconnects (Mosquitto 2.0).
    assert connected.is_connected()
    close(connected)
    still = connect(platform_broker.info, other)
    assert still is not None
    close(still)


# ------------------------------------------------------- the local cluster's broker and its sync


def put_configmap(api: client.CoreV1Api, configmap: dict[str, Any]) -> None:
    name, namespace = configmap["metadata"]["name"], configmap["metadata"]["namespace"]
    try:
        api.replace_namespaced_config_map(name, namespace, configmap)
    except ApiException as exc:
        if exc.status != 404:
            raise
        api.create_namespaced_config_map(namespace, configmap)


@pytest.mark.cluster
@pytest.mark.broker
def test_the_local_clusters_broker_follows_the_operators_trust_configmap_through_its_sync(
    mqtt_broker: BrokerInfo, k8s_api_client: client.ApiClient, tmp_path: Path
) -> None:
    """`dev up`'s broker (and the session's) is held to the ConfigMap the operator writes: a new hospital's
    device gets in once the bundle names its CA, writes only its own topic, and is refused once revoked;
    the cluster's own client stays trusted whatever the bundle holds."""
    core = client.CoreV1Api(k8s_api_client)
    lake = Hospital("lakeside", tmp_path / "lakeside")
    monitor = lake.enrol("bp-1")
    own_client = KeyPair(Path(mqtt_broker.client_cert), Path(mqtt_broker.client_key))
    broker_ca = deviceca.TenantCA(Path(mqtt_broker.ca_file).read_bytes(), Path(mqtt_broker.ca_key_file).read_bytes())

    def bundle() -> dict[str, Any]:
        platform_crl = build_crl(broker_ca.cert_pem, broker_ca.key_pem, [], now=dt.datetime.now(dt.UTC), number=1)
        time.sleep(1.1)  # each new CRL one second newer at least (lastUpdate is in seconds)
        return trust_configmap(SYNC_NAMESPACE, [(lake.ca.cert_pem, lake.crl())], broker_ca.cert_pem, platform_crl, [])

    selector = f"metadata.name={TRUST_CONFIGMAP}"
    previous = next(iter(core.list_namespaced_config_map(SYNC_NAMESPACE, field_selector=selector).items), None)
    assert connect(mqtt_broker, monitor) is None  # its hospital's CA is in no bundle yet
    try:
        put_configmap(core, bundle())
        started = time.monotonic()
        device = wait_for(lambda: connect(mqtt_broker, monitor), "the device accepted once the sync wrote the bundle")
        print(f"bundle to broker: {time.monotonic() - started:.1f} s")
        received: queue.Queue[str] = queue.Queue()
        watcher = connect(mqtt_broker, own_client, lambda _c, _u, m: received.put(m.topic), "devices/lakeside/#")
        assert watcher is not None, "the cluster's own client is still trusted"
        try:
            device.publish(readings_topic("lakeside", "bp-2"), reading(1), qos=1).wait_for_publish(timeout=30)
            device.publish(readings_topic("lakeside", "bp-1"), reading(2), qos=1).wait_for_publish(timeout=30)
            # In order on one connection: the first delivered is its own topic's; the other was dropped.
            assert received.get(timeout=30) == readings_topic("lakeside", "bp-1")
        finally:
            close(device)
            close(watcher)

        lake.revoke(monitor)
        put_configmap(core, bundle())
        started = time.monotonic()
        wait_for(lambda: connect(mqtt_broker, monitor) is None, "the revoked device refused")
        print(f"revocation to broker: {time.monotonic() - started:.1f} s")
        assert connect(mqtt_broker, own_client) is not None
    finally:
        if previous is not None:
            kept = k8s_api_client.sanitize_for_serialization(previous)
            meta = kept["metadata"]
            kept["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
            put_configmap(core, kept)
        else:
            core.delete_namespaced_config_map(TRUST_CONFIGMAP, SYNC_NAMESPACE)
