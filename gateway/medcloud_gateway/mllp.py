"""HL7 v2 over MLLP: an asyncio TCP server that ingests ORU^R01 messages and answers each with an ACK.

Messages on one connection are answered in order, each after its readings are
stored (AA) or refused (AE: bad observations, or storage unavailable; AR: not an
ORU^R01 this gateway reads). Bytes that are not MLLP close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, tzinfo

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
from medcloud_gateway.ingest import Ingestor, Outcome
from medcloud_gateway.mdc import Vocabulary
from medcloud_gateway.metrics import Result
from medcloud_gateway.pcd01 import is_device_message, normalise_segments, parse_pcd01

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


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

    def answer(self, message: bytes) -> str:
        """The ACK for one message, after storing its readings (blocking: storage is synchronous)."""
        header: Header | None = None
        outcomes: list[Outcome]
        try:
            text = normalise_segments(message.decode())
            header = parse_header(text)
            # IEEE 11073 (MDC) or vendor-coded results are IHE PCD-01; LOINC-coded ones the gateway's own ORU.
            pcd01 = is_device_message(text)
            if pcd01:
                device = parse_pcd01(text, self._vocabulary, local=self._local)
                errors = device.errors
            else:
                result = parse_oru(text, local=self._local)
                errors = result.errors
        except (UnicodeDecodeError, Hl7Error) as exc:
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self._ingestor.reject(DeviceProtocol.HL7V2, reason)
            return self._ack(header, AckCode.REJECT, reason)
        if errors:
            for error in errors:
                self._ingestor.reject(DeviceProtocol.HL7V2, error)
            return self._ack(header, AckCode.ERROR, "; ".join(errors))
        if pcd01:
            outcomes = self._ingestor.ingest_device(DeviceProtocol.HL7V2, device.observations)
        else:
            outcomes = self._ingestor.ingest_all(DeviceProtocol.HL7V2, result.readings)
        problems = [o.error for o in outcomes if not o.stored and o.error]
        if problems:
            # Some may be stored already; a resend lands on the same record names (stable ids).
            return self._ack(header, AckCode.ERROR, "; ".join(problems))
        return self._ack(header, AckCode.ACCEPT, f"stored {len(outcomes)} observation(s)")

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
                for message in decoder.feed(data):
                    if self._trust is not None and self._trust.revoked(certificate):
                        # Revoked since the handshake: the connection ends, the message is not answered.
                        self._ingestor.reject(DeviceProtocol.HL7V2, "device certificate revoked")
                        return
                    ack = await asyncio.to_thread(self.answer, message)
                    writer.write(frame(ack))
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
