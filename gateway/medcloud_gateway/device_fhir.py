"""FHIR R4 Observations of device measurements coded in MDC (pure): quantities, panels, waveforms, alerts.

Every builder returns a :class:`DeviceObservation`: the Observation JSON,
validated with ``fhir.resources.R4B`` (see :mod:`normalize` on R4B and R4),
and the device classes that produce it, so the gateway can refuse what its
DeviceGateway does not enroll.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from medcloud.models import DeviceClass
from medcloud_gateway.mdc import Code
from medcloud_gateway.normalize import CATEGORY_SYSTEM, DEVICE_ID_SYSTEM, UCUM, fhir_datetime, validated

_PROFILE = "http://hl7.org/fhir/StructureDefinition/"
_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory", "procedure": "Procedure"}
ALERT_CATEGORY = {
    "system": "https://medcloud.io/fhir/CodeSystem/observation-category",
    "code": "device-alert",
    "display": "Device alert",
}
"""Category of an alarm or event a device reported (MDC partition 3): ``Observation?category=<system>|device-alert``."""
# Distinct from normalize's namespace: an MDC-coded Observation's id also covers the code and the device's
# containment path, since one monitor reports several channels of one kind at the same instant.
_ID_NAMESPACE = uuid.UUID("2f7c1d64-8a0e-4b7e-9d53-1e0c6b2a4f18")


@dataclass(frozen=True)
class DeviceObservation:
    """An Observation ready to store, and the device classes that produce it."""

    document: dict[str, Any]
    classes: frozenset[DeviceClass]

    @property
    def id(self) -> str:
        return str(self.document["id"])


@dataclass(frozen=True)
class Context:
    """Who, what device and when, shared by every Observation of one measurement."""

    patient: str
    device: str
    time: datetime
    status: str = "final"


def observation_id(context: Context, key: str) -> str:
    """Stable and opaque: the same device, measurement and instant always give the same id."""
    instant = context.time.astimezone(UTC).isoformat()
    return str(uuid.uuid5(_ID_NAMESPACE, f"{context.device}\n{key}\n{instant}"))


def quantity(value: float, ucum: str, comparator: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"value": value, "unit": ucum, "system": UCUM, "code": ucum}
    if comparator:
        found["comparator"] = comparator
    return found


def concept(codes: Sequence[Code], text: str | None = None) -> dict[str, Any]:
    return {"coding": [c.as_fhir() for c in codes], "text": text or codes[0].display}


def category(name: str | None) -> list[dict[str, Any]] | None:
    if name is None:
        return None
    if name == "device-alert":
        return [{"coding": [ALERT_CATEGORY]}]
    return [{"coding": [{"system": CATEGORY_SYSTEM, "code": name, "display": _CATEGORY_DISPLAY[name]}]}]


def observation(
    context: Context,
    key: str,
    codes: Sequence[Code],
    *,
    category_name: str | None,
    profile: str | None,
    value: dict[str, Any] | None = None,
    components: list[dict[str, Any]] | None = None,
    classes: frozenset[DeviceClass],
) -> DeviceObservation:
    """An Observation of ``codes`` with ``value`` (``{"valueQuantity": ...}`` and the like) or components."""
    document: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(context, key),
        "status": context.status,
        "code": concept(codes),
        "subject": {"reference": context.patient},
        "effectiveDateTime": fhir_datetime(context.time),
        "device": {"identifier": {"system": DEVICE_ID_SYSTEM, "value": context.device}},
    }
    if profile:
        document["meta"] = {"profile": [_PROFILE + profile]}
    categories = category(category_name)
    if categories:
        document["category"] = categories
    if value:
        document.update(value)
    if components:
        document["component"] = components
    return DeviceObservation(validated(document), classes)


def sampled_data(
    values: Sequence[str], *, period_ms: float, unit: str, factor: float | None = None, dimensions: int = 1
) -> dict[str, Any]:
    """A SampledData: ``values`` already checked to be decimals, in order, ``dimensions`` interleaved.

    ``origin`` is zero in the samples' unit: devices send the signal itself, not an offset from a baseline.
    """
    data: dict[str, Any] = {
        "origin": {"value": 0, "unit": unit, "system": UCUM, "code": unit},
        "period": period_ms,
        "dimensions": dimensions,
        "data": " ".join(values),
    }
    if factor is not None and factor != 1:
        data["factor"] = factor
    return data
