"""What a device reports: one reading of one kind, for one patient, at one time (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic.alias_generators import to_camel

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$"
"""A device id: also a FHIR id and one MQTT topic level, so no ``/``, ``+``, ``#`` or spaces."""

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
# A literal reference to the patient by an opaque FHIR id, never a name.
PatientReference = Annotated[str, StringConstraints(pattern=r"^Patient/[A-Za-z0-9.-]{1,64}$")]
Measurement = Annotated[float, Field(allow_inf_nan=False)]


class ReadingError(ValueError):
    """A reading that cannot become an Observation; the message says what is wrong with it."""


class Kind(StrEnum):
    """What was measured; it decides the LOINC code and the UCUM units (see :mod:`normalize`)."""

    BLOOD_PRESSURE = "blood-pressure"
    HEART_RATE = "heart-rate"
    ECG_HEART_RATE = "ecg-heart-rate"
    SPO2 = "spo2"
    RESPIRATORY_RATE = "respiratory-rate"
    GLUCOSE = "glucose"
    BODY_TEMPERATURE = "body-temperature"
    BODY_WEIGHT = "body-weight"


class Reading(BaseModel):
    """One measurement as a device sends it (JSON keys in camelCase: ``deviceId``).

    Blood pressure carries ``systolic`` and ``diastolic``; every other kind one
    ``value``. ``unit`` is the device's spelling (``bpm``, ``mmHg``, ``°C``...);
    ``time`` must carry a UTC offset, since a reading's instant must not depend
    on where the gateway runs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    device_id: DeviceId
    patient: PatientReference
    kind: Kind
    value: Measurement | None = None
    systolic: Measurement | None = None
    diastolic: Measurement | None = None
    unit: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    time: AwareDatetime

    @model_validator(mode="after")
    def _values_fit_kind(self) -> Reading:
        if self.kind is Kind.BLOOD_PRESSURE:
            if self.systolic is None or self.diastolic is None or self.value is not None:
                raise ValueError("a blood-pressure reading has systolic and diastolic, and no value")
        elif self.value is None or self.systolic is not None or self.diastolic is not None:
            raise ValueError(f"a {self.kind} reading has a value, and no systolic or diastolic")
        return self


def describe(error: ValidationError) -> str:
    """A pydantic error as one line: ``field: what is wrong; ...``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "reading"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def claim_device(data: Mapping[str, Any], device_id: str | None) -> dict[str, Any]:
    """``data`` with the transport's device as ``deviceId``; refused if it names another (a device reports only
    for itself)."""
    fields = dict(data)
    if device_id is not None:
        claimed = fields.setdefault("deviceId", device_id)
        if claimed != device_id:
            raise ReadingError(f"deviceId {claimed!r} does not match the sending device {device_id!r}")
    return fields


def parse_reading(payload: bytes | str | Mapping[str, Any], *, device_id: str | None = None) -> Reading:
    """A reading from JSON (or its decoded object); ``device_id`` is who sent it, when the transport knows.

    A payload that names another device than the transport's is refused: a
    device reports only for itself.
    """
    if isinstance(payload, bytes | str):
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReadingError(f"not JSON: {exc}") from None
    else:
        data = payload
    if not isinstance(data, Mapping):
        raise ReadingError(f"a reading is a JSON object, got {type(data).__name__}")
    fields = claim_device(data, device_id)
    try:
        return Reading.model_validate(fields)
    except ValidationError as exc:
        raise ReadingError(describe(exc)) from None
