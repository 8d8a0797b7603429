"""MQTT: readings published by devices to ``devices/<deviceId>/readings``, taken from the broker over TLS.

The gateway subscribes (QoS 1) as one member of a shared subscription, so
gateway replicas split the stream instead of each storing every reading; the
Observation's stable id makes a redelivered reading land on the same record.
A message is acknowledged (PUBACK) only once its reading is stored or refused:
while storage is down the gateway retries the reading it holds and the broker
keeps the rest, so an outage loses nothing. The only thing published back is,
when enabled, a refused reading's reason on ``devices/<deviceId>/errors``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from medcloud.models import DeviceProtocol
from medcloud_gateway.ingest import Ingestor, Outcome
from medcloud_gateway.metrics import Result
from medcloud_gateway.readings import DEVICE_ID_PATTERN

log = logging.getLogger(__name__)

READINGS_FILTER = "devices/+/readings"
_TOPIC = re.compile(r"^devices/([^/]+)/readings$")
_MAX_BACKOFF = 30.0
_STORE_RETRY = 0.5
_MAX_STORE_RETRY = 10.0


def device_of(topic: str) -> str | None:
    """The device id in a readings topic, or None if the topic or the id is not one."""
    match = _TOPIC.match(topic)
    if match is None or not re.match(DEVICE_ID_PATTERN, match.group(1)):
        return None
    return match.group(1)


def error_topic(device_id: str) -> str:
    return f"devices/{device_id}/errors"


def subscription(share_group: str) -> str:
    """The topic filter to subscribe: shared among the gateway's replicas unless the group is empty."""
    return f"$share/{share_group}/{READINGS_FILTER}" if share_group else READINGS_FILTER


@dataclass(frozen=True)
class BrokerConnection:
    """Where the broker is and the gateway's TLS identity towards it."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_id: str
    share_group: str = "medcloud-gateway"
    publish_errors: bool = True

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


class MqttListener:
    """Stays subscribed, reconnecting with backoff, until cancelled."""

    def __init__(self, ingestor: Ingestor, broker: BrokerConnection) -> None:
        self._ingestor = ingestor
        self._broker = broker
        self.subscribed = asyncio.Event()
        """Set while subscribed: readiness, and what tests wait for before publishing."""

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                client = aiomqtt.Client(
                    self._broker.host,
                    self._broker.port,
                    identifier=self._broker.client_id,
                    tls_context=self._broker.tls_context(),
                    # Keep the session (and QoS 1 messages queued for it) across reconnects.
                    clean_session=False,
                )
                # PUBACK only once a reading is stored or refused (see _handle). aiomqtt 2.5 has no option for it;
                # its paho client does.
                client._client.manual_ack_set(True)
                async with client:
                    await client.subscribe(subscription(self._broker.share_group), qos=1)
                    self.subscribed.set()
                    backoff = 1.0
                    log.info("subscribed to %s on %s:%s", READINGS_FILTER, self._broker.host, self._broker.port)
                    async for message in client.messages:
                        await self._handle(client, message)
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                log.warning(
                    "MQTT broker %s:%s: %s; retrying in %.0fs", self._broker.host, self._broker.port, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        device_id = device_of(topic)
        if device_id is None:
            self._ingestor.reject(DeviceProtocol.MQTT, f"topic {topic!r} is not devices/<deviceId>/readings")
            self._ack(client, message)
            return
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw if raw is not None else "")
        backoff = _STORE_RETRY
        while True:
            outcome = await asyncio.to_thread(
                self._ingestor.ingest_payload, DeviceProtocol.MQTT, payload, device_id=device_id
            )
            if outcome.result is not Result.FAILED:
                break
            # Storage or key service down: the reading stays unacknowledged and is tried again, in order. If the
            # gateway stops meanwhile, the broker redelivers it to the next session (QoS 1, persistent session).
            log.info("retrying observation %s in %.1fs: %s", outcome.observation_id, backoff, outcome.error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_STORE_RETRY)
        if not outcome.stored and self._broker.publish_errors:
            await self._report(client, device_id, outcome)
        self._ack(client, message)

    @staticmethod
    def _ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        client._client.ack(message.mid, message.qos)

    async def _report(self, client: aiomqtt.Client, device_id: str, outcome: Outcome) -> None:
        try:
            await client.publish(error_topic(device_id), json.dumps(outcome.as_json()), qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("could not publish the error for %s: %s", device_id, exc)
