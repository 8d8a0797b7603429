"""HL7 v2 over MLLP: an asyncio TCP server that ingests ORU^R01 messages and answers each with an ACK.

Messages on one connection are answered in order, each after its readings are
stored (AA) or refused (AE: bad observations, or storage unavailable; AR: not an
ORU^R01 this gateway reads). Messages that arrive together (a sender that streams
several before reading the ACKs) are one batch: their readings are stored as one
record and then all of them are answered. Bytes that are not MLLP close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from medcloud.models import DeviceProtocol
from medcloud_gateway.devicetls import DeviceTrust
from medcloud_gateway.hl7v2 import (
    AckCode,
    Header,
    Hl7Error,
    MllpDecoder,
    MllpFramingError,
    build_ack,
    frame,
    parse_header,
    parse_oru,
)
from medcloud_gateway.ingest import Ingestor, decide_each
from medcloud_gateway.mdc import Vocabulary
from medcloud_gateway.metrics import Result
from medcloud_gateway.pcd01 import is_device_message, normalise_segments, parse_pcd01

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
MAX_MESSAGES = 500
"""Messages answered as one batch at most (what one read brings, about 150 of ten OBX each, is usually less)."""


@dataclass(frozen=True)
class Decision:
    """One message's ACK code and text, and the Observations it stores if the batch is stored."""

    header: Header | None
    code: AckCode
    text: str
    observations: list[dict[str, Any]] = field(default_factory=list)


class MllpServer:
    """Listens on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(
        self,
        ingestor: Ingestor,
        host: str,
        port: int,
        *,
        local: tzinfo | None = None,
        vocabulary: Vocabulary | None = None,
        trust: DeviceTrust | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._trust = trust
        self._vocabulary = vocabulary or Vocabulary()
        self._host = host
        self._port = port
        self._local = local
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        # With a device trust, MLLP runs over TLS and takes only devices with a valid, unrevoked certificate.
        context = self._trust.server_context() if self._trust is not None else None
        self._server = await asyncio.start_server(self._connection, self._host, self._port, ssl=context)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def decide(self, message: bytes) -> Decision:
        """What one message asks to store, or its refusal: nothing is stored here (refusals are counted)."""
        header: Header | None = None
        observations: list[dict[str, Any]] = []
        try:
            text = normalise_segments(message.decode())
            header = parse_header(text)
            # IEEE 11073 (MDC) or vendor-coded results are IHE PCD-01; LOINC-coded ones the gateway's own ORU.
            if is_device_message(text):
                device = parse_pcd01(text, self._vocabulary, local=self._local)
                errors = device.errors
                if not errors:
                    observations, refused = decide_each(device.observations, self._ingestor.gate)
                    errors = [e for _, e in refused]
            else:
                result = parse_oru(text, local=self._local)
                errors = result.errors
                if not errors:
                    observations, refused = decide_each(result.readings, self._ingestor.observe)
                    errors = [e for _, e in refused]
        except (UnicodeDecodeError, Hl7Error) as exc:
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self._ingestor.reject(DeviceProtocol.HL7V2, reason)
            return Decision(header, AckCode.REJECT, reason)
        if errors:
            for error in errors:
                self._ingestor.reject(DeviceProtocol.HL7V2, error)
            return Decision(header, AckCode.ERROR, "; ".join(errors))
        return Decision(header, AckCode.ACCEPT, f"stored {len(observations)} observation(s)", observations)

    def answer_all(self, messages: list[bytes]) -> list[str]:
        """The ACKs of several messages of one stream, in order, after storing all their readings as one record
        (blocking: storage is synchronous). If that store fails, every message that had readings is answered AE
        and none of it is stored: the sender sends them again."""
        decisions = [self.decide(message) for message in messages]
        observations = [o for d in decisions for o in d.observations]
        if observations:
            outcome = self._ingestor.store_batch(DeviceProtocol.HL7V2, observations)
            if not outcome.stored:
                failed = AckCode.ERROR, outcome.error or "not stored"
                decisions = [Decision(d.header, *failed) if d.observations else d for d in decisions]
        return [self._ack(d.header, d.code, d.text) for d in decisions]

    @staticmethod
    def _ack(header: Header | None, code: AckCode, text: str) -> str:
        return build_ack(header, code, text, control_id=uuid.uuid4().hex[:20], now=datetime.now(UTC))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MllpDecoder()
        peer = writer.get_extra_info("peername")
        tls = writer.get_extra_info("ssl_object")
        certificate = tls.getpeercert(binary_form=True) if tls is not None else None
        try:
            while data := await reader.read(_READ_SIZE):
                messages = decoder.feed(data)
                if not messages:
                    continue
                if self._trust is not None and self._trust.revoked(certificate):
                    # Revoked since the handshake: the connection ends, the messages are not answered.
                    self._ingestor.reject(DeviceProtocol.HL7V2, "device certificate revoked", len(messages))
                    return
                # Every message that arrived together (a sender streaming without waiting for each ACK) is one
                # batch, stored as one record; nothing more is read until it is answered, so a slow store slows
                # the sender (TCP back-pressure) instead of filling memory.
                for start in range(0, len(messages), MAX_MESSAGES):
                    acks = await asyncio.to_thread(self.answer_all, messages[start : start + MAX_MESSAGES])
                    writer.write(b"".join(frame(ack) for ack in acks))
                    await writer.drain()
        except MllpFramingError as exc:
            self._ingestor.metrics.count(DeviceProtocol.HL7V2, Result.REJECTED)
            log.warning("closing MLLP connection from %s: %s", peer, exc)
        except ConnectionError as exc:
            log.info("MLLP connection from %s lost: %s", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
