"""Public device messages (tests/data/devices) through the gateway's real listeners into the real MinIO.

IHE PCD-01 and Continua messages over MLLP, several in one stream with CR, LF
and CRLF segment ends; a 12-lead ECG strip and Open mHealth data points over
HTTPS and MQTT (the real Mosquitto). What is stored is read back, decrypted,
and must be valid FHIR R4 (fhir.resources and HL7's JSON schema).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from medcloud.models import DeviceProtocol
from medcloud.records.batches import read_resources
from medcloud.records.client import RecordClient
from medcloud_gateway.hl7v2 import MllpDecoder, frame
from medcloud_gateway.metrics import Result
from tests.fhir_r4 import assert_valid_r4_observation
from tests.integration import test_gateway as base
from tests.support import wait_for

pytestmark = [pytest.mark.minio, pytest.mark.broker]

# The gateway and its fixtures are test_gateway's: one way to run a gateway in the tests.
records = base.records
serving_ca = base.serving_ca
gateway = base.gateway
device = base.device
Running = base.Running

DATA = Path(__file__).parents[1] / "data" / "devices"
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def stored(records: RecordClient) -> list[dict[str, Any]]:
    found = base.stored(records)
    for document in found:
        assert_valid_r4_observation(document)
    return found


def mdc_codes(observations: list[dict[str, Any]]) -> list[str]:
    return sorted(o["code"]["coding"][-1]["code"] for o in observations)


def send_stream(running: base.Running, messages: list[bytes]) -> list[str]:
    """Every message in one write on one connection; the ACKs, in order."""
    decoder = MllpDecoder()
    acks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", running.settings.hl7v2_port), timeout=30) as conn:
        conn.sendall(b"".join(frame(m) for m in messages))
        while len(acks) < len(messages):
            data = conn.recv(65536)
            assert data, "the gateway closed the connection before every ACK"
            acks.extend(decoder.feed(data))
    return [a.decode() for a in acks]


def msa(ack: str) -> list[str]:
    return ack.split("\r")[1].split("|")


def test_pcd01_and_continua_messages_in_one_mllp_stream(gateway: base.Running, records: RecordClient) -> None:
    hl7 = DATA / "hl7v2"
    lf = (hl7 / "ipf-pcd01-request.hl7").read_bytes()
    crlf = (hl7 / "ipf-continua-wan-scale.hl7").read_bytes().replace(b"\n", b"\r\n")
    cr = (hl7 / "constructed-pcd01-ecg-waveform.hl7").read_bytes()
    refused = (hl7 / "ipf-pcd01-maximum-request2.hl7").read_bytes()
    acks = send_stream(gateway, [lf, crlf, cr, refused])
    assert [msa(a)[1] for a in acks] == ["AA", "AA", "AA", "AE"]
    assert msa(acks[0])[3] == "stored 1 observation(s)"
    assert msa(acks[1])[3] == "stored 6 observation(s)"
    assert msa(acks[2])[3] == "stored 3 observation(s)"
    assert "MDC code 528391 (MDC_DEV_SPEC_PR" in msa(acks[3])[3]  # MSA-3: the first 80 characters
    observations = stored(records)
    assert mdc_codes(observations) == sorted(
        ["150020", "188736", "188740", "188752", "188736", "188740", "188752", "131328", "196648", "147842"]
    )
    panel = next(o for o in observations if o["code"]["coding"][-1]["code"] == "150020")
    assert [c["code"] for c in panel["code"]["coding"]] == ["85354-9", "150020"]
    assert gateway.metrics.value(DeviceProtocol.HL7V2, Result.STORED) == 10
    with gateway.health() as client:
        devices = client.get("/devices").json()
        metrics = client.get("/metrics").text
    assert {d["deviceId"]: d["state"] for d in devices["devices"]} == {
        "0123456789ABCDEF": "Online",
        "00A037009B000001": "Online",
    }
    assert devices["counts"] == {"Online": 2, "Stale": 0, "Offline": 0}
    assert 'medcloud_gateway_devices{state="Online"} 2.0' in metrics
    # Sent again, the same messages are the same Observations (stable ids): batched with other messages this
    # time, they are in a second record, and a reader taking each id once (as read_resources does) sees 10.
    assert [msa(a)[1] for a in send_stream(gateway, [lf, crlf])] == ["AA", "AA"]
    again = list(read_resources(records, "Observation"))
    assert sorted(o["id"] for o in again) == sorted(o["id"] for o in observations)


def strip(device_id: str, seconds: int = 10) -> dict[str, Any]:
    samples = 500 * seconds
    return {
        "deviceId": device_id,
        "patient": "Patient/p-5005",
        "time": "2024-05-01T08:30:00+08:00",
        "waveform": {
            "samplesPerSecond": 500,
            "unit": "uV",
            "leads": {lead: [((i * 5 + n) % 300) - 150 for i in range(samples)] for n, lead in enumerate(LEADS)},
        },
    }


def data_point(name: str, schema: str, version: str) -> dict[str, Any]:
    return {
        "patient": "Patient/p-5005",
        "deviceId": "phone-7",
        "dataPoint": {
            "header": {
                "uuid": "0d3c6a5e-2b1f-4c2e-8f9a-7e6d5c4b3a21",
                "schema_id": {"namespace": "omh", "name": schema, "version": version},
                "source_creation_date_time": "2024-05-01T08:30:00+08:00",
            },
            "body": json.loads((DATA / "omh" / name).read_text()),
        },
    }


def test_ecg_strip_and_open_mhealth_over_https(gateway: base.Running, records: RecordClient) -> None:
    good = data_point("blood-pressure-4.0-blood-pressure-only.json", "blood-pressure", "4.0")
    bad = data_point("body-weight-3.0-invalid-unit.json", "body-weight", "3.0")
    with gateway.https() as client:
        ecg = client.post("/v1/readings", json=strip("ecg-3"))
        pressure = client.post("/v1/readings", json=good)
        refused = client.post("/v1/readings", json=bad)
    assert ecg.status_code == 201, ecg.text
    assert pressure.status_code == 201, pressure.text
    assert refused.status_code == 422
    assert "body_weight/unit: 'km' is not one of" in refused.json()["error"]
    observations = {o["code"]["coding"][0]["code"]: o for o in stored(records)}
    assert set(observations) == {"11524-6", "85354-9"}
    leads = observations["11524-6"]["component"]
    assert len(leads) == 12
    assert all(len(c["valueSampledData"]["data"].split(" ")) == 5000 for c in leads)
    assert observations["85354-9"]["device"]["identifier"]["value"] == "phone-7"


def test_ecg_strip_and_open_mhealth_over_mqtt(
    gateway: base.Running, device: mqtt.Client, records: RecordClient
) -> None:
    base.publish(device, "ecg-9", strip("ecg-9", seconds=2) | {"deviceId": "ecg-9"})
    point = data_point("oxygen-saturation-2.0-saturation-only.json", "oxygen-saturation", "2.0")
    point.pop("deviceId")  # the topic says which device sent it
    base.publish(device, "ox-4", point)

    def both() -> list[dict[str, Any]] | None:
        found = stored(records)
        return found if len(found) == 2 else None

    observations = {o["code"]["coding"][0]["code"]: o for o in wait_for(both, "the strip and the data point")}
    assert observations["2708-6"]["device"]["identifier"]["value"] == "ox-4"
    assert observations["11524-6"]["device"]["identifier"]["value"] == "ecg-9"
    assert gateway.metrics.value(DeviceProtocol.MQTT, Result.STORED) == 2
