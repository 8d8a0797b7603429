"""A reading the gateway cannot store now (the key service down) is answered 503 with Retry-After, and kept nowhere.

The record client is the real one; its key service is a loopback port nobody
listens on, so the write fails before anything reaches storage (MinIO, also on a
closed port, is never asked).
"""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient
from minio import Minio

from medcloud.models import DeviceProtocol
from medcloud.records.client import RecordClient
from medcloud.records.keyclient import HttpKeyProvider
from medcloud_gateway.http import RETRY_AFTER_SECONDS, create_readings_app
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics, Result

READING = {
    "deviceId": "hr-1",
    "patient": "Patient/p-7007",
    "kind": "heart-rate",
    "value": 72,
    "unit": "/min",
    "time": "2024-05-01T08:00:00+08:00",
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_reading_not_stored_for_want_of_keys_is_answered_503_with_retry_after() -> None:
    keys = HttpKeyProvider(f"http://127.0.0.1:{closed_port()}", "hospital-city", "vitals", token="t", timeout=2)
    records = RecordClient(Minio(f"127.0.0.1:{closed_port()}", "a", "b", secure=False), "vitals", keys)
    metrics = GatewayMetrics()
    with TestClient(create_readings_app(Ingestor(records, metrics), list)) as client:
        response = client.post("/v1/readings", json=READING)
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert response.json() == {
        "result": "failed",
        "observationId": response.json()["observationId"],
        "error": "not stored: KeyUnavailableError",
    }
    assert metrics.value(DeviceProtocol.HTTPS, Result.FAILED) == 1


def test_a_stored_or_refused_reading_carries_no_retry_after() -> None:
    keys = HttpKeyProvider(f"http://127.0.0.1:{closed_port()}", "hospital-city", "vitals", token="t", timeout=2)
    records = RecordClient(Minio(f"127.0.0.1:{closed_port()}", "a", "b", secure=False), "vitals", keys)
    with TestClient(create_readings_app(Ingestor(records, GatewayMetrics()), list)) as client:
        response = client.post("/v1/readings", json={**READING, "kind": "nothing"})
    assert response.status_code == 422
    assert "retry-after" not in response.headers
