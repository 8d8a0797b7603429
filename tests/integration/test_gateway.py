"""The device gateway against the real broker (Mosquitto, TLS) and the real MinIO.

Readings go in over MQTT, HL7 v2 (MLLP) and HTTPS; what comes out is read back
from the bucket, decrypted, and must be a valid FHIR Observation with the right
LOINC code and UCUM unit. A bad reading is answered with its reason and stored
nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fhir.resources.R4B.observation import Observation
from minio import Minio
from paho.mqtt.enums import CallbackAPIVersion

from medcloud.models import DeviceProtocol
from medcloud.records.batches import NDJSON_CONTENT_TYPE, batch_name, decode_batch
from medcloud.records.client import RecordClient
from medcloud.records.keys import KeyRing, generate_kek
from medcloud.tenancy.mqtt import errors_topic, readings_topic
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_cli.localcluster.process import free_port
from medcloud_gateway.hl7v2 import MllpDecoder, frame
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.service import Gateway
from medcloud_gateway.settings import GatewaySettings
from tests.support import connect_records, wait_for

pytestmark = [pytest.mark.minio, pytest.mark.broker]

UCUM = "http://unitsofmeasure.org"
WHEN = "2024-05-01T08:30:00+08:00"
HOSPITAL = "city-hospital"
"""The hospital of the gateways these tests run: their MQTT topics are devices/<it>/<device>/readings."""


@pytest.fixture
def records(minio_server: MinioInfo, bucket: str) -> RecordClient:
    ring = KeyRing.create(hospital="city-hospital", store="vitals", kek=generate_kek())
    return connect_records(minio_server, bucket, ring)


@pytest.fixture
def serving_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki", "gateway-ca", "medcloud-test-gateway-ca")


class Running:
    """A gateway serving in a thread of its own, with the addresses a device uses."""

    def __init__(self, gateway: Gateway, ca_file: Path) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.metrics = gateway.ingestor.metrics
        self.ca_file = ca_file

    def https(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(base_url=f"https://127.0.0.1:{self.settings.https_port}", verify=context, timeout=30)

    def health(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.settings.health_port}", timeout=30)

    def send_hl7(self, message: str) -> str:
        """One ORU over MLLP; the ACK's text."""
        decoder = MllpDecoder()
        with socket.create_connection(("127.0.0.1", self.settings.hl7v2_port), timeout=30) as conn:
            conn.sendall(frame(message))
            while True:
                data = conn.recv(65536)
                assert data, "the gateway closed the connection without an ACK"
                acks = decoder.feed(data)
                if acks:
                    return acks[0].decode()


def loopback_listeners(broker: BrokerInfo, serving: Any) -> dict[str, Any]:
    """A gateway's listener settings on free loopback ports, subscribed to ``broker``, serving ``serving``."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "host": "127.0.0.1",
        "health_port": free_port(),
        "https_port": free_port(),
        "hl7v2_port": free_port(),
        "mqtt_broker_host": broker.host,
        "mqtt_broker_port": broker.port,
        "mqtt_ca_file": broker.ca_file,
        "mqtt_cert_file": broker.client_cert,
        "mqtt_key_file": broker.client_key,
        "mqtt_client_id": f"gateway-{suffix}",
        # A group per gateway: a gateway of another test must not take this test's readings.
        "mqtt_share_group": f"gateway-{suffix}",
        "tls_cert_file": str(serving.cert),
        "tls_key_file": str(serving.key),
    }


def gateway_settings(
    records: RecordClient, s3_endpoint: str, access_key: str, secret_key: str, broker: BrokerInfo, serving: Any
) -> GatewaySettings:
    """Settings of a gateway on loopback ports, storing into ``records``' bucket, subscribed to ``broker``."""
    return GatewaySettings.model_validate(
        {
            "hospital": HOSPITAL,
            "namespace": "hospital-city",
            "record_store": "vitals",
            "s3_endpoint": s3_endpoint,
            "bucket": records.bucket,
            "access_key": access_key,
            "secret_key": secret_key,
            **loopback_listeners(broker, serving),
        }
    )


@contextlib.contextmanager
def running(service: Gateway, ca_file: Path) -> Iterator[Running]:
    """``service`` serving in a thread of its own until the block ends."""
    started = threading.Event()
    control: dict[str, Any] = {}
    failures: list[BaseException] = []

    async def serve() -> None:
        control["loop"], control["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await service.run(control["stop"])

    def thread_main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failures.append(exc)
            started.set()

    thread = threading.Thread(target=thread_main, name="gateway", daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        wait_for(lambda: not failures and not service.readiness(), "the gateway to be ready", timeout=60)
        yield Running(service, ca_file)
    finally:
        if "loop" in control:
            control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(30)
    assert not thread.is_alive()
    assert not failures, failures


def session_gateway_settings(
    records: RecordClient, minio_server: MinioInfo, mqtt_broker: BrokerInfo, serving_ca: CertificateAuthority
) -> GatewaySettings:
    """A gateway's settings over the session's MinIO and broker, with a serving certificate of ``serving_ca``."""
    serving = serving_ca.issue("gateway", "gateway", server_names=("127.0.0.1",), client=False)
    minio = minio_server
    return gateway_settings(
        records, f"http://{minio.endpoint}", minio.access_key, minio.secret_key, mqtt_broker, serving
    )


@contextlib.contextmanager
def serving(
    records: RecordClient, minio_server: MinioInfo, mqtt_broker: BrokerInfo, serving_ca: CertificateAuthority
) -> Iterator[Running]:
    """A gateway over the session's MinIO and broker storing into ``records``, until the block ends."""
    settings = session_gateway_settings(records, minio_server, mqtt_broker, serving_ca)
    with running(Gateway(settings, Ingestor(records, GatewayMetrics())), serving_ca.paths.cert) as gateway:
        yield gateway


@pytest.fixture
def gateway(
    records: RecordClient, minio_server: MinioInfo, mqtt_broker: BrokerInfo, serving_ca: CertificateAuthority
) -> Iterator[Running]:
    with serving(records, minio_server, mqtt_broker, serving_ca) as gateway:
        yield gateway


def batches(records: RecordClient) -> list[list[dict[str, Any]]]:
    """Every batch record's Observations, decrypted, each checked to be valid FHIR and the record to be named
    after the Observations it holds (one record per batch: NDJSON, see medcloud.records.batches)."""
    out = []
    for info in records.list("fhir/Observation/"):
        assert info.content_type == NDJSON_CONTENT_TYPE
        documents = decode_batch(records.get_bytes(info.name))
        assert info.name == batch_name("Observation", [d["id"] for d in documents])
        for document in documents:
            Observation.model_validate(document)
        out.append(documents)
    return out


def stored(records: RecordClient) -> list[dict[str, Any]]:
    """Every Observation in the store, whatever batch it is in."""
    return [document for batch in batches(records) for document in batch]


def loinc(observation: dict[str, Any]) -> str:
    return str(observation["code"]["coding"][0]["code"])


def by_code(observations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {loinc(o): o for o in observations}


def device_client(broker: BrokerInfo, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
    client.tls_set(
        ca_certs=broker.ca_file,
        certfile=broker.client_cert,
        keyfile=broker.client_key,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    return client


@pytest.fixture
def device(mqtt_broker: BrokerInfo) -> Iterator[mqtt.Client]:
    client = device_client(mqtt_broker, "device")
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


def publish(client: mqtt.Client, device_id: str, reading: dict[str, Any]) -> None:
    info = client.publish(readings_topic(HOSPITAL, device_id), json.dumps(reading), qos=1)
    info.wait_for_publish(timeout=30)
    assert info.is_published()


# ----------------------------------------------------------------------------- MQTT


def test_mqtt_readings_become_encrypted_fhir_observations(
    gateway: Running, device: mqtt.Client, records: RecordClient, root: Minio
) -> None:
    common = {"patient": "Patient/p-1001", "time": WHEN}
    publish(device, "bp-77", {**common, "kind": "blood-pressure", "systolic": 16, "diastolic": 10.5, "unit": "kPa"})
    publish(device, "ox-12", {**common, "kind": "spo2", "value": 97, "unit": "%"})

    def both() -> list[dict[str, Any]] | None:
        found = stored(records)
        return found if len(found) == 2 else None

    observations = by_code(wait_for(both, "both readings stored"))

    pressure = observations["85354-9"]
    components = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in pressure["component"]}
    assert components["8480-6"] == {"value": 120.0, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
    assert components["8462-4"]["value"] == 78.8
    assert pressure["device"]["identifier"]["value"] == "bp-77"
    spo2 = observations["2708-6"]
    assert [c["code"] for c in spo2["code"]["coding"]] == ["2708-6", "59408-5"]
    assert spo2["valueQuantity"] == {"value": 97, "unit": "%", "system": UCUM, "code": "%"}
    assert spo2["subject"] == {"reference": "Patient/p-1001"}
    assert gateway.metrics.value(DeviceProtocol.MQTT, Result.STORED) == 2
    # MinIO holds ciphertext only.
    for obj in root.list_objects(records.bucket, recursive=True):
        response = root.get_object(records.bucket, obj.object_name)
        try:
            raw = response.read()
        finally:
            response.close()
            response.release_conn()
        assert b"Patient/p-1001" not in raw
        assert b"loinc" not in raw


def test_bad_mqtt_reading_is_reported_on_the_error_topic_and_stored_nowhere(
    gateway: Running, device: mqtt.Client, mqtt_broker: BrokerInfo, records: RecordClient
) -> None:
    errors: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed = threading.Event()
    watcher = device_client(mqtt_broker, "watcher")
    watcher.on_connect = lambda c, *_: c.subscribe(errors_topic(HOSPITAL, "ox-12"), qos=1)
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_message = lambda _c, _u, msg: errors.put(json.loads(msg.payload))
    watcher.connect(mqtt_broker.host, mqtt_broker.port)
    watcher.loop_start()
    try:
        assert subscribed.wait(30)
        reading = {"patient": "Patient/p-1001", "kind": "spo2", "value": 97, "time": WHEN}
        publish(device, "ox-12", {**reading, "unit": "permille"})
        report = errors.get(timeout=60)
        # Readings of a device are handled in order: once this one is stored, the bad one was long refused.
        publish(device, "ox-12", {**reading, "unit": "%", "time": "2024-05-01T08:31:00+08:00"})
        (observation,) = wait_for(lambda: stored(records) or None, "the good reading")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    assert report == {"result": "rejected", "error": "unit 'permille' is not known for spo2 (UCUM units accepted: %)"}
    assert observation["effectiveDateTime"] == "2024-05-01T08:31:00+08:00"
    assert gateway.metrics.value(DeviceProtocol.MQTT, Result.REJECTED) == 1
    assert gateway.metrics.value(DeviceProtocol.MQTT, Result.STORED) == 1


# ----------------------------------------------------------------------------- HL7 v2 over MLLP

MSH = "MSH|^~\\&|BPMON|WARD3|MEDCLOUD|CITYHOSP|20240501083000+0800||ORU^R01^ORU_R01|{id}|P|2.5"


def oru(control_id: str, *obx: str) -> str:
    header = [MSH.format(id=control_id), "PID|1||p-2002^^^CITYHOSP^MR", "OBR|1|||85354-9^BP^LN|||20240501083000+0800"]
    return "\r".join([*header, *obx]) + "\r"


def test_hl7_oru_over_mllp_is_stored_and_acknowledged(gateway: Running, records: RecordClient) -> None:
    ack = gateway.send_hl7(
        oru(
            "MSG-1",
            "OBX|1|NM|8480-6^Systolic^LN||131|mm[Hg]|||||F||||||||bp-9",
            "OBX|2|NM|8462-4^Diastolic^LN||86|mm[Hg]|||||F||||||||bp-9",
            "OBX|3|NM|8310-5^Body temperature^LN||37.2|°C|||||F||||||||bp-9",
        )
    )
    assert ack.split("\r")[1] == "MSA|AA|MSG-1|stored 2 observation(s)"
    observations = by_code(stored(records))  # the ACK comes after the records are written
    assert set(observations) == {"85354-9", "8310-5"}
    temperature = observations["8310-5"]
    assert temperature["valueQuantity"] == {"value": 37.2, "unit": "Cel", "system": UCUM, "code": "Cel"}
    assert temperature["subject"] == {"reference": "Patient/p-2002"}
    assert temperature["effectiveDateTime"] == "2024-05-01T08:30:00+08:00"
    assert gateway.metrics.value(DeviceProtocol.HL7V2, Result.STORED) == 2


def test_bad_hl7_oru_is_answered_ae_and_stored_nowhere(gateway: Running, records: RecordClient) -> None:
    ack = gateway.send_hl7(
        oru(
            "MSG-2",
            "OBX|1|NM|8867-4^Heart rate^LN||72|/min|||||F||||||||bp-9",
            "OBX|2|NM|8478-0^Mean blood pressure^LN||93|mm[Hg]|||||F||||||||bp-9",
        )
    )
    msa = ack.split("\r")[1].split("|")
    assert msa[:3] == ["MSA", "AE", "MSG-2"]
    assert msa[3].startswith("OBX 2: LOINC code 8478-0 is not a LOINC code this gateway maps")
    assert stored(records) == []
    assert gateway.metrics.value(DeviceProtocol.HL7V2, Result.REJECTED) == 1
    assert gateway.send_hl7("MSH|^~\\&|X|Y|||20240501||ADT^A01|M3|P|2.5\r").split("\r")[1].startswith("MSA|AR|M3|")


# ----------------------------------------------------------------------------- HTTPS


def test_https_readings_and_observations_are_stored(gateway: Running, records: RecordClient) -> None:
    reading = {"deviceId": "gluco-4", "patient": "Patient/p-3003", "kind": "glucose", "value": 6.1, "unit": "mmol/l"}
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p-3003"},
        "effectiveDateTime": "2024-05-01T07:00:00Z",
        "device": {"identifier": {"value": "scale-2"}},
        "valueQuantity": {"value": 70.4, "unit": "kg"},
    }
    with gateway.https() as client:
        first = client.post("/v1/readings", json={**reading, "time": WHEN})
        second = client.post("/v1/readings", json=observation)
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert first.json()["record"] == batch_name("Observation", [first.json()["observationId"]])
    observations = by_code(stored(records))
    assert observations["15074-8"]["valueQuantity"] == {
        "value": 6.1,
        "unit": "mmol/L",
        "system": UCUM,
        "code": "mmol/L",
    }
    assert observations["15074-8"]["category"][0]["coding"][0]["code"] == "laboratory"
    assert observations["29463-7"]["valueQuantity"]["code"] == "kg"
    assert observations["29463-7"]["device"]["identifier"]["value"] == "scale-2"


def test_bad_https_reading_is_refused_and_stored_nowhere(gateway: Running, records: RecordClient) -> None:
    reading = {"deviceId": "t-1", "patient": "Patient/p-1", "kind": "blood-sugar", "value": 5, "unit": "mmol/L"}
    with gateway.https() as client:
        response = client.post("/v1/readings", json={**reading, "time": WHEN})
        not_json = client.post("/v1/readings", content=b"temperature=37", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    assert response.json()["result"] == "rejected"
    assert "kind: Input should be 'blood-pressure'" in response.json()["error"]
    assert not_json.status_code == 422
    assert not_json.json()["error"].startswith("not JSON")
    assert stored(records) == []
    assert gateway.metrics.value(DeviceProtocol.HTTPS, Result.REJECTED) == 2


def test_health_readiness_and_metrics_on_the_health_port(gateway: Running) -> None:
    with gateway.https() as client:
        client.post("/v1/readings", json={"kind": "nothing"})
    with gateway.health() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        metrics = client.get("/metrics").text
        assert client.post("/v1/readings", json={}).status_code in (404, 405)  # readings only on the HTTPS port
    assert 'medcloud_gateway_readings_total{protocol="https",result="rejected"} 1.0' in metrics
    assert 'medcloud_gateway_readings_total{protocol="mqtt",result="stored"} 0.0' in metrics
