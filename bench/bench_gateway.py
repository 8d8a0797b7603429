"""Device gateway throughput per transport into a real MinIO, against raw MinIO puts of the same encrypted bytes.

Prints figures only; never passes or fails. Run: ``.venv/bin/python bench/bench_gateway.py [--count N]``.

It starts its own MinIO and Mosquitto (a LocalCluster without Kubernetes) and
one gateway process in this process (HTTPS with TLS, MLLP, MQTT), storing into a
bucket with object lock like a RecordStore's, data keys from an in-process key
ring. For each transport it sends ``count`` readings one after the other, as one
device would, and counts until every one is stored:

- HTTPS: ``POST /v1/readings``, one connection kept alive, 201 after each is stored;
- MLLP: one connection, one ORU^R01 per reading and its ACK (and, batched, ten OBX per message);
- MQTT: QoS 1 publishes from a device; done when the gateway has stored them all.

The baseline is ``Minio.put_object`` of the very bytes one stored Observation
became (ciphertext and metadata), ``count`` times, on the same MinIO: the ratio
says what fraction of raw storage throughput a transport keeps. A 12-lead, 10 s,
500 Hz ECG strip's end-to-end latency (HTTPS POST until 201, i.e. stored) is the
median of a few.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import ssl
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from minio import Minio
from paho.mqtt.enums import CallbackAPIVersion

from medcloud.models import DeviceProtocol
from medcloud.records.client import InMemoryKeyProvider, RecordClient
from medcloud.records.keys import KeyRing, generate_kek
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_cli.localcluster.process import free_port
from medcloud_gateway.hl7v2 import MllpDecoder, frame
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.service import Gateway
from medcloud_gateway.settings import GatewaySettings

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _time(n: int) -> str:
    day, rest = divmod(n, 86400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"2024-05-{1 + day:02d}T{hour:02d}:{minute:02d}:{second:02d}+00:00"


def _hl7_time(n: int) -> str:
    return _time(n).replace("-", "").replace("T", "").replace(":", "").replace("+0000", "")[:14] + "+0000"


def _reading(n: int, device: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"patient": "Patient/p-1", "kind": "heart-rate", "value": 60 + n % 40, "unit": "/min"}
    if device:
        body["deviceId"] = device
    return {**body, "time": _time(n)}


def _oru(n: int, obx: int) -> bytes:
    rows = [
        f"MSH|^~\\&|MON^0011223344556677^EUI-64||||20240501000000+0000||ORU^R01^ORU_R01|B-{n}|P|2.6",
        "PID|||p-1",
        "OBR|1|||182777000^monitoring of patient^SCT|||20240501000000+0000",
    ]
    for i in range(obx):
        rows.append(
            f"OBX|{i + 1}|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.{i}.1|97|262688^MDC_DIM_PERCENT^MDC|||||F|||"
            f"{_hl7_time(n)}||||mon-1"
        )
    return ("\r".join(rows) + "\r").encode()


class _Running:
    """The gateway in a thread of its own."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self.gateway.run(self._stop)

    def __enter__(self) -> _Running:
        self._thread.start()
        self._ready.wait(30)
        deadline = time.monotonic() + 60
        while self.gateway.readiness():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready: {self.gateway.readiness()}")
            time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _rate(count: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def _wait_stored(metrics: GatewayMetrics, protocol: DeviceProtocol, target: float) -> None:
    deadline = time.monotonic() + 600
    while metrics.value(protocol, Result.STORED) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{protocol} stored {metrics.value(protocol, Result.STORED)} of {target}")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="readings per transport")
    args = parser.parse_args()
    count: int = args.count
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as state:
        servers = LocalCluster(Path(state), ClusterOptions(with_kubernetes=False))
        try:
            info = servers.start()
            assert info.minio is not None
            assert info.broker is not None
            run(Path(state), info.minio, info.broker, count)
        finally:
            servers.stop()


def run(state: Path, minio_info: Any, broker: Any, count: int) -> None:
    minio = Minio(minio_info.endpoint, minio_info.access_key, minio_info.secret_key, secure=False)
    bucket = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    minio.make_bucket(bucket, object_lock=True)
    ring = KeyRing.create(hospital="bench", store="vitals", kek=generate_kek())
    records = RecordClient(minio, bucket, InMemoryKeyProvider(ring))
    ca = CertificateAuthority(state / "pki", "bench-ca", "bench CA")
    serving = ca.issue("gateway", "gateway", server_names=("127.0.0.1",), client=False)
    settings = GatewaySettings.model_validate(
        {
            "hospital": "bench",
            "namespace": "hospital-bench",
            "record_store": "vitals",
            "host": "127.0.0.1",
            "health_port": free_port(),
            "https_port": free_port(),
            "hl7v2_port": free_port(),
            "s3_endpoint": f"http://{minio_info.endpoint}",
            "bucket": bucket,
            "access_key": minio_info.access_key,
            "secret_key": minio_info.secret_key,
            "mqtt_broker_host": broker.host,
            "mqtt_broker_port": broker.port,
            "mqtt_ca_file": broker.ca_file,
            "mqtt_cert_file": broker.client_cert,
            "mqtt_key_file": broker.client_key,
            "mqtt_client_id": "bench-gateway",
            "mqtt_share_group": "",
            "tls_cert_file": str(serving.cert),
            "tls_key_file": str(serving.key),
        }
    )
    metrics = GatewayMetrics()
    figures: dict[str, float] = {}
    with _Running(Gateway(settings, Ingestor(records, metrics))):
        context = ssl.create_default_context(cafile=str(ca.paths.cert))
        url = f"https://127.0.0.1:{settings.https_port}"
        with httpx.Client(base_url=url, verify=context, timeout=60) as client:

            def https() -> None:
                for n in range(count):
                    response = client.post("/v1/readings", json=_reading(n, "hr-https"))
                    assert response.status_code == 201, response.text

            figures["HTTPS"] = _rate(count, https)

            def strip() -> float:
                payload = {
                    "deviceId": "ecg-1",
                    "patient": "Patient/p-1",
                    "time": _time(int(time.time()) % 86400),
                    "waveform": {
                        "samplesPerSecond": 500,
                        "unit": "uV",
                        "leads": {lead: [(i * 7 + k) % 400 - 200 for i in range(5000)] for k, lead in enumerate(LEADS)},
                    },
                }
                body = json.dumps(payload).encode()
                start = time.perf_counter()
                response = client.post("/v1/readings", content=body, headers={"content-type": "application/json"})
                assert response.status_code == 201, response.text
                return (time.perf_counter() - start) * 1000

            latencies = [strip() for _ in range(5)]

        def mllp(obx: int) -> Callable[[], None]:
            def send() -> None:
                decoder = MllpDecoder()
                with socket.create_connection(("127.0.0.1", settings.hl7v2_port), timeout=60) as conn:
                    for n in range(count // obx):
                        conn.sendall(frame(_oru(n + 100_000 * obx, obx)))
                        acks: list[bytes] = []
                        while not acks:
                            acks = decoder.feed(conn.recv(65536))
                        assert b"MSA|AA|" in acks[0], acks[0]

            return send

        figures["MLLP"] = _rate(count, mllp(1))
        figures["MLLP, 10 OBX/message"] = _rate(count, mllp(10))

        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-device")
        device.tls_set(ca_certs=broker.ca_file, certfile=broker.client_cert, keyfile=broker.client_key)
        device.connect(broker.host, broker.port)
        device.loop_start()
        try:

            def publish() -> None:
                for n in range(count):
                    device.publish("devices/hr-mqtt/readings", json.dumps(_reading(n)), qos=1)
                _wait_stored(metrics, DeviceProtocol.MQTT, count)

            figures["MQTT"] = _rate(count, publish)
        finally:
            device.loop_stop()
            device.disconnect()

    # The baseline: the bytes one stored Observation became, put raw, as many times.
    name = next(iter(records.list("fhir/Observation/"))).name
    stat = minio.stat_object(bucket, name)
    response = minio.get_object(bucket, name)
    try:
        ciphertext = response.read()
    finally:
        response.close()
        response.release_conn()
    metadata: dict[str, str | list[str] | tuple[str]] = {
        k: str(v) for k, v in (stat.metadata or {}).items() if k.lower().startswith("x-amz-meta-")
    }

    def raw() -> None:
        for n in range(count):
            minio.put_object(bucket, f"raw/{n}", io.BytesIO(ciphertext), len(ciphertext), metadata=metadata)

    baseline = _rate(count, raw)
    print(f"{count} readings per transport, one sender each, one gateway process; object {len(ciphertext)} bytes")
    print(f"{'transport':<24}{'observations/s':>16}{'ratio to raw put':>18}")
    print(f"{'raw MinIO put':<24}{baseline:>16.0f}{1.0:>18.2f}")
    for label, rate in figures.items():
        print(f"{label:<24}{rate:>16.0f}{rate / baseline:>18.2f}")
    print(
        f"12-lead 10 s 500 Hz ECG strip over HTTPS, POST to stored (201): median {statistics.median(latencies):.0f} ms "
        f"(min {min(latencies):.0f}, max {max(latencies):.0f}, n={len(latencies)})"
    )


if __name__ == "__main__":
    main()
