"""Outage drills: MinIO down, the key service down, PostgreSQL restarted mid-publish; nothing lost, nothing orphaned.

Each drill prints its figures (a line starting ``drill:``), ends with every
acknowledged write stored exactly once and nothing half-written, and proves its
alert in a real Prometheus (Debian's package, the chart's rules with every
``for`` cut as in tests/integration/test_drills.py): firing while the fault
lasts, gone afterwards, read through Prometheus' HTTP API.

- MinIO (this module's own server: the session's serves every other test)
  stopped for ``MEDCLOUD_DRILL_OUTAGE_SECONDS`` (8 s here; scripts/drill runs
  60 s) while a device publishes readings over MQTT (QoS 1, acknowledged by the
  broker, retried by the gateway) and an app writes records (retrying, as an app
  must on 503): the RecordStore goes Degraded, then Ready on its own.
- The key service stopped: the records CLI exits 75 (EX_TEMPFAIL) with one line,
  a RecordClient raises KeyUnavailableError, the gateway answers HTTPS 503 with
  Retry-After and holds MQTT readings; nothing reaches the bucket. Started again
  on the same address, the same writers succeed, none restarted.
- PostgreSQL restarted while members publish: every publish is either complete
  (index row and payload and metadata readable) or refused 503 with an
  OperationOutcome, and nothing is half-written in the database or in MinIO; the
  Consortium goes Degraded (the operator asks the exchange's /readyz) and Ready again.

The operator, key service, gateway and exchange run in this process (threads),
as the other integration tests run them; MinIO, Mosquitto, PostgreSQL, the API
server and Prometheus are the real servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
import uvicorn
from kubernetes import config
from typer.testing import CliRunner

from medcloud.models import DeviceProtocol
from medcloud.records.client import RecordClient
from medcloud.records.keyclient import HttpKeyProvider
from medcloud.records.keys import KeyUnavailableError
from medcloud.tenancy.mqtt import readings_topic
from medcloud_cli.commands.record_errors import EXIT_RETRYABLE
from medcloud_cli.commands.records import open_client, store_access
from medcloud_cli.localcluster import prometheus
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.exchange import make_audit_bucket
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_cli.localcluster.postgres import PostgresInfo
from medcloud_cli.localcluster.process import free_port, port_accepts
from medcloud_cli.main import app as medcloud_cli
from medcloud_exchange.app import create_app as create_exchange
from medcloud_exchange.stores import content_name, metadata_name
from medcloud_gateway.http import RETRY_AFTER_SECONDS
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.service import Gateway
from medcloud_keyservice.app import create_app as create_key_service
from medcloud_keyservice.settings import KeyServiceSettings
from tests.exchange_harness import (
    admitted_callers,
    consortium_members,
    exchange_operator_env,
    granted_exchange,
    new_database,
    readiness_probed,
)
from tests.exchange_harness import exchange_settings as harness_settings
from tests.exchange_support import RESIDENT_ID, contained_patient, document
from tests.integration import test_gateway as gateway_base
from tests.integration import test_recordstore_operator as recordstores
from tests.integration.test_drills import drill_rules
from tests.integration.test_recordstore_operator import (
    AUDIENCE,
    KEYSERVICE_USER,
    Cluster,
    KeyService,
    PrivateMinio,
    Tenants,
    wait_ready,
)
from tests.operator_support import (
    OPERATOR_NAMESPACE,
    REPO,
    SA_GROUPS,
    Json,
    RunningOperator,
    condition,
    hospital_spec,
    raw,
    run_operator,
)
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.minio, pytest.mark.broker]

OUTAGE_SECONDS = float(os.environ.get("MEDCLOUD_DRILL_OUTAGE_SECONDS", "8"))
READINGS_BEFORE = 40
READINGS_PER_SECOND = 10.0
APP_WRITES_PER_SECOND = 5.0
device = gateway_base.device
serving_ca = gateway_base.serving_ca
# This module's MinIO (stopped by drill 1) and the tenants: as the RecordStore tests have them.
cluster = recordstores.cluster
storage = recordstores.storage
tenants = recordstores.tenants


# --------------------------------------------------------------------------- servers this module stops and starts


class ThreadServer:
    """An ASGI app served by uvicorn in a thread, stopped and started again on the same address."""

    def __init__(self, make_app: Callable[[], Any], port: int) -> None:
        self._make_app = make_app
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config_ = uvicorn.Config(
            self._make_app(), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = server = uvicorn.Server(config_)
        self._thread = threading.Thread(target=server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: server.started, f"a server to listen on {self.url}", timeout=30)

    def stop(self) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), f"the server on {self.url} did not stop"


@pytest.fixture(scope="module")
def exchange_port() -> int:
    """Where drill 3's exchange will listen: known before the operator and Prometheus start, which both ask it."""
    return free_port()


@pytest.fixture(scope="module")
def operator(store_operator_kubeconfig: Path, storage: PrivateMinio, exchange_port: int) -> Iterator[RunningOperator]:
    """The whole operator on this module's MinIO. It deploys exchanges, and asks drill 3's exchange (a local
    process, where no kubelet probes it) whether it serves, every second (docs/exchange.md)."""
    env = exchange_operator_env(
        storage.info,
        MEDCLOUD_RECORDSTORE_RETRY_MAX_SECONDS="2",
        MEDCLOUD_RECORDSTORE_REFRESH_SECONDS="2",
        **readiness_probed(exchange_port),
    )
    with run_operator(store_operator_kubeconfig, env, timeout=120) as running:
        yield running


@pytest.fixture(scope="module")
def keys_server(local_cluster: Any, operator: RunningOperator) -> Iterator[ThreadServer]:
    """The key service as its own identity (deploy/keyservice-rbac.yaml), on an address that outlives restarts."""
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "keyservice-rbac.yaml"))
    api = config.new_client_from_config(config_file=str(local_cluster.kubeconfig_for_user(KEYSERVICE_USER, SA_GROUPS)))
    settings = KeyServiceSettings(operator_namespace=OPERATOR_NAMESPACE, audience=AUDIENCE)
    server = ThreadServer(lambda: create_key_service(settings, api), free_port())
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):
            server.stop()
        api.close()


@pytest.fixture(scope="module")
def key_service(keys_server: ThreadServer, cluster: Cluster) -> KeyService:
    return KeyService(keys_server.url, cluster)


@pytest.fixture(scope="module")
def prometheus_url(
    local_cluster: Any, operator: RunningOperator, keys_server: ThreadServer, exchange_port: int
) -> Iterator[str]:
    if not isinstance(local_cluster, LocalCluster):
        pytest.skip("the drills start Prometheus beside the local cluster")
    targets = {
        prometheus.OPERATOR_JOB: f"127.0.0.1:{operator.metrics_port}",
        prometheus.KEYSERVICE_JOB: f"127.0.0.1:{keys_server.port}",
        prometheus.EXCHANGE_JOB: f"127.0.0.1:{exchange_port}",
    }
    proc, url = prometheus.start_prometheus(local_cluster, targets, rules=drill_rules(), keep_history=False)
    try:
        wait_for(
            lambda: all(prometheus.target_health(url).get(job) == "up" for job in list(targets)[:2]),
            "Prometheus to scrape the operator and the key service",
        )
        yield url
    finally:
        proc.stop()
        # The session cluster's record must not name a server that is gone (`dev up` would start it again).
        local_cluster.processes.remove(proc)
        local_cluster.save_state()


# --------------------------------------------------------------------------- helpers


class Stopwatch:
    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self._start, 1)


def report(line: str) -> None:
    """Print a drill's figures: to the real stdout, since the in-process operator (KopfRunner) swaps sys.stdout."""
    print(line, file=sys.__stdout__, flush=True)


def alert(url: str, name: str) -> str | None:
    return prometheus.firing(url).get(name)


def wait_alert(url: str, name: str, state: str | None, timeout: float = 90) -> None:
    want = "firing" if state == "firing" else "cleared"
    wait_for(lambda: alert(url, name) == state, f"{name} {want} in Prometheus", timeout=timeout)


def store_writer(cluster: Cluster, key_service: KeyService, namespace: str, store: str, account: str) -> RecordClient:
    """A record client as an app has one: the store's own credentials, keys from the key service by a token."""
    key_service.grant(namespace, account, store)
    token = key_service.token(namespace, account)
    access = store_access(cluster.api, namespace, store)
    # current_ttl: the writer asks for the current key version every time (a cached version hides the outage).
    keys = HttpKeyProvider(key_service.url, namespace, store, token=token, timeout=5, current_ttl=0)
    return open_client(access, keys)


def drill_gateway(
    records: RecordClient, storage: PrivateMinio, broker: BrokerInfo, serving_ca: CertificateAuthority
) -> Gateway:
    """A gateway storing into ``records`` (the store's credentials, keys from the key service), on the broker."""
    serving = serving_ca.issue("gateway", "gateway", server_names=("127.0.0.1",), client=False)
    settings = gateway_base.gateway_settings(
        records, storage.url, storage.info.access_key, storage.info.secret_key, broker, serving
    )
    return Gateway(settings, Ingestor(records, GatewayMetrics()))


def store_phase(cluster: Cluster, namespace: str, store: str) -> tuple[str | None, str | None]:
    body = cluster.store(namespace, store) or {}
    available = condition(body, "StorageAvailable") or {}
    return (body.get("status") or {}).get("phase"), available.get("reason")


def every_object(storage: PrivateMinio, bucket: str) -> list[tuple[str, bool]]:
    """Every version in the bucket: (name, is a delete marker)."""
    return [
        (str(o.object_name), bool(o.is_delete_marker))
        for o in storage.root().list_objects(bucket, recursive=True, include_version=True)
    ]


def reading(n: int) -> dict[str, Any]:
    minute, second = divmod(n, 60)
    hour, minute = divmod(minute, 60)
    return {
        "patient": "Patient/p-7007",
        "kind": "heart-rate",
        "value": 40 + n % 100,
        "unit": "/min",
        "time": f"2024-05-01T{8 + hour:02d}:{minute:02d}:{second:02d}+08:00",
    }


def publish(client: mqtt.Client, n: int) -> None:
    """One reading at QoS 1, returned once the broker acknowledged it (PUBACK)."""
    info = client.publish(readings_topic(gateway_base.HOSPITAL, "hr-1"), json.dumps(reading(n)), qos=1)
    info.wait_for_publish(timeout=30)
    assert info.is_published(), f"reading {n} was not acknowledged by the broker"


@dataclass
class AppWriter:
    """An app writing records at a steady pace, retrying each refused write as an app must; its tallies."""

    records: RecordClient
    prefix: str
    acknowledged: dict[str, str] = field(default_factory=dict)
    refused: int = 0
    errors: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            name = f"{self.prefix}/{n:05d}"
            body = os.urandom(512)
            while True:
                try:
                    self.records.put(name, body)
                    break
                except Exception as exc:  # what an app meets: storage or key service trouble
                    self.refused += 1
                    self.errors.add(type(exc).__name__)
                    time.sleep(0.5)
            self.acknowledged[name] = hashlib.sha256(body).hexdigest()
            n += 1
            self.stop.wait(1 / APP_WRITES_PER_SECOND)

    @contextlib.contextmanager
    def running(self) -> Iterator[AppWriter]:
        thread = threading.Thread(target=self.run, name=f"app-{self.prefix}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(timeout=120)
            assert not thread.is_alive(), "the app's last write never finished"


def stored_exactly_once(records: RecordClient, prefix: str, expected: dict[str, str]) -> None:
    names = [info.name for info in records.list(f"{prefix}/")]
    assert len(names) == len(set(names))
    assert set(names) == set(expected), (
        f"lost: {sorted(set(expected) - set(names))[:5]}, unexpected: {sorted(set(names) - set(expected))[:5]}"
    )
    for name, digest in expected.items():
        assert hashlib.sha256(records.get_bytes(name)).hexdigest() == digest, f"{name} is not what was written"


# --------------------------------------------------------------------------- drill 1: MinIO down


def test_minio_down_while_the_gateway_takes_readings_and_an_app_writes_loses_and_doubles_nothing(
    cluster: Cluster,
    storage: PrivateMinio,
    tenants: Tenants,
    key_service: KeyService,
    prometheus_url: str,
    mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
    device: mqtt.Client,
) -> None:
    namespace = tenants.hospital("drill-minio")
    store = tenants.store(namespace, "vitals")
    wait_ready(cluster, namespace, store)
    gateway_records = store_writer(cluster, key_service, namespace, store, "gateway")
    app = AppWriter(store_writer(cluster, key_service, namespace, store, "emr"), "app")
    wait_alert(prometheus_url, "MedcloudRecordStoreDegraded", None)

    gateway = drill_gateway(gateway_records, storage, mqtt_broker, serving_ca)
    metrics = gateway.ingestor.metrics
    watch = Stopwatch()
    with (
        gateway_base.running(gateway, serving_ca.paths.cert),
        app.running(),
    ):
        for n in range(READINGS_BEFORE):
            publish(device, n)
        wait_for(
            lambda: metrics.value(DeviceProtocol.MQTT, Result.STORED) >= READINGS_BEFORE,
            "the readings sent before the outage stored",
        )

        storage.stop()
        down_at = watch()
        sent = READINGS_BEFORE
        degraded_after: float | None = None
        while watch() - down_at < OUTAGE_SECONDS or degraded_after is None:
            publish(device, sent)
            sent += 1
            if degraded_after is None and store_phase(cluster, namespace, store) == ("Degraded", "StorageUnavailable"):
                degraded_after = watch() - down_at
            assert watch() - down_at < OUTAGE_SECONDS + 120, "the RecordStore never went Degraded"
            time.sleep(1 / READINGS_PER_SECOND)
        # The alert's `for` is cut to seconds: it fires within the outage (the drill waits for it if not yet).
        wait_alert(prometheus_url, "MedcloudRecordStoreDegraded", "firing")
        wait_alert(prometheus_url, "MedcloudRecordStorageUnavailable", "firing")
        held = sent - int(metrics.value(DeviceProtocol.MQTT, Result.STORED))
        failed_attempts = int(metrics.value(DeviceProtocol.MQTT, Result.FAILED))
        outage = watch() - down_at
        up_at = watch()  # from the start command: MinIO's own start-up counts
        storage.start()

        wait_ready(cluster, namespace, store, timeout=120)
        ready_after = watch() - up_at
        wait_for(lambda: metrics.value(DeviceProtocol.MQTT, Result.STORED) >= sent, "every reading stored", timeout=600)
        drained_after = watch() - up_at
        # The app resumes on its own: more writes acknowledged after the outage.
        written = len(app.acknowledged)
        wait_for(lambda: len(app.acknowledged) >= written + 5, "the app to write again", timeout=120)
    wait_alert(prometheus_url, "MedcloudRecordStoreDegraded", None)
    cleared_after = watch() - up_at

    # The gateway stores readings in batches, one record each: every reading must be in exactly one of them.
    names = [info.name for info in gateway_records.list("fhir/Observation/")]
    observations = gateway_base.stored(gateway_records)
    assert len(observations) == sent, f"{sent} readings acknowledged by the broker, {len(observations)} stored"
    assert len({o["id"] for o in observations}) == sent, "a reading stored twice"
    assert len({o["effectiveDateTime"] for o in observations}) == sent, "a reading lost and another doubled"
    assert metrics.value(DeviceProtocol.MQTT, Result.STORED) == sent
    assert metrics.value(DeviceProtocol.MQTT, Result.REJECTED) == 0
    stored_exactly_once(app.records, "app", app.acknowledged)
    assert app.refused > 0, "the app never met the outage: not a drill"
    # Nothing orphaned: only the drill's records, none hidden behind a delete marker.
    objects = every_object(storage, gateway_records.bucket)
    assert not [name for name, marker in objects if marker]
    assert {name for name, _ in objects} == set(names) | set(app.acknowledged)
    report(
        f"drill: MinIO down {outage:.0f} s: {sent} readings ({sent - READINGS_BEFORE} during the outage, "
        f"{held} held at restart, {failed_attempts} store attempts failed), {len(app.acknowledged)} app records "
        f"({app.refused} refused writes retried: {', '.join(sorted(app.errors))}); {len(names)} reading batches; "
        f"Degraded after {degraded_after:.1f} s; "
        f"after restart: Ready in {ready_after:.1f} s, backlog stored in {drained_after:.1f} s, alert cleared in "
        f"{cleared_after:.1f} s; 0 lost, 0 doubled"
    )


# --------------------------------------------------------------------------- drill 2: the key service down


def test_the_key_service_down_gives_writers_retryable_errors_and_they_resume_unrestarted(
    cluster: Cluster,
    local_cluster: Any,
    storage: PrivateMinio,
    tenants: Tenants,
    keys_server: ThreadServer,
    key_service: KeyService,
    prometheus_url: str,
    mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
    device: mqtt.Client,
    tmp_path: Path,
) -> None:
    namespace = tenants.hospital("drill-keys")
    store = tenants.store(namespace, "vitals")
    wait_ready(cluster, namespace, store)
    records = store_writer(cluster, key_service, namespace, store, "emr")
    gateway_records = store_writer(cluster, key_service, namespace, store, "gateway")
    key_service.grant(namespace, "cli", store)
    cli_args = [
        "-n",
        namespace,
        "--kubeconfig",
        str(local_cluster.kubeconfig),
        "--key-service",
        key_service.url,
        "--token",
        key_service.token(namespace, "cli"),
    ]
    source = tmp_path / "visit.json"
    source.write_bytes(b'{"resourceType": "Encounter", "status": "finished"}')
    runner = CliRunner()
    wait_alert(prometheus_url, "MedcloudKeyServiceDown", None)

    gateway = drill_gateway(gateway_records, storage, mqtt_broker, serving_ca)
    metrics = gateway.ingestor.metrics
    watch = Stopwatch()
    with (
        gateway_base.running(gateway, serving_ca.paths.cert) as running,
        running.https() as https,
    ):
        keys_server.stop()
        down_at = watch()
        cli = runner.invoke(medcloud_cli, ["records", "put", store, "visits/cli-1", str(source), *cli_args])
        assert cli.exit_code == EXIT_RETRYABLE, cli.output
        lines = cli.output.strip().splitlines()
        assert len(lines) == 1, cli.output
        assert lines[0].startswith("error: key service unreachable"), cli.output
        assert lines[0].endswith("try again later"), cli.output
        with pytest.raises(KeyUnavailableError, match="key service unreachable"):
            records.put("visits/app-1", b"a visit note")
        refused = https.post("/v1/readings", json={**reading(0), "deviceId": "hr-1"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert refused.json()["result"] == "failed"
        publish(device, 1)  # over MQTT: the broker holds it, the gateway retries it
        wait_for(lambda: metrics.value(DeviceProtocol.MQTT, Result.FAILED) >= 1, "the gateway to meet the outage")
        wait_alert(prometheus_url, "MedcloudKeyServiceDown", "firing")
        fired_after = watch() - down_at
        # Nothing half-written: no object, no version, no delete marker.
        assert every_object(storage, records.bucket) == []
        failed = {
            protocol.value: int(metrics.value(protocol, Result.FAILED))
            for protocol in (DeviceProtocol.MQTT, DeviceProtocol.HTTPS)
        }

        keys_server.start()
        up_at = watch()
        # The same writers, none restarted.
        records.put("visits/app-1", b"a visit note")
        again = runner.invoke(medcloud_cli, ["records", "put", store, "visits/cli-1", str(source), *cli_args])
        assert again.exit_code == 0, again.output
        retried = https.post("/v1/readings", json={**reading(0), "deviceId": "hr-1"})
        assert retried.status_code == 201, retried.text
        wait_for(lambda: metrics.value(DeviceProtocol.MQTT, Result.STORED) >= 1, "the held MQTT reading stored")
        resumed_after = watch() - up_at
    wait_alert(prometheus_url, "MedcloudKeyServiceDown", None)
    cleared_after = watch() - up_at

    assert records.get_bytes("visits/app-1") == b"a visit note"
    assert records.get_bytes("visits/cli-1") == source.read_bytes()
    observations = [info.name for info in gateway_records.list("fhir/Observation/")]
    assert len(gateway_base.stored(gateway_records)) == 2
    objects = every_object(storage, records.bucket)
    assert sorted(name for name, _ in objects) == sorted(["visits/app-1", "visits/cli-1", *observations])
    report(
        f"drill: key service down: CLI exit {cli.exit_code}, RecordClient KeyUnavailableError, HTTPS 503 "
        f"Retry-After {RETRY_AFTER_SECONDS}, failed store attempts {failed}; MedcloudKeyServiceDown firing "
        f"{fired_after:.1f} s after the stop; after the start: writers resumed in {resumed_after:.1f} s, alert "
        f"cleared in {cleared_after:.1f} s; 0 objects written while down"
    )


# --------------------------------------------------------------------------- drill 3: PostgreSQL restarted mid-publish

PUBLISHERS = 3


@dataclass
class Publications:
    """What each publish came to: 201 (the document's id), 503 (an OperationOutcome with Retry-After), or else."""

    created: list[str] = field(default_factory=list)
    refused: int = 0
    other: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, http: httpx.Client, headers: dict[str, str], n: int) -> None:
        resident = (RESIDENT_ID, f"11010119{uuid.uuid4().int % 10**10:010d}")
        body = document("emr", f"visit note {n}".encode(), contained_patient(resident))
        response = http.post("/fhir/DocumentReference", content=json.dumps(body), headers=headers)
        with self.lock:
            if response.status_code == 201:
                self.created.append(str(response.json()["id"]))
            elif (
                response.status_code == 503
                and response.headers.get("retry-after")
                and response.json().get("resourceType") == "OperationOutcome"
            ):
                self.refused += 1
            else:
                self.other.append(f"{response.status_code}: {response.text[:200]}")


def exchange_phase(cluster: Cluster, consortium: str, phase: str, reason: str) -> Json | None:
    """The Consortium's ExchangeReady condition once it is in ``phase`` with ``reason``."""
    body = cluster.get("Consortium", consortium)
    found = condition(body, "ExchangeReady")
    if ((body or {}).get("status") or {}).get("phase") == phase and found and found["reason"] == reason:
        return found
    return None


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, PostgresInfo]]:
    """A PostgreSQL of this module's own: the session's serves every other test, so it is not restarted."""
    servers = LocalCluster(
        tmp_path_factory.mktemp("drill-pg"), ClusterOptions(with_kubernetes=False, with_minio=False, with_broker=False)
    )
    state = servers.start()
    assert state.postgres is not None
    try:
        yield servers, state.postgres
    finally:
        servers.stop()


def test_postgres_restarted_mid_publish_leaves_every_publish_complete_or_refused(
    local_cluster: Any,
    cluster: Cluster,
    storage: PrivateMinio,
    operator: RunningOperator,
    keys_server: ThreadServer,
    private_postgres: tuple[LocalCluster, PostgresInfo],
    exchange_port: int,
    prometheus_url: str,
    tmp_path: Path,
) -> None:
    servers, postgres = private_postgres
    suffix = uuid.uuid4().hex[:6]
    county, city, consortium = f"drill-county-{suffix}", f"drill-city-{suffix}", f"drill-{suffix}"
    spec = {
        "displayName": "Drill Medical Alliance",
        "leadHospital": city,
        "members": [city, county],
        "consentRequired": True,
        "sharing": [{"category": "emr", "from": [county], "to": [city]}],
    }
    store_body = {"recordClass": "documents", "retention": {"mode": "GOVERNANCE", "period": "1d"}}
    hospitals = {name: hospital_spec(name) for name in (county, city)}
    database = new_database(postgres, f"exchange_{suffix}")
    # The connection Secret the operator's exchange Deployment reads (docs/install.md).
    database_secret = f"exchange-{consortium}-app"
    cluster.core.create_namespaced_secret(
        OPERATOR_NAMESPACE, {"metadata": {"name": database_secret}, "stringData": {"uri": database}}
    )
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(raw, cluster.core.delete_namespaced_secret, database_secret, OPERATOR_NAMESPACE)
        members = cleanup.enter_context(consortium_members(cluster, hospitals, consortium, spec, "emr", store_body))
        granted_exchange(local_cluster, cluster, consortium)
        settings = harness_settings(
            local_cluster,
            cluster,
            consortium,
            database=database,
            audit=make_audit_bucket(storage.info, f"exchange-audit-{suffix}"),
            minio_server=storage.info,
            key_service_url=keys_server.url,
            folder=tmp_path,
            database_timeout_seconds=2,
        )
        exchange = ThreadServer(lambda: create_exchange(settings), exchange_port)
        exchange.start()
        try:
            with httpx.Client(base_url=exchange.url, timeout=60) as http:
                callers = admitted_callers(cluster, http, members, "emr-connector")
                headers = {**callers[county].headers(), "Content-Type": "application/fhir+json"}
                results = Publications()
                wait_for(
                    lambda: prometheus.target_health(prometheus_url).get(prometheus.EXCHANGE_JOB) == "up",
                    "Prometheus to scrape the exchange",
                )
                wait_alert(prometheus_url, "MedcloudExchangeDatabaseUnavailable", None)
                wait_for(lambda: exchange_phase(cluster, consortium, "Ready", "ExchangeServing"), "ExchangeServing")
                (server,) = [p for p in servers.processes if p.name == "postgres"]
                stop = threading.Event()
                counter = iter(range(10**9))

                def publisher() -> None:
                    with httpx.Client(base_url=exchange.url, timeout=60) as own:
                        while not stop.is_set():
                            results.publish(own, headers, next(counter))

                threads = [threading.Thread(target=publisher, daemon=True) for _ in range(PUBLISHERS)]
                for thread in threads:
                    thread.start()
                watch = Stopwatch()
                wait_for(lambda: len(results.created) >= 10, "publishing under way")
                before = len(results.created)
                server.stop(grace=0)  # killed outright: open transactions are cut, as in a crash or a failover
                down_at = watch()
                degraded = wait_for(
                    lambda: exchange_phase(cluster, consortium, "Degraded", "ExchangeUnavailable"),
                    "the Consortium Degraded",
                )
                degraded_after = watch() - down_at
                assert "PostgreSQL" in degraded["message"], degraded["message"]
                wait_alert(prometheus_url, "MedcloudExchangeDatabaseUnavailable", "firing")
                fired_after = watch() - down_at
                refused_while_down = results.refused
                server.start()
                wait_for(lambda: port_accepts(postgres.port), "PostgreSQL back", timeout=60)
                up_at = watch()
                after = len(results.created)
                wait_for(lambda: len(results.created) >= after + 10, "publishes to succeed again", timeout=120)
                resumed_after = watch() - up_at
                wait_for(
                    lambda: exchange_phase(cluster, consortium, "Ready", "ExchangeServing"),
                    "the Consortium Ready again on its own",
                )
                ready_after = watch() - up_at
                stop.set()
                for thread in threads:
                    thread.join(timeout=120)
                wait_alert(prometheus_url, "MedcloudExchangeDatabaseUnavailable", None)
                cleared_after = watch() - up_at
        finally:
            exchange.stop()

        assert results.other == [], f"answers neither complete nor a 503 OperationOutcome: {results.other[:3]}"
        assert refused_while_down > 0, "no publish met the restart: not a drill"
        with psycopg.connect(settings.database_url.get_secret_value()) as conn:
            rows = {str(r[0]) for r in conn.execute("SELECT id FROM document WHERE publisher = %s", (county,))}
            # The demographics each publish sent along (a fresh patient each time, so one record each).
            demographics = {
                str(r[0]) for r in conn.execute("SELECT record FROM patient_record WHERE publisher = %s", (county,))
            }
        assert rows == set(results.created), (
            f"index rows without a 201: {sorted(rows - set(results.created))[:3]}; "
            f"201s without a row: {sorted(set(results.created) - rows)[:3]}"
        )
        bucket = store_access(cluster.api, f"hospital-{county}", "emr").bucket
        visible: set[str] = set()
        for obj in storage.root().list_objects(bucket, prefix="exchange/", recursive=True):
            visible.add(str(obj.object_name))
        expected = {name for row in rows for name in (content_name(uuid.UUID(row)), metadata_name(uuid.UUID(row)))}
        assert len(demographics) == len(rows), "a publish's demographics are missing from the index, or stray"
        expected |= demographics
        assert visible == expected, (
            f"payloads without an index row: {sorted(visible - expected)[:3]}; "
            f"index rows without a payload: {sorted(expected - visible)[:3]}"
        )
    report(
        f"drill: PostgreSQL restarted under {PUBLISHERS} publishers: {len(results.created)} published "
        f"({before} before the stop), {results.refused} refused 503 OperationOutcome, 0 other answers; "
        f"Consortium Degraded {degraded_after:.1f} s and MedcloudExchangeDatabaseUnavailable firing "
        f"{fired_after:.1f} s after the stop; after the start: publishing again in {resumed_after:.1f} s, "
        f"Consortium Ready in {ready_after:.1f} s, alert cleared in {cleared_after:.1f} s; "
        f"0 half-written (index rows = 201s; visible objects = content, metadata and demographics of each)"
    )
