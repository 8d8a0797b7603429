"""The pipeline: readings -> FHIR Observations -> one encrypted batch record in the RecordStore, counted.

Deciding (normalising, the device-class gate) is pure and done first, for every
reading of a batch, before anything is written; writing is one ``put`` of the
batch's NDJSON on a :class:`~medcloud.records.client.RecordClient`, named
``fhir/Observation/<batch id>.ndjson`` (:mod:`medcloud.records.batches`): an opaque
id, never a patient's name. One object per batch instead of one per reading is
what makes thousands of readings a second possible: a PUT costs about a
millisecond whatever its size, a reading a few hundred bytes. Calls block (the
MinIO SDK is synchronous); the async transports run them in a thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from medcloud.models import DeviceClass
from medcloud.models import DeviceProtocol as Transport
from medcloud.records.batches import NDJSON_CONTENT_TYPE, Batch
from medcloud.records.client import RecordInfo
from medcloud_gateway import ecg, omh
from medcloud_gateway.device_fhir import DeviceObservation
from medcloud_gateway.metrics import GatewayMetrics, Result
from medcloud_gateway.normalize import check_accepted, from_observation, to_observation
from medcloud_gateway.readings import Reading, ReadingError, parse_reading

log = logging.getLogger(__name__)
T = TypeVar("T")

Payload = bytes | str | Mapping[str, Any] | list[Any]
"""What a transport hands over: the raw body, or JSON it decoded already."""

MAX_BATCH = 5000
"""Readings in one request or message at most: a batch is held in memory whole until it is stored."""


class RecordSink(Protocol):
    """What the gateway needs of a record client."""

    def put(self, name: str, data: bytes, *, content_type: str = ...) -> RecordInfo: ...


@dataclass(frozen=True)
class Outcome:
    """What became of a reading or a batch; ``error`` says why when it was not stored."""

    result: Result
    record: str | None = None
    observation_ids: tuple[str, ...] = ()
    error: str | None = None
    errors: tuple[tuple[int, str], ...] = field(default=())
    """For a refused batch: each bad reading's index in the batch and what is wrong with it."""

    @property
    def stored(self) -> bool:
        return self.result is Result.STORED

    @property
    def observation_id(self) -> str | None:
        return self.observation_ids[0] if len(self.observation_ids) == 1 else None

    def as_json(self) -> dict[str, str]:
        """One reading's answer: ``result``, ``record`` and ``observationId``, or ``error``."""
        body = {"result": self.result.value}
        body.update({k: v for k, v in (("record", self.record), ("observationId", self.observation_id)) if v})
        if self.error:
            body["error"] = self.error
        return body

    def as_batch_json(self) -> dict[str, Any]:
        """A batch's answer: ``result``, ``record``, ``count`` and ``observationIds`` in order, or the errors."""
        body: dict[str, Any] = {"result": self.result.value, "count": len(self.observation_ids)}
        if self.record:
            body["record"] = self.record
        if self.observation_ids:
            body["observationIds"] = list(self.observation_ids)
        if self.errors:
            body["errors"] = [{"index": i, "error": e} for i, e in self.errors]
        if self.error:
            body["error"] = self.error
        return body


def _decoded(payload: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(payload, bytes | str):
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return payload  # parse_reading names the problem
    return payload


def batch_items(payload: Any) -> list[Any] | None:
    """The readings of a batch payload (a JSON array, or a FHIR Bundle's entry resources); None if it is one."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, Mapping) and payload.get("resourceType") == "Bundle":
        entries = payload.get("entry") or []
        if not isinstance(entries, list):
            raise ReadingError("Bundle.entry must be an array")
        return [e.get("resource") if isinstance(e, Mapping) else e for e in entries]
    return None


Decided = tuple[list[dict[str, Any]], list[tuple[int, str]]]
"""The Observations of a batch's good items, and each bad item's index and what is wrong with it."""


def decide_each(items: Sequence[T], decide: Callable[[T], dict[str, Any]]) -> Decided:
    """``decide`` for every item of a batch, collecting :class:`ReadingError` by index instead of stopping."""
    observations, errors = [], []
    for index, item in enumerate(items):
        try:
            observations.append(decide(item))
        except ReadingError as exc:
            errors.append((index, str(exc)))
    return observations, errors


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

    # -- deciding (pure) -------------------------------------------------------------

    def observe(self, reading: Reading) -> dict[str, Any]:
        """The reading's Observation, or :class:`ReadingError` if this gateway must not take it."""
        check_accepted(reading.kind, self.accepted)
        return to_observation(reading)

    def gate(self, item: DeviceObservation) -> dict[str, Any]:
        """An MDC-coded Observation, or :class:`ReadingError` if no device class this gateway accepts makes it."""
        if not item.classes & self.accepted:
            wanted = ", ".join(sorted(item.classes))
            enrolled = ", ".join(sorted(self.accepted)) or "none"
            code = item.document["code"]["coding"][-1]
            name = code.get("display") or code["code"]
            raise ReadingError(f"{name} comes from {wanted} devices; this gateway accepts {enrolled}")
        return item.document

    def decide(self, payload: Any, *, device_id: str | None = None) -> dict[str, Any]:
        """One reading as a device sent it -> its Observation: a JSON reading, a FHIR Observation
        (``resourceType``), an Open mHealth data point (``dataPoint``) or an ECG strip (``waveform``)."""
        payload = _decoded(payload)
        if isinstance(payload, Mapping) and "waveform" in payload:
            return self.gate(ecg.to_observation(payload, device_id=device_id))
        if isinstance(payload, Mapping) and "dataPoint" in payload:
            reading = omh.to_reading(payload, device_id=device_id)
        elif isinstance(payload, Mapping) and payload.get("resourceType") is not None:
            reading = from_observation(payload)
            if device_id is not None and reading.device_id != device_id:
                raise ReadingError(f"device {reading.device_id!r} does not match the sending device {device_id!r}")
        else:
            reading = parse_reading(payload, device_id=device_id)
        return self.observe(reading)

    def decide_payload(self, payload: Payload, *, device_id: str | None = None) -> Decided:
        """A payload's Observations, one or a batch, and the errors of its bad readings by index.

        With any error the caller must store none of them: a batch is taken or refused whole."""
        decoded = _decoded(payload) if not isinstance(payload, list) else payload
        try:
            items = batch_items(decoded)
        except ReadingError as exc:
            return [], [(0, str(exc))]
        if items is None:
            try:
                return [self.decide(decoded, device_id=device_id)], []
            except ReadingError as exc:
                return [], [(0, str(exc))]
        if not items:
            return [], [(0, "an empty batch: send at least one reading")]
        if len(items) > MAX_BATCH:
            return [], [(MAX_BATCH, f"a batch holds at most {MAX_BATCH} readings, got {len(items)}")]
        return decide_each(items, lambda item: self.decide(item, device_id=device_id))

    # -- writing ---------------------------------------------------------------------

    def reject(self, transport: Transport, error: str, count: int = 1) -> Outcome:
        self.metrics.count(transport, Result.REJECTED, count)
        log.info("rejected %s reading: %s", transport.value, error)
        return Outcome(Result.REJECTED, error=error)

    def refuse(self, transport: Transport, errors: Sequence[tuple[int, str]], count: int) -> Outcome:
        """A batch refused whole for its bad readings: all ``count`` of it is counted rejected, nothing stored."""
        self.metrics.count(transport, Result.REJECTED, count)
        named = "; ".join(f"reading {i}: {e}" for i, e in errors) if count > 1 else errors[0][1]
        log.info("rejected %s batch of %d: %s", transport.value, count, named)
        return Outcome(Result.REJECTED, error=named, errors=tuple(errors))

    def store_batch(self, transport: Transport, observations: Sequence[Mapping[str, Any]]) -> Outcome:
        """Store ``observations`` as one record: all of them, or none (FAILED: send the batch again)."""
        batch = Batch(observations)
        # Every reading's id in the order sent, a reading sent twice in the batch too (the record holds it once).
        ids = tuple(str(o["id"]) for o in observations)
        try:
            info = self._records.put(batch.name, batch.body, content_type=NDJSON_CONTENT_TYPE)
        except Exception as exc:
            # Storage or key service trouble: the readings were good, so they are "failed", not "rejected".
            # The exception's type and text only: never the readings, which are patient data.
            self.metrics.count(transport, Result.FAILED, len(ids))
            log.warning("could not store %d observation(s): %s: %s", len(ids), type(exc).__name__, exc)
            return Outcome(Result.FAILED, observation_ids=ids, error=f"not stored: {type(exc).__name__}")
        self.metrics.count(transport, Result.STORED, len(ids))
        devices = {o.get("device", {}).get("identifier", {}).get("value") for o in observations}
        for device in devices - {None}:
            self.metrics.presence.seen(str(device))
        return Outcome(Result.STORED, record=info.name, observation_ids=ids)

    def ingest_payload(self, transport: Transport, payload: Payload, *, device_id: str | None = None) -> Outcome:
        """One reading or a batch of them (an array, a FHIR Bundle), as a device sent it: decided, then stored as
        one record, or refused whole with each bad reading's index."""
        observations, errors = self.decide_payload(payload, device_id=device_id)
        if errors:
            return self.refuse(transport, errors, max(1, len(observations) + len(errors)))
        return self.store_batch(transport, observations)
