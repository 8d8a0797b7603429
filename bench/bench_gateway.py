"""Device gateway throughput per transport into a real MinIO, against raw MinIO puts of the same encrypted bytes.

Prints figures only; never passes or fails. Run:
``.venv/bin/python bench/bench_gateway.py [--count N] [--single N] [--batch N]``.

It starts its own MinIO and Mosquitto (a LocalCluster without Kubernetes) and
one gateway process (HTTPS with TLS, MLLP, MQTT; its pid is printed, for a
profiler: ``py-spy record --pid PID``), storing into a
bucket with object lock like a RecordStore's, data keys from an in-process key
ring. Each transport is driven by one sender, as one device or one hub would,
and timed until every reading is stored:

- HTTPS, one reading a request (``--single`` of them), 201 after each is stored;
- HTTPS, ``--batch`` readings a request (a JSON array), ``--count`` in all;
- MLLP, one ORU^R01 of one OBX and its ACK at a time (``--single``);
- MLLP streaming: windows of 50 ORU^R01 of 10 OBX written at once, then their 50 ACKs (``--count`` OBX);
- MQTT: ``--count`` QoS 1 publishes of one reading each, at most 5,000 ahead of what is stored (the
  broker's queue for the gateway holds 10,000); done when the gateway has stored them all (the gateway
  batches them: a batch's messages are acknowledged once its record is stored).

Two baselines, both ``Minio.put_object`` of bytes the gateway stored (ciphertext and metadata), on the
same MinIO in the same run: the record of one reading put once per reading (what storing each reading
as its own object costs), and the record of a ``--batch``-reading batch put once per batch (what
storing batches costs at best, counted in readings). Each transport's figure is also given per CPU second
of the gateway process (``/proc/<pid>/stat``): on a machine shared with other work the wall-clock figure is
mostly the share of the cores the gateway got; per CPU second is what it does with a core of its own.
A 12-lead, 10 s, 500 Hz ECG strip's end-to-end latency (HTTPS POST until 201, i.e. stored) is the
median of a few.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import signal
import socket
import ssl
import statistics
import tempfile
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
from medcloud.tenancy.mqtt import readings_topic
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_cli.localcluster.process import free_port
from medcloud_gateway.hl7v2 import MllpDecoder, frame
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.service import Gateway
from medcloud_gateway.settings import GatewaySettings

_MQTT_AHEAD = 5000
"""Readings the MQTT sender may publish ahead of what the gateway has stored."""
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


def _serve_gateway(settings: GatewaySettings, store: dict[str, Any]) -> None:
    """The gateway process: its own record client and key ring, serving until SIGTERM."""
    minio = Minio(store["endpoint"], store["access_key"], store["secret_key"], secure=False)
    keys = InMemoryKeyProvider.from_dict(store["ring"], kek=store["kek"])
    gateway = Gateway(settings, Ingestor(RecordClient(minio, store["bucket"], keys), GatewayMetrics()))

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await gateway.run(stop)

    asyncio.run(serve())


class _Running:
    """The gateway in a process of its own, so senders and baselines in this one do not share its interpreter."""

    def __init__(self, settings: GatewaySettings, store: dict[str, Any]) -> None:
        self.settings = settings
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(target=_serve_gateway, args=(settings, store), name="gateway")
        self._health = httpx.Client(base_url=f"http://127.0.0.1:{settings.health_port}", timeout=30)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def stored(self, protocol: DeviceProtocol) -> float:
        """The gateway's ``medcloud_gateway_readings_total`` for ``protocol`` and ``stored``, from /metrics."""
        wanted = f'medcloud_gateway_readings_total{{protocol="{protocol.value}",result="{Result.STORED.value}"}}'
        for line in self._health.get("/metrics").text.splitlines():
            if line.startswith(wanted):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def __enter__(self) -> _Running:
        self._process.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if self._health.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self._process.is_alive():
                raise RuntimeError("the gateway process did not become ready")
            time.sleep(0.1)

    def __exit__(self, *_: object) -> None:
        self._process.terminate()
        self._process.join(30)
        self._health.close()


def _rate(count: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def _cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far, all its threads (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Figures:
    """Each transport's observations per second of wall time, and per CPU second of the gateway process: on a
    machine shared with other work the first is mostly the share of the cores the gateway got, the second what
    one process does with a core of its own (as long as it is CPU-bound)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.rates: dict[str, tuple[float, float]] = {}

    def measure(self, label: str, count: int, run: Callable[[], None]) -> None:
        cpu = _cpu_seconds(self._pid)
        rate = _rate(count, run)
        self.rates[label] = rate, count / max(_cpu_seconds(self._pid) - cpu, 1e-9)


def _wait_stored(gateway: _Running, protocol: DeviceProtocol, target: float) -> None:
    deadline = time.monotonic() + 600
    while (stored := gateway.stored(protocol)) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{protocol} stored {stored} of {target}")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="readings per batched transport")
    parser.add_argument("--single", type=int, default=1_000, help="readings per one-at-a-time transport")
    parser.add_argument("--batch", type=int, default=500, help="readings per HTTPS request when batched")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as state:
        servers = LocalCluster(Path(state), ClusterOptions(with_kubernetes=False))
        try:
            info = servers.start()
            assert info.minio is not None
            assert info.broker is not None
            run(Path(state), info.minio, info.broker, args.count, args.single, args.batch)
        finally:
            servers.stop()


def _settings(state: Path, minio_info: Any, broker: Any, bucket: str, ca: CertificateAuthority) -> GatewaySettings:
    serving = ca.issue("gateway", "gateway", server_names=("127.0.0.1",), client=False)
    return GatewaySettings.model_validate(
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


def _strip() -> bytes:
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
    return json.dumps(payload).encode()


def _mllp(port: int, messages: list[bytes], window: int) -> None:
    """Write ``window`` messages at once, then read their ACKs, until all are sent."""
    decoder = MllpDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
        for start in range(0, len(messages), window):
            chunk = messages[start : start + window]
            conn.sendall(b"".join(frame(m) for m in chunk))
            acks: list[bytes] = []
            while len(acks) < len(chunk):
                acks.extend(decoder.feed(conn.recv(65536)))
            assert all(b"MSA|AA|" in a for a in acks), acks[0]


def _object(minio: Minio, bucket: str, name: str) -> tuple[bytes, dict[str, str | list[str] | tuple[str]]]:
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
    return ciphertext, metadata


def _raw_puts(minio: Minio, bucket: str, name: str, puts: int) -> float:
    """Puts per second of the object ``name``'s very bytes and metadata."""
    ciphertext, metadata = _object(minio, bucket, name)
    prefix = uuid.uuid4().hex[:8]

    def put() -> None:
        for n in range(puts):
            minio.put_object(bucket, f"raw/{prefix}/{n}", io.BytesIO(ciphertext), len(ciphertext), metadata=metadata)

    return _rate(puts, put)


def run(state: Path, minio_info: Any, broker: Any, count: int, single: int, batch: int) -> None:
    minio = Minio(minio_info.endpoint, minio_info.access_key, minio_info.secret_key, secure=False)
    bucket = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    minio.make_bucket(bucket, object_lock=True)
    kek = generate_kek()
    ring = KeyRing.create(hospital="bench", store="vitals", kek=kek)
    ca = CertificateAuthority(state / "pki", "bench-ca", "bench CA")
    settings = _settings(state, minio_info, broker, bucket, ca)
    store = {
        "endpoint": minio_info.endpoint,
        "access_key": minio_info.access_key,
        "secret_key": minio_info.secret_key,
        "bucket": bucket,
        "ring": ring.to_dict(),
        "kek": kek,
    }
    samples: dict[str, str] = {}
    with _Running(settings, store) as gateway:
        assert gateway.pid is not None
        print(f"gateway process pid {gateway.pid}", flush=True)
        figures = _Figures(gateway.pid)
        context = ssl.create_default_context(cafile=str(ca.paths.cert))
        url = f"https://127.0.0.1:{settings.https_port}"
        with httpx.Client(base_url=url, verify=context, timeout=120) as client:

            def https_single() -> None:
                for n in range(single):
                    response = client.post("/v1/readings", json=_reading(n, "hr-https"))
                    assert response.status_code == 201, response.text
                    samples["single"] = response.json()["record"]

            figures.measure("HTTPS, 1 reading/request", single, https_single)

            def https_batched() -> None:
                for start in range(0, count, batch):
                    body = [_reading(n, "hr-https-batch") for n in range(start, min(count, start + batch))]
                    response = client.post("/v1/readings", json=body)
                    assert response.status_code == 201, response.text
                    samples["batch"] = response.json()["record"]

            figures.measure(f"HTTPS, {batch} readings/request", count, https_batched)

            strip = _strip()

            def latency() -> float:
                start = time.perf_counter()
                response = client.post("/v1/readings", content=strip, headers={"content-type": "application/json"})
                assert response.status_code == 201, response.text
                return (time.perf_counter() - start) * 1000

            latencies = [latency() for _ in range(5)]

        port = settings.hl7v2_port
        singles = [_oru(n, 1) for n in range(single)]
        figures.measure("MLLP, 1 OBX/message, ACK each", single, lambda: _mllp(port, singles, 1))
        streamed = [_oru(n + 100_000, 10) for n in range(count // 10)]
        figures.measure("MLLP stream, 50 msgs x 10 OBX", count, lambda: _mllp(port, streamed, 50))

        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-device")
        device.tls_set(ca_certs=broker.ca_file, certfile=broker.client_cert, keyfile=broker.client_key)
        device.max_inflight_messages_set(1000)
        device.connect(broker.host, broker.port)
        device.loop_start()
        try:

            def publish() -> None:
                for n in range(count):
                    if n % 1000 == 0:
                        # Stay within what the broker queues for the gateway's session (max_queued_messages,
                        # 10,000): past it Mosquitto drops QoS 1 messages for a subscriber that is behind.
                        _wait_stored(gateway, DeviceProtocol.MQTT, n - _MQTT_AHEAD)
                    device.publish(readings_topic("bench", "hr-mqtt"), json.dumps(_reading(n)), qos=1)
                _wait_stored(gateway, DeviceProtocol.MQTT, count)

            figures.measure("MQTT, 1 reading/message", count, publish)
        finally:
            device.loop_stop()
            device.disconnect()

    per_reading = _raw_puts(minio, bucket, samples["single"], min(single, 1000))
    per_batch = _raw_puts(minio, bucket, samples["batch"], 200) * batch
    size_one = len(_object(minio, bucket, samples["single"])[0])
    size_batch = len(_object(minio, bucket, samples["batch"])[0])
    print(f"one gateway process, one sender per transport; --count {count} --single {single} --batch {batch}")
    print(f"baseline A: raw put of a 1-reading record ({size_one} B), one put per reading")
    print(f"baseline B: raw put of a {batch}-reading batch record ({size_batch} B), one put per {batch} readings")
    print(f"{'transport':<34}{'observations/s':>16}{'ratio to A':>12}{'ratio to B':>12}{'per gateway CPU-s':>19}")
    print(f"{'A: raw put per reading':<34}{per_reading:>16.0f}{1.0:>12.2f}{per_reading / per_batch:>12.3f}")
    print(f"{'B: raw put per batch':<34}{per_batch:>16.0f}{per_batch / per_reading:>12.2f}{1.0:>12.3f}")
    for label, (rate, per_cpu) in figures.rates.items():
        print(f"{label:<34}{rate:>16.0f}{rate / per_reading:>12.2f}{rate / per_batch:>12.3f}{per_cpu:>19.0f}")
    print(
        f"12-lead 10 s 500 Hz ECG strip over HTTPS, POST to stored (201): median {statistics.median(latencies):.0f} ms "
        f"(min {min(latencies):.0f}, max {max(latencies):.0f}, n={len(latencies)})"
    )


if __name__ == "__main__":
    main()
