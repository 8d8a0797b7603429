"""Batches against the real MinIO and broker: one record per batch, exactly once, in order, taken or refused whole.

A storage failure is real: the gateway stores into a bucket that does not exist yet (MinIO answers
NoSuchBucket), and the test creates it to end the outage.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from minio import Minio
from paho.mqtt.enums import CallbackAPIVersion

from medcloud.models import DeviceProtocol
from medcloud.records.batches import batch_name
from medcloud.records.client import RecordClient
from medcloud.records.keys import KeyRing, generate_kek
from medcloud.tenancy.mqtt import readings_topic
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_gateway import mllp
from medcloud_gateway.metrics import Result
from tests.integration import test_gateway_devices as devices
from tests.integration.test_gateway import HOSPITAL, Running, batches, oru, serving, stored
from tests.support import connect_records, wait_for

pytestmark = [pytest.mark.minio, pytest.mark.broker]


def reading(n: int, device: str = "hr-1") -> dict[str, Any]:
    minute, second = divmod(n, 60)
    return {
        "deviceId": device,
        "patient": "Patient/p-4004",
        "kind": "heart-rate",
        "value": 50 + n % 50,
        "unit": "/min",
        "time": f"2024-05-02T{minute // 60:02d}:{minute % 60:02d}:{second:02d}Z",
    }


def times(documents: list[dict[str, Any]]) -> list[str]:
    return [d["effectiveDateTime"] for d in documents]


@pytest.fixture
def outage_bucket(root: Minio) -> Iterator[str]:
    """A bucket name that does not exist yet: storing fails until the test makes it."""
    name = f"gateway-batching-outage-{uuid.uuid4().hex[:12]}"
    yield name
    if root.bucket_exists(name):
        for obj in root.list_objects(name, recursive=True):
            root.remove_object(name, obj.object_name)
        root.remove_bucket(name)


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.create(hospital="city-hospital", store="vitals", kek=generate_kek())


@pytest.fixture
def gateway(
    ring: KeyRing, bucket: str, minio_server: MinioInfo, mqtt_broker: BrokerInfo, serving_ca: CertificateAuthority
) -> Iterator[Running]:
    with serving(connect_records(minio_server, bucket, ring), minio_server, mqtt_broker, serving_ca) as gateway:
        yield gateway


@pytest.fixture
def records(ring: KeyRing, bucket: str, minio_server: MinioInfo) -> RecordClient:
    return connect_records(minio_server, bucket, ring)


@pytest.fixture
def serving_ca(tmp_path: Any) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki", "gateway-ca", "medcloud-test-gateway-ca")


# ----------------------------------------------------------------------------- HTTPS


def test_an_https_batch_is_one_record_in_order_and_stored_once_when_sent_twice(
    gateway: Running, records: RecordClient
) -> None:
    batch = [reading(n) for n in range(300)]
    with gateway.https() as client:
        first = client.post("/v1/readings", json=batch)
        again = client.post("/v1/readings", json=batch)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["result"] == "stored"
    assert answer["count"] == 300
    assert again.json() == answer  # the same batch lands on the same record name
    (kept,) = batches(records)
    assert [d["id"] for d in kept] == answer["observationIds"]
    assert times(kept) == [r["time"] for r in batch]
    assert answer["record"] == batch_name("Observation", answer["observationIds"])
    assert gateway.metrics.value(DeviceProtocol.HTTPS, Result.STORED) == 600


def test_a_fhir_bundle_of_observations_is_one_record(gateway: Running, records: RecordClient) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p-4004"},
        "device": {"identifier": {"value": "scale-2"}},
        "valueQuantity": {"value": 70.4, "unit": "kg"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {**observation, "effectiveDateTime": f"2024-05-02T07:0{n}:00Z"}} for n in range(5)],
    }
    with gateway.https() as client:
        response = client.post("/v1/readings", json=bundle)
    assert response.status_code == 201, response.text
    (kept,) = batches(records)
    assert times(kept) == [f"2024-05-02T07:0{n}:00Z" for n in range(5)]


def test_a_bad_reading_refuses_the_whole_https_batch_naming_its_index(gateway: Running, records: RecordClient) -> None:
    batch = [reading(n) for n in range(10)]
    batch[3] = {**batch[3], "unit": "furlongs"}
    batch[7] = {**batch[7], "kind": "blood-sugar"}
    with gateway.https() as client:
        response = client.post("/v1/readings", json=batch)
        empty = client.post("/v1/readings", json=[])
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["result"] == "rejected"
    assert [e["index"] for e in answer["errors"]] == [3, 7]
    assert "unit 'furlongs' is not known for heart-rate" in answer["errors"][0]["error"]
    assert answer["error"].startswith("reading 3: unit 'furlongs'")
    assert empty.status_code == 422
    assert batches(records) == []
    assert gateway.metrics.value(DeviceProtocol.HTTPS, Result.REJECTED) == 11
    assert gateway.metrics.value(DeviceProtocol.HTTPS, Result.STORED) == 0


def test_an_https_batch_that_cannot_be_stored_is_503_and_stored_whole_when_sent_again(
    ring: KeyRing, outage_bucket: str, root: Minio, minio_server: MinioInfo, mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
) -> None:  # fmt: skip
    records = connect_records(minio_server, outage_bucket, ring)
    batch = [reading(n) for n in range(50)]
    with serving(records, minio_server, mqtt_broker, serving_ca) as gateway, gateway.https() as client:
        refused = client.post("/v1/readings", json=batch)
        assert refused.status_code == 503, refused.text
        assert refused.json()["result"] == "failed"
        root.make_bucket(outage_bucket)
        assert batches(records) == []
        resent = client.post("/v1/readings", json=batch)
    assert resent.status_code == 201, resent.text
    (documents,) = batches(records)
    assert times(documents) == [r["time"] for r in batch]


# ----------------------------------------------------------------------------- MLLP


def send_stream(gateway: Running, messages: list[str]) -> list[str]:
    """Several ORUs written at once on one connection (a streaming sender); each ACK's MSA, in order."""
    return [ack.split("\r")[1] for ack in devices.send_stream(gateway, [m.encode() for m in messages])]


def hl7(n: int, value: str = "72") -> str:
    when = f"202405020{n // 60:01d}{n % 60:02d}00+0000"
    return oru(f"S-{n}", f"OBX|1|NM|8867-4^Heart rate^LN||{value}|/min|||||F|||{when}|||||hr-9")


@pytest.mark.parametrize(("count", "bad", "max_messages"), [(40, 17, mllp.MAX_MESSAGES), (200, 130, 25)])
def test_an_mllp_stream_is_stored_as_batches_and_each_message_answered_in_order(
    gateway: Running, records: RecordClient, monkeypatch: pytest.MonkeyPatch, count: int, bad: int, max_messages: int
) -> None:
    # With small batches one read is several: each stored as its record, all answered in order.
    monkeypatch.setattr(mllp, "MAX_MESSAGES", max_messages)
    messages = [hl7(n) for n in range(count)]
    messages[bad] = hl7(bad, value="seventy")
    msas = send_stream(gateway, messages)
    assert [m.split("|")[2] for m in msas] == [f"S-{n}" for n in range(count)]
    assert [m.split("|")[1] for m in msas] == ["AE" if n == bad else "AA" for n in range(count)]
    found = batches(records)
    kept = [d for batch in found for d in batch]
    assert len(kept) == len({d["id"] for d in kept}) == count - 1
    # Fewer records than messages: what arrived together was stored together, in the order sent.
    assert -(-(count - 1) // max_messages) <= len(found) < count - 1
    for batch in found:
        assert times(batch) == sorted(times(batch))


def test_an_mllp_batch_that_cannot_be_stored_is_answered_ae_whole_and_stored_once_when_resent(
    ring: KeyRing, outage_bucket: str, root: Minio, minio_server: MinioInfo, mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
) -> None:  # fmt: skip
    records = connect_records(minio_server, outage_bucket, ring)
    messages = [hl7(n) for n in range(20)]
    with serving(records, minio_server, mqtt_broker, serving_ca) as gateway:
        refused = send_stream(gateway, messages)
        assert all(m.split("|")[1] == "AE" and "not stored" in m for m in refused), refused
        root.make_bucket(outage_bucket)
        assert batches(records) == []
        accepted = send_stream(gateway, messages)
    assert all(m.split("|")[1] == "AA" for m in accepted), accepted
    kept = stored(records)
    assert len(kept) == len({d["id"] for d in kept}) == 20


def test_mllp_batches_of_one_read_when_storage_fails_are_all_answered_ae_in_order_and_stored_once_when_resent(
    ring: KeyRing, outage_bucket: str, root: Minio, minio_server: MinioInfo, mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(mllp, "MAX_MESSAGES", 25)
    records = connect_records(minio_server, outage_bucket, ring)
    messages = [hl7(n) for n in range(100)]
    with serving(records, minio_server, mqtt_broker, serving_ca) as gateway:
        refused = send_stream(gateway, messages)
        assert [m.split("|")[2] for m in refused] == [f"S-{n}" for n in range(100)]
        assert all(m.split("|")[1] == "AE" and "not stored" in m for m in refused), refused
        root.make_bucket(outage_bucket)
        assert batches(records) == []
        accepted = send_stream(gateway, messages)
    assert [m.split("|")[2] for m in accepted] == [f"S-{n}" for n in range(100)]
    assert all(m.split("|")[1] == "AA" for m in accepted), accepted
    found = batches(records)
    assert len(found) >= 4
    kept = [d for batch in found for d in batch]
    assert len(kept) == len({d["id"] for d in kept}) == 100


# ----------------------------------------------------------------------------- MQTT


def test_mqtt_readings_across_an_outage_are_stored_once_in_batches_in_order(
    ring: KeyRing, outage_bucket: str, root: Minio, minio_server: MinioInfo, mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
) -> None:  # fmt: skip
    records = connect_records(minio_server, outage_bucket, ring)
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"batcher-{uuid.uuid4().hex[:6]}")
    device.tls_set(ca_certs=mqtt_broker.ca_file, certfile=mqtt_broker.client_cert, keyfile=mqtt_broker.client_key)
    device.connect(mqtt_broker.host, mqtt_broker.port)
    device.loop_start()
    try:
        with serving(records, minio_server, mqtt_broker, serving_ca) as gateway:
            metrics = gateway.metrics
            published = []
            for n in range(400):
                body: Any = {k: v for k, v in reading(n).items() if k != "deviceId"}
                if n == 200:
                    body = [body, {**body, "unit": "furlongs"}]  # a batch in one message: refused whole
                published.append(device.publish(readings_topic(HOSPITAL, "hr-5"), json.dumps(body), qos=1))
            for info in published:
                info.wait_for_publish(timeout=60)
            wait_for(lambda: metrics.value(DeviceProtocol.MQTT, Result.FAILED) >= 1, "a failed store", timeout=60)
            assert metrics.value(DeviceProtocol.MQTT, Result.STORED) == 0
            root.make_bucket(outage_bucket)
            wait_for(lambda: metrics.value(DeviceProtocol.MQTT, Result.STORED) >= 399, "all stored", timeout=300)
            found = batches(records)
            assert metrics.value(DeviceProtocol.MQTT, Result.STORED) == 399
            assert metrics.value(DeviceProtocol.MQTT, Result.REJECTED) == 2
    finally:
        device.loop_stop()
        device.disconnect()
    kept = [d for batch in found for d in batch]
    assert len(kept) == len({d["id"] for d in kept}) == 399
    assert len(found) < 399
    assert sorted(times(kept)) == sorted(reading(n)["time"] for n in range(400) if n != 200)
    for batch in found:
        assert times(batch) == sorted(times(batch))
