"""MQTT: readings published by devices to ``devices/<hospital>/<deviceId>/readings``, taken from the broker over TLS.

The topics carry the hospital (:mod:`medcloud.tenancy.mqtt`): the platform broker serves every hospital, and
a gateway subscribes to its own hospital's topics only (the broker's ACL allows it nothing else).

The gateway subscribes (QoS 1) as one member of a shared subscription, so
gateway replicas split the stream instead of each storing every reading; the
Observation's stable id makes a redelivered reading the same Observation.
Messages are taken in batches, each batch's readings stored as one record. A
message is acknowledged (PUBACK) only once its batch is stored or it is refused:
while storage is down the gateway retries the batch it holds and the broker
keeps the rest, so an outage loses nothing. A message's payload may itself be a
batch (a JSON array of readings), taken or refused whole. The only thing published back is,
when enabled, a refused reading's reason on ``devices/<hospital>/<deviceId>/errors``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from medcloud.models import DeviceProtocol
from medcloud.tenancy import mqtt as topics
from medcloud_gateway.ingest import Ingestor, Outcome
from medcloud_gateway.metrics import Result
from medcloud_gateway.readings import DEVICE_ID_PATTERN

log = logging.getLogger(__name__)

_TOPIC = re.compile(r"^devices/([^/]+)/([^/]+)/readings$")
_MAX_BACKOFF = 30.0
_STORE_RETRY = 0.5
_MAX_STORE_RETRY = 10.0
MAX_BATCH = 500
"""Messages stored as one record at most; the broker's in-flight window must be at least this."""
LINGER = 0.005
"""Seconds a batch waits after its first message for more: what a single reading's latency gains at most."""


def device_of(topic: str, hospital: str) -> str | None:
    """The device id in one of ``hospital``'s readings topics, or None if the topic or the id is not one."""
    match = _TOPIC.match(topic)
    if match is None or match.group(1) != hospital or not re.match(DEVICE_ID_PATTERN, match.group(2)):
        return None
    return match.group(2)


def error_topic(hospital: str, device_id: str) -> str:
    return topics.errors_topic(hospital, device_id)


def subscription(hospital: str, share_group: str) -> str:
    """The topic filter to subscribe: the hospital's readings, shared among the replicas unless the group is empty."""
    return topics.shared_readings_filter(hospital, share_group)


@dataclass(frozen=True)
class BrokerConnection:
    """Where the broker is and the gateway's TLS identity towards it."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_id: str
    hospital: str
    """Whose topics the gateway reads: ``devices/<hospital>/+/readings``."""
    share_group: str = "medcloud-gateway"
    publish_errors: bool = True

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass
class _Received:
    """One message of a batch and what it asks to store, or why it is refused."""

    message: aiomqtt.Message
    device_id: str | None
    observations: list[dict[str, Any]] = field(default_factory=list)
    refused: Outcome | None = None


class MqttListener:
    """Stays subscribed, reconnecting with backoff, until cancelled.

    Messages are taken in batches: what has arrived, waiting at most ``linger`` seconds after the first for
    more, up to ``max_batch``. A batch's good readings are stored as one record; then every message of it is
    acknowledged, in the order received. The broker sends at most its in-flight window of unacknowledged
    messages (mosquitto's ``max_inflight_messages``, which must be at least ``max_batch``), so memory stays
    bounded however slow storage is: the broker keeps the rest.
    """

    def __init__(
        self, ingestor: Ingestor, broker: BrokerConnection, *, max_batch: int = MAX_BATCH, linger: float = LINGER
    ) -> None:
        self._ingestor = ingestor
        self._broker = broker
        self._max_batch = max_batch
        self._linger = linger
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
                    await client.subscribe(subscription(self._broker.hospital, self._broker.share_group), qos=1)
                    self.subscribed.set()
                    backoff = 1.0
                    log.info(
                        "subscribed to %s on %s:%s",
                        topics.readings_filter(self._broker.hospital),
                        self._broker.host,
                        self._broker.port,
                    )
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                log.warning(
                    "MQTT broker %s:%s: %s; retrying in %.0fs", self._broker.host, self._broker.port, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _consume(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        loop = asyncio.get_running_loop()
        # The next message's wait, kept across batches when the linger ran out: cancelling it could drop a
        # message it had just taken off the queue.
        waiting: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while True:
                if waiting is None:
                    waiting = asyncio.ensure_future(anext(messages))
                batch = [await waiting]
                waiting = None
                deadline = loop.time() + self._linger
                while len(batch) < self._max_batch:
                    if len(messages):
                        batch.append(await anext(messages))
                        continue
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    waiting = asyncio.ensure_future(anext(messages))
                    done, _ = await asyncio.wait({waiting}, timeout=timeout)
                    if not done:
                        break
                    batch.append(waiting.result())
                    waiting = None
                await self._handle(client, batch)
        finally:
            if waiting is not None:
                waiting.cancel()

    def _decide(self, batch: list[aiomqtt.Message]) -> list[_Received]:
        """Each message's Observations, or its refusal (pure but for the counters; run in a thread)."""
        received = []
        for message in batch:
            topic = message.topic.value
            device_id = device_of(topic, self._broker.hospital)
            if device_id is None:
                error = f"topic {topic!r} is not devices/{self._broker.hospital}/<deviceId>/readings"
                received.append(_Received(message, None, refused=self._ingestor.reject(DeviceProtocol.MQTT, error)))
                continue
            raw = message.payload
            payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw if raw is not None else "")
            observations, errors = self._ingestor.decide_payload(payload, device_id=device_id)
            if errors:
                refused = self._ingestor.refuse(DeviceProtocol.MQTT, errors, max(1, len(observations) + len(errors)))
                received.append(_Received(message, device_id, refused=refused))
            else:
                received.append(_Received(message, device_id, observations))
        return received

    async def _handle(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> None:
        received = await asyncio.to_thread(self._decide, batch)
        observations = [o for r in received for o in r.observations]
        backoff = _STORE_RETRY
        while observations:
            outcome = await asyncio.to_thread(self._ingestor.store_batch, DeviceProtocol.MQTT, observations)
            if outcome.result is not Result.FAILED:
                break
            # Storage or key service down: the whole batch stays unacknowledged and is tried again, as one
            # record under the same name. If the gateway stops meanwhile, the broker redelivers every message of
            # it to the next session (QoS 1, persistent session).
            log.info("retrying a batch of %d observation(s) in %.1fs: %s", len(observations), backoff, outcome.error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_STORE_RETRY)
        for item in received:
            if item.refused is not None and item.device_id is not None and self._broker.publish_errors:
                await self._report(client, item.device_id, item.refused)
        # In the order received, as MQTT wants PUBACKs sent.
        for item in received:
            self._ack(client, item.message)

    @staticmethod
    def _ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        client._client.ack(message.mid, message.qos)

    async def _report(self, client: aiomqtt.Client, device_id: str, outcome: Outcome) -> None:
        try:
            await client.publish(error_topic(self._broker.hospital, device_id), json.dumps(outcome.as_json()), qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("could not publish the error for %s: %s", device_id, exc)
