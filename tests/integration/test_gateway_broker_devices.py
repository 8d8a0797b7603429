"""The device-facing broker (Mosquitto with medcloud_gateway.broker's configuration) binds devices to their topics.

A Mosquitto of this module's own runs the configuration the gateway documents:
device certificates of the hospital's CA required, the certificate's name as
the MQTT user, an ACL that lets a device publish only on its own topic, and the
CRL. A device's reading on its own topic is stored; one it publishes on another
device's topic never reaches the gateway; once revoked (CRL rewritten, SIGHUP),
the device can no longer connect.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from medcloud.records.client import RecordClient
from medcloud_cli.localcluster.cluster import BrokerInfo, MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority, KeyPair
from medcloud_cli.localcluster.process import ServerProcess, free_port, port_accepts
from medcloud_gateway.broker import BrokerFiles, acl, mosquitto_config
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics
from medcloud_gateway.service import Gateway
from medcloud_gateway.settings import GatewaySettings
from tests.integration import test_gateway as base
from tests.integration.test_gateway_device_tls import Devices
from tests.support import wait_for

pytestmark = [pytest.mark.minio]

records = base.records
serving_ca = base.serving_ca
GATEWAY_IDENTITY = "medcloud-gateway"


@pytest.fixture
def devices(tmp_path: Path) -> Devices:
    return Devices(tmp_path / "devices")


@contextlib.contextmanager
def device_mosquitto(
    directory: Path, ca_file: Path, serving: KeyPair, crl_file: Path
) -> Iterator[tuple[int, ServerProcess]]:
    """A Mosquitto of medcloud_gateway.broker's configuration over ``ca_file`` and ``crl_file``: port, process."""
    port = free_port()
    files = BrokerFiles(ca_file, serving.cert, serving.key, crl_file, directory / "acl")
    files.acl_file.write_text(acl(GATEWAY_IDENTITY))
    config = directory / "mosquitto.conf"
    # Stay as this user (the keys are readable by it alone), as the local cluster's broker does.
    config.write_text(f"user {getpass.getuser()}\n" + mosquitto_config(files, host="127.0.0.1", port=port))
    process = ServerProcess(
        name="mosquitto-devices",
        args=["mosquitto", "-c", str(config)],
        log_path=directory / "mosquitto.log",
        ports=(port,),
        die_with_parent=True,
    )
    process.start()
    try:
        process.wait_ready(lambda: port_accepts(port), 30)
        yield port, process
    finally:
        process.stop()


@pytest.fixture
def device_broker(tmp_path: Path, devices: Devices) -> Iterator[tuple[BrokerInfo, ServerProcess]]:
    serving = devices.ca.issue("broker", "broker", server_names=("127.0.0.1",), client=False)
    gateway_pair = devices.issue(GATEWAY_IDENTITY)
    with device_mosquitto(tmp_path, devices.ca.paths.cert, serving, devices.crl) as (port, process):
        info = BrokerInfo(
            host="127.0.0.1",
            port=port,
            ca_file=str(devices.ca.paths.cert),
            client_cert=str(gateway_pair.cert),
            client_key=str(gateway_pair.key),
        )
        yield info, process


def connect(broker: BrokerInfo, pair: KeyPair) -> mqtt.Client | None:
    """A connected device client, or None if the broker refused it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:6]}")
    client.tls_set(
        ca_certs=broker.ca_file, certfile=str(pair.cert), keyfile=str(pair.key), tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    try:
        client.connect(broker.host, broker.port)
    except (ssl.SSLError, ConnectionError, OSError):
        return None
    client.loop_start()
    for _ in range(100):  # CONNACK within 10 s, or the broker closed the connection
        if client.is_connected():
            return client
        time.sleep(0.1)
    client.loop_stop()
    return None


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


def test_devices_publish_only_for_themselves_and_revoked_ones_cannot_connect(
    device_broker: tuple[BrokerInfo, ServerProcess],
    devices: Devices,
    records: RecordClient,
    minio_server: MinioInfo,
    serving_ca: CertificateAuthority,
) -> None:
    broker, process = device_broker
    plain = base.session_gateway_settings(records, minio_server, broker, serving_ca)
    settings = GatewaySettings.model_validate({**plain.model_dump(), "protocols": ["mqtt"]})
    ox = devices.issue("ox-12")
    with base.running(Gateway(settings, Ingestor(records, GatewayMetrics())), serving_ca.paths.cert):
        client = connect(broker, ox)
        assert client is not None
        try:
            for topic, minute in (("devices/ox-12/readings", 1), ("devices/ox-13/readings", 2)):
                client.publish(topic, reading(minute), qos=1).wait_for_publish(timeout=30)
            client.publish("devices/ox-12/readings", reading(3), qos=1).wait_for_publish(timeout=30)

            def third() -> list[dict[str, Any]] | None:
                found = base.stored(records)
                return found if any(o["effectiveDateTime"].startswith("2024-05-01T08:03") for o in found) else None

            stored = wait_for(third, "ox-12's third reading")
        finally:
            client.loop_stop()
            client.disconnect()
    # In order: once ox-12's third reading is stored, the one on ox-13's topic would have been too.
    assert sorted(o["effectiveDateTime"] for o in stored) == ["2024-05-01T08:01:00Z", "2024-05-01T08:03:00Z"]
    assert {o["device"]["identifier"]["value"] for o in stored} == {"ox-12"}
    devices.revoke(ox)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGHUP)  # what the operator does when the CRL Secret changes
    wait_for(lambda: connect(broker, ox) is None, "the broker to refuse the revoked device", timeout=30)
    other = connect(broker, devices.issue("ox-14"))
    assert other is not None
    other.loop_stop()
    other.disconnect()
