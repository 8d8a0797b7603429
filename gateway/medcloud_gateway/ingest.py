"""The pipeline: reading -> FHIR Observation -> encrypted record in the RecordStore, counted.

Deciding (normalising, the device-class gate) is pure and done first; writing is
``put_fhir`` on a :class:`~medcloud.records.client.RecordClient`, named
``fhir/Observation/<uuid>.json``: an opaque id, never a patient's name. Calls
block (the MinIO SDK is synchronous); the async transports run them in a thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medcloud.models import DeviceClass
from medcloud.models import DeviceProtocol as Transport
from medcloud.records.client import RecordInfo
from medcloud_gateway import ecg, omh
from medcloud_gateway.device_fhir import DeviceObservation
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.normalize import check_accepted, from_observation, to_observation
from medcloud_gateway.readings import Reading, ReadingError, parse_reading

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """What the gateway needs of a record client."""

    def put_fhir(self, resource: Mapping[str, Any], name: str | None = None) -> RecordInfo: ...


@dataclass(frozen=True)
class Outcome:
    """What became of one reading; ``error`` says why when it was not stored."""

    result: Result
    record: str | None = None
    observation_id: str | None = None
    error: str | None = None

    @property
    def stored(self) -> bool:
        return self.result is Result.STORED

    def as_json(self) -> dict[str, str]:
        body = {"result": self.result.value}
        body.update({k: v for k, v in (("record", self.record), ("observationId", self.observation_id)) if v})
        if self.error:
            body["error"] = self.error
        return body


class Ingestor:
    """Turns readings into stored Observations for one gateway (thread-safe: it keeps no state of its own)."""

    def __init__(
        self,
        records: RecordSink,
        metrics: GatewayMetrics,
        accepted: frozenset[DeviceClass] = frozenset(DeviceClass),
    ) -> None:
        self._records = records
        self.metrics = metrics
        self.accepted = accepted

    def observe(self, reading: Reading) -> dict[str, Any]:
        """The reading's Observation, or :class:`ReadingError` if this gateway must not take it."""
        check_accepted(reading.kind, self.accepted)
        return to_observation(reading)

    def reject(self, transport: Transport, error: str, count: int = 1) -> Outcome:
        self.metrics.count(transport, Result.REJECTED, count)
        log.info("rejected %s reading: %s", transport.value, error)
        return Outcome(Result.REJECTED, error=error)

    def store(self, transport: Transport, observation: Mapping[str, Any]) -> Outcome:
        observation_id = str(observation["id"])
        try:
            info = self._records.put_fhir(observation)
        except Exception as exc:
            # Storage or key service trouble: the reading was good, so it is "failed", not "rejected".
            # The exception's type and text only: never the reading, which is patient data.
            self.metrics.count(transport, Result.FAILED)
            log.warning("could not store observation %s: %s: %s", observation_id, type(exc).__name__, exc)
            return Outcome(Result.FAILED, observation_id=observation_id, error=f"not stored: {type(exc).__name__}")
        self.metrics.count(transport, Result.STORED)
        device = observation.get("device", {}).get("identifier", {}).get("value")
        if device:
            self.metrics.presence.seen(str(device))
        return Outcome(Result.STORED, record=info.name, observation_id=observation_id)

    def ingest(self, transport: Transport, reading: Reading) -> Outcome:
        try:
            observation = self.observe(reading)
        except ReadingError as exc:
            return self.reject(transport, str(exc))
        return self.store(transport, observation)

    def ingest_payload(
        self, transport: Transport, payload: bytes | str | Mapping[str, Any], *, device_id: str | None = None
    ) -> Outcome:
        """A JSON reading, a FHIR Observation (``resourceType``), an Open mHealth data point (``dataPoint``)
        or an ECG strip (``waveform``), as a device sent it."""
        if isinstance(payload, bytes | str):
            try:
                decoded = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                decoded = None  # parse_reading names the problem
            if isinstance(decoded, Mapping):
                payload = decoded
        try:
            if isinstance(payload, Mapping) and "waveform" in payload:
                return self.ingest_device(transport, [ecg.to_observation(payload, device_id=device_id)])[0]
            if isinstance(payload, Mapping) and "dataPoint" in payload:
                reading = omh.to_reading(payload, device_id=device_id)
            elif isinstance(payload, Mapping) and payload.get("resourceType") is not None:
                reading = from_observation(payload)
                if device_id is not None and reading.device_id != device_id:
                    raise ReadingError(f"device {reading.device_id!r} does not match the sending device {device_id!r}")
            else:
                reading = parse_reading(payload, device_id=device_id)
        except ReadingError as exc:
            return self.reject(transport, str(exc))
        return self.ingest(transport, reading)

    def ingest_device(self, transport: Transport, observations: Sequence[DeviceObservation]) -> list[Outcome]:
        """Observations built from MDC-coded device data, taken together: one refused, none stored."""
        errors = []
        for item in observations:
            if not item.classes & self.accepted:
                wanted = ", ".join(sorted(item.classes))
                enrolled = ", ".join(sorted(self.accepted)) or "none"
                code = item.document["code"]["coding"][-1]
                name = code.get("display") or code["code"]
                errors.append(f"{name} comes from {wanted} devices; this gateway accepts {enrolled}")
        if errors:
            return [self.reject(transport, error) for error in errors]
        return [self.store(transport, item.document) for item in observations]

    def ingest_all(self, transport: Transport, readings: Sequence[Reading]) -> list[Outcome]:
        """Several readings taken together: if any is refused, none is stored (an HL7 message is one unit)."""
        observations: list[dict[str, Any]] = []
        errors: list[str] = []
        for reading in readings:
            try:
                observations.append(self.observe(reading))
            except ReadingError as exc:
                errors.append(str(exc))
        if errors:
            return [self.reject(transport, error) for error in errors]
        return [self.store(transport, observation) for observation in observations]
