"""The gateway process: every enabled listener, health and metrics, until told to stop.

:func:`connect_records` builds the record client the way a gateway pod has it
(the store's credentials Secret, keys from the key service); :class:`Gateway`
takes any :class:`~medcloud_gateway.ingest.Ingestor`, so tests give it one over a
local key ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import certifi
import urllib3
import uvicorn
from minio import Minio

from medcloud.models import DeviceProtocol
from medcloud.records.client import RecordClient
from medcloud.records.keyclient import HttpKeyProvider
from medcloud.tenancy.credentials import Endpoint
from medcloud_gateway.devicetls import DeviceTrust, device_http_protocol
from medcloud_gateway.http import create_health_app, create_readings_app
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.mdc import Vocabulary
from medcloud_gateway.metrics import GatewayMetrics
from medcloud_gateway.mllp import MllpServer
from medcloud_gateway.mqtt import BrokerConnection, MqttListener
from medcloud_gateway.presence import Presence
from medcloud_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 64
"""HTTP connections and requests one listener serves at once; uvicorn answers the next 503."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the gateway: several run in one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def connect_records(settings: GatewaySettings) -> RecordClient:
    """The RecordStore's client: its own S3 credentials, data keys from the key service."""
    if not settings.key_service_url:
        raise ValueError("MEDCLOUD_KEY_SERVICE_URL is not set: the gateway gets its data keys from the key service")
    endpoint = Endpoint.parse(settings.s3_endpoint)
    tls: dict[str, Any] = {"ca_cert_data": settings.s3_ca_pem} if settings.s3_ca_pem else {"ca_certs": certifi.where()}
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=30.0),
        cert_reqs="CERT_REQUIRED",
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        **tls,
    )
    minio = Minio(
        endpoint.address,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=endpoint.secure,
        http_client=http,
    )
    keys = HttpKeyProvider(
        settings.key_service_url,
        settings.namespace,
        settings.record_store,
        token_file=settings.key_service_token_file,
        verify=str(settings.key_service_ca_file) if settings.key_service_ca_file else True,
    )
    return RecordClient(minio, settings.bucket, keys)


def broker_connection(settings: GatewaySettings) -> BrokerConnection:
    assert settings.mqtt_ca_file
    assert settings.mqtt_cert_file
    assert settings.mqtt_key_file
    return BrokerConnection(
        host=settings.mqtt_broker_host,
        port=settings.broker_port,
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
        client_id=settings.mqtt_client_id or f"medcloud-gateway-{socket.gethostname()}",
        hospital=settings.hospital,
        share_group=settings.mqtt_share_group,
        publish_errors=settings.mqtt_publish_errors,
    )


class Gateway:
    """The listeners of one gateway process over one ingestor."""

    def __init__(self, settings: GatewaySettings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        enabled = set(settings.protocols)
        self.trust = (
            DeviceTrust(
                settings.device_ca_file,
                settings.device_crl_file,
                settings.tls_cert_file,
                settings.tls_key_file,
                settings.crl_reload_seconds,
            )
            if settings.device_ca_file and settings.device_crl_file and settings.tls_cert_file and settings.tls_key_file
            else None
        )
        self.mllp = (
            MllpServer(
                ingestor,
                settings.host,
                settings.hl7v2_port,
                local=settings.local_zone,
                vocabulary=Vocabulary.with_mappings(settings.code_mappings),
                trust=self.trust if settings.hl7v2_tls else None,
            )
            if DeviceProtocol.HL7V2 in enabled
            else None
        )
        self.mqtt = MqttListener(ingestor, broker_connection(settings)) if DeviceProtocol.MQTT in enabled else None
        self._servers: list[_Server] = [
            self._http_server(create_health_app(ingestor, self.readiness), settings.health_port)
        ]
        self._https: _Server | None = None
        if DeviceProtocol.HTTPS in enabled:
            app = create_readings_app(ingestor, self.readiness)
            self._https = self._http_server(app, settings.https_port, settings.tls_cert_file, settings.tls_key_file)
            self._servers.append(self._https)

    def _http_server(self, app: Any, port: int, certfile: Path | None = None, keyfile: Path | None = None) -> _Server:
        config = uvicorn.Config(
            app,
            host=self.settings.host,
            port=port,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            # Logging is the process's (command.py); no lifespan: the gateway starts its own parts.
            log_config=None,
            access_log=False,
            lifespan="off",
            # Bounded memory when storage is slow: requests beyond this many at once are answered 503 at once
            # instead of holding their bodies (up to 2 MiB each) while they wait.
            limit_concurrency=MAX_CONCURRENT_REQUESTS,
        )
        if certfile is not None and self.trust is not None:
            # Mutual TLS: uvicorn builds its own context in load(); the device-checking one replaces it, and the
            # HTTP protocol passes the certificate's device to the app.
            config.http = device_http_protocol(self.trust)
            config.load()
            config.ssl = self.trust.server_context()
        return _Server(config)

    def readiness(self) -> list[str]:
        """What is not up yet; empty when every enabled protocol takes readings."""
        waiting = []
        if self.mqtt is not None and not self.mqtt.subscribed.is_set():
            waiting.append("mqtt: not subscribed to the broker")
        if self.mllp is not None and not self.mllp.serving:
            waiting.append("hl7v2: MLLP listener not started")
        if self._https is not None and not self._https.started:
            waiting.append("https: listener not started")
        return waiting

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then close every listener."""
        tasks = [asyncio.create_task(server.serve(), name="http") for server in self._servers]
        if self.mllp is not None:
            await self.mllp.start()
        if self.mqtt is not None:
            tasks.append(asyncio.create_task(self.mqtt.run(), name="mqtt"))
        if self.trust is not None:
            tasks.append(asyncio.create_task(self.trust.watch(), name="crl"))
        log.info("gateway for %s/%s: %s", self.settings.namespace, self.settings.record_store, self.describe())
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise RuntimeError(f"{task.get_name()} stopped") from task.exception()
        finally:
            waiter.cancel()
            for server in self._servers:
                server.should_exit = True
            if self.mllp is not None:
                await self.mllp.stop()
            for task in tasks:
                if task.get_name() in ("mqtt", "crl"):
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def describe(self) -> str:
        s = self.settings
        parts = [f"health http://{s.host}:{s.health_port}"]
        if self._https is not None:
            scheme = "https" if s.tls_cert_file else "http"
            parts.append(f"readings {scheme}://{s.host}:{s.https_port}/v1/readings")
        if self.mllp is not None:
            parts.append(f"hl7v2 mllp://{s.host}:{s.hl7v2_port}")
        if self.mqtt is not None:
            parts.append(f"mqtt subscriber of mqtts://{s.mqtt_broker_host}:{s.broker_port}")
        return ", ".join(parts)


def build_gateway(settings: GatewaySettings) -> Gateway:
    """A gateway as a pod runs it: its RecordStore through the key service."""
    presence = Presence(timedelta(seconds=settings.online_seconds), timedelta(seconds=settings.offline_seconds))
    ingestor = Ingestor(connect_records(settings), GatewayMetrics(presence), frozenset(settings.device_classes))
    return Gateway(settings, ingestor)
