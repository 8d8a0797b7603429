"""MQTT at-least-once into storage: a MinIO outage loses no reading and doubles none.

A MinIO of this module's own (the session's serves every other test, so it
cannot be stopped) is stopped; a device publishes 1,000 readings at QoS 1;
MinIO is started again on the same port and data; every reading must then be
stored exactly once. The gateway acknowledges a message to the broker only
after its reading is stored, and record names are stable, so a redelivery
overwrites instead of adding.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from minio import Minio

from medcloud.models import DeviceProtocol
from medcloud.records.batches import decode_batch
from medcloud.records.client import RecordClient
from medcloud.records.keys import KeyRing, generate_kek
from medcloud.tenancy.mqtt import readings_topic
from medcloud_cli.localcluster import binaries
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_cli.localcluster.process import ServerProcess, free_port
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.service import Gateway
from tests.integration import test_gateway as base
from tests.support import connect_records, wait_for

pytestmark = [pytest.mark.minio, pytest.mark.broker]

READINGS = 1000
device = base.device
serving_ca = base.serving_ca


@dataclass
class DedicatedMinio:
    """A MinIO server this module can stop and start again, same port, same data."""

    data: Path
    port: int
    access_key: str = "delivery-root"
    secret_key: str = secrets.token_urlsafe(24)
    process: ServerProcess | None = None
    secure: bool = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        minio = binaries.locate("minio")
        assert minio is not None, "the minio binary is not built: run medcloud dev build"
        self.process = ServerProcess(
            name="minio-delivery",
            args=[str(minio), "server", str(self.data / "data"), "--address", self.endpoint, "--quiet"],
            log_path=self.data / "minio.log",
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(self.data),
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
            ports=(self.port,),
            die_with_parent=True,
        )
        self.process.start()
        self.process.wait_ready(self._ready, 90)

    def _ready(self) -> bool:
        url = f"http://{self.endpoint}/minio/health/ready"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    def stop(self) -> None:
        assert self.process is not None
        self.process.stop()
        assert not self.process.running()


@pytest.fixture(scope="module")
def dedicated_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DedicatedMinio]:
    server = DedicatedMinio(tmp_path_factory.mktemp("minio-delivery"), free_port())
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.stop()


@pytest.fixture
def records(dedicated_minio: DedicatedMinio) -> RecordClient:
    root = Minio(dedicated_minio.endpoint, dedicated_minio.access_key, dedicated_minio.secret_key, secure=False)
    bucket = f"delivery-{secrets.token_hex(6)}"
    root.make_bucket(bucket)
    return connect_records(
        dedicated_minio, bucket, KeyRing.create(hospital="city-hospital", store="vitals", kek=generate_kek())
    )


def test_a_storage_outage_loses_and_doubles_no_mqtt_reading(
    dedicated_minio: DedicatedMinio,
    records: RecordClient,
    mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
    device: mqtt.Client,
) -> None:
    serving = serving_ca.issue("gateway", "gateway", server_names=("127.0.0.1",), client=False)
    settings = base.gateway_settings(
        records,
        f"http://{dedicated_minio.endpoint}",
        dedicated_minio.access_key,
        dedicated_minio.secret_key,
        mqtt_broker,
        serving,
    )
    metrics = GatewayMetrics()
    with base.running(Gateway(settings, Ingestor(records, metrics)), serving_ca.paths.cert):
        dedicated_minio.stop()
        for n in range(READINGS):
            minute, second = divmod(n, 60)
            reading = {
                "patient": "Patient/p-7007",
                "kind": "heart-rate",
                "value": 40 + n % 100,
                "unit": "/min",
                "time": f"2024-05-01T{8 + minute // 60:02d}:{minute % 60:02d}:{second:02d}+08:00",
            }
            info = device.publish(readings_topic(base.HOSPITAL, "hr-1"), json.dumps(reading), qos=1)
            info.wait_for_publish(timeout=30)
            assert info.is_published()
        # Nothing could be stored, yet the gateway is holding on to what it received.
        wait_for(lambda: metrics.value(DeviceProtocol.MQTT, Result.FAILED) >= 1, "a failed store attempt", timeout=60)
        assert metrics.value(DeviceProtocol.MQTT, Result.STORED) == 0
        dedicated_minio.start()
        wait_for(
            lambda: metrics.value(DeviceProtocol.MQTT, Result.STORED) >= READINGS, "every reading stored", timeout=600
        )
        # Batches of readings, one record each: every Observation in exactly one of them.
        observations = [
            o for info in records.list("fhir/Observation/") for o in decode_batch(records.get_bytes(info.name))
        ]
    assert len(observations) == READINGS
    assert len({o["id"] for o in observations}) == READINGS
    assert len({o["effectiveDateTime"] for o in observations}) == READINGS
    assert metrics.value(DeviceProtocol.MQTT, Result.STORED) == READINGS
    assert metrics.value(DeviceProtocol.MQTT, Result.REJECTED) == 0
