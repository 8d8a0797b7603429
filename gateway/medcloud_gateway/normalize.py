"""Readings to HL7 FHIR R4 Observations with LOINC codes and UCUM units, and back (pure).

The models come from ``fhir.resources.R4B``: fhir.resources 7 and later default
to R5 and ship R4B (4.3) beside it, not R4 (4.0.1); the last releases with R4 as
the default (6.x) need pydantic 1. R4B changed no element of Observation, Quantity,
CodeableConcept or Reference, so what validates here is a valid R4 Observation.

Device spellings of units (``bpm``, ``mmHg``, ``°C``) become UCUM codes; the only
numeric conversion is kPa to mm[Hg], since the vital-signs profile allows no
other unit for blood pressure. Anything unknown is a :class:`ReadingError` that
names it: a reading is never dropped or guessed.
"""

from __future__ import annotations

import math
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from medcloud.models import DeviceClass
from medcloud_gateway.readings import Kind, Reading, ReadingError, describe, parse_reading

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
DEVICE_ID_SYSTEM = "https://medcloud.io/fhir/sid/device-id"
"""Identifier system of ``Observation.device``: the gateway knows devices by id, not as Device resources."""
_PROFILE = "http://hl7.org/fhir/StructureDefinition/"
# Observation ids are UUIDv5 of (device, kind, instant) in this namespace: a reading delivered twice
# (MQTT QoS 1, an HL7 resend) lands on the same record name instead of becoming two Observations.
_ID_NAMESPACE = uuid.UUID("5b0f8a52-3c1e-4f1b-9a55-6d2f3e1c7a90")
_KPA_TO_MMHG = 760 / 101.325


@dataclass(frozen=True)
class Coding:
    code: str
    display: str

    def as_fhir(self) -> dict[str, str]:
        return {"system": LOINC, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class Target:
    """How one kind, in one UCUM unit, is coded."""

    codings: tuple[Coding, ...]
    category: str
    profile: str | None


SYSTOLIC = Coding("8480-6", "Systolic blood pressure")
DIASTOLIC = Coding("8462-4", "Diastolic blood pressure")
BP_PANEL = Coding("85354-9", "Blood pressure panel with all children optional")
HEART_RATE = Coding("8867-4", "Heart rate")
ECG_HEART_RATE = Coding("76282-3", "Heart rate.beat-to-beat by EKG")
SPO2 = Coding("2708-6", "Oxygen saturation in Arterial blood")
SPO2_PULSE_OXIMETRY = Coding("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")
RESPIRATORY_RATE = Coding("9279-1", "Respiratory rate")
GLUCOSE_MASS = Coding("2339-0", "Glucose [Mass/volume] in Blood")
GLUCOSE_MOLES = Coding("15074-8", "Glucose [Moles/volume] in Blood")
BODY_TEMPERATURE = Coding("8310-5", "Body temperature")
BODY_WEIGHT = Coding("29463-7", "Body weight")


def _vital(profile: str, *codings: Coding) -> Target:
    return Target(codings, "vital-signs", _PROFILE + profile)


# Kind -> UCUM unit -> coding. The vital-signs profiles want their own code first (8867-4 for any
# heart rate, 2708-6 for any SpO2); the device's more specific code follows. Glucose is a
# laboratory result, not a vital sign, and its LOINC code depends on the unit's property.
TARGETS: dict[Kind, dict[str, Target]] = {
    Kind.BLOOD_PRESSURE: {"mm[Hg]": _vital("bp", BP_PANEL)},
    Kind.HEART_RATE: {"/min": _vital("heartrate", HEART_RATE)},
    Kind.ECG_HEART_RATE: {"/min": _vital("heartrate", HEART_RATE, ECG_HEART_RATE)},
    Kind.SPO2: {"%": _vital("oxygensat", SPO2, SPO2_PULSE_OXIMETRY)},
    Kind.RESPIRATORY_RATE: {"/min": _vital("resprate", RESPIRATORY_RATE)},
    Kind.GLUCOSE: {
        "mg/dL": Target((GLUCOSE_MASS,), "laboratory", None),
        "mmol/L": Target((GLUCOSE_MOLES,), "laboratory", None),
    },
    Kind.BODY_TEMPERATURE: {
        "Cel": _vital("bodytemp", BODY_TEMPERATURE),
        "[degF]": _vital("bodytemp", BODY_TEMPERATURE),
    },
    Kind.BODY_WEIGHT: {
        "kg": _vital("bodyweight", BODY_WEIGHT),
        "g": _vital("bodyweight", BODY_WEIGHT),
        "[lb_av]": _vital("bodyweight", BODY_WEIGHT),
    },
}

_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}
_RATE = {"/min": 1.0, "bpm": 1.0, "1/min": 1.0, "min-1": 1.0}
# Device spelling (compared without case and spaces) -> (UCUM code, factor to that unit).
UNIT_SPELLINGS: dict[Kind, dict[str, tuple[str, float]]] = {
    Kind.BLOOD_PRESSURE: {"mm[hg]": ("mm[Hg]", 1.0), "mmhg": ("mm[Hg]", 1.0), "kpa": ("mm[Hg]", _KPA_TO_MMHG)},
    Kind.HEART_RATE: {s: ("/min", f) for s, f in {**_RATE, "beats/min": 1.0, "{beats}/min": 1.0}.items()},
    Kind.ECG_HEART_RATE: {s: ("/min", f) for s, f in {**_RATE, "beats/min": 1.0, "{beats}/min": 1.0}.items()},
    Kind.RESPIRATORY_RATE: {
        s: ("/min", f) for s, f in {**_RATE, "breaths/min": 1.0, "{breaths}/min": 1.0, "rpm": 1.0}.items()
    },
    Kind.SPO2: {"%": ("%", 1.0)},
    Kind.GLUCOSE: {"mg/dl": ("mg/dL", 1.0), "mmol/l": ("mmol/L", 1.0)},
    Kind.BODY_TEMPERATURE: {
        **dict.fromkeys(("cel", "°c", "℃", "degc", "c", "celsius"), ("Cel", 1.0)),
        **dict.fromkeys(("[degf]", "°f", "℉", "degf", "f", "fahrenheit"), ("[degF]", 1.0)),
    },
    Kind.BODY_WEIGHT: {
        "kg": ("kg", 1.0),
        "g": ("g", 1.0),
        **dict.fromkeys(("[lb_av]", "lb", "lbs"), ("[lb_av]", 1.0)),
    },
}

# Which device classes produce which kinds: a gateway accepts a kind if it enrolls one of them.
SOURCES: dict[Kind, frozenset[DeviceClass]] = {
    Kind.BLOOD_PRESSURE: frozenset({DeviceClass.BLOOD_PRESSURE}),
    Kind.HEART_RATE: frozenset({DeviceClass.BLOOD_PRESSURE, DeviceClass.SPO2, DeviceClass.WEARABLE, DeviceClass.ECG}),
    Kind.ECG_HEART_RATE: frozenset({DeviceClass.ECG}),
    Kind.SPO2: frozenset({DeviceClass.SPO2, DeviceClass.WEARABLE}),
    Kind.RESPIRATORY_RATE: frozenset({DeviceClass.WEARABLE, DeviceClass.ECG}),
    Kind.GLUCOSE: frozenset({DeviceClass.GLUCOSE}),
    Kind.BODY_TEMPERATURE: frozenset({DeviceClass.TEMPERATURE, DeviceClass.WEARABLE}),
    Kind.BODY_WEIGHT: frozenset({DeviceClass.WEIGHT_SCALE}),
}


def ucum_unit(kind: Kind, unit: str) -> tuple[str, float]:
    """The UCUM code for a device's unit of ``kind``, and the factor its values are multiplied by."""
    found = UNIT_SPELLINGS[kind].get("".join(unit.split()).lower())
    if found is None:
        known = ", ".join(sorted({ucum for ucum, _ in UNIT_SPELLINGS[kind].values()}))
        raise ReadingError(f"unit {unit!r} is not known for {kind} (UCUM units accepted: {known})")
    return found


def check_accepted(kind: Kind, accepted: frozenset[DeviceClass]) -> None:
    """Refuse a kind that none of the gateway's device classes produces."""
    if not SOURCES[kind] & accepted:
        wanted = ", ".join(sorted(SOURCES[kind]))
        enrolled = ", ".join(sorted(accepted)) or "none"
        raise ReadingError(f"{kind} readings come from {wanted} devices; this gateway accepts {enrolled}")


def observation_id(reading: Reading) -> str:
    """A stable opaque id: the same device, kind and instant give the same Observation."""
    instant = reading.time.astimezone(UTC).isoformat()
    return str(uuid.uuid5(_ID_NAMESPACE, f"{reading.device_id}\n{reading.kind}\n{instant}"))


def fhir_datetime(instant: datetime) -> str:
    """ISO 8601 as fhir.resources writes it (UTC as ``Z``), so a document is what validating it gives back."""
    text = instant.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _quantity(value: float, ucum: str) -> dict[str, Any]:
    return {"value": value, "unit": ucum, "system": UCUM, "code": ucum}


def _converted(value: float, factor: float) -> float:
    # A converted value keeps one decimal: more would claim a precision no cuff has.
    return value if factor == 1.0 else round(value * factor, 1)


def _concept(codings: tuple[Coding, ...]) -> dict[str, Any]:
    return {"coding": [c.as_fhir() for c in codings], "text": codings[0].display}


def to_observation(reading: Reading) -> dict[str, Any]:
    """The reading as FHIR R4 Observation JSON, validated by fhir.resources (its shape, see :func:`validated`)."""
    ucum, factor = ucum_unit(reading.kind, reading.unit)
    target = TARGETS[reading.kind][ucum]
    document: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(reading),
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": CATEGORY_SYSTEM, "code": target.category, "display": _CATEGORY_DISPLAY[target.category]}
                ]
            }
        ],
        "code": _concept(target.codings),
        "subject": {"reference": reading.patient},
        "effectiveDateTime": fhir_datetime(reading.time),
        "device": {"identifier": {"system": DEVICE_ID_SYSTEM, "value": reading.device_id}},
    }
    if target.profile:
        document["meta"] = {"profile": [target.profile]}
    if reading.kind is Kind.BLOOD_PRESSURE:
        assert reading.systolic is not None
        assert reading.diastolic is not None
        document["component"] = [
            {"code": _concept((SYSTOLIC,)), "valueQuantity": _quantity(_converted(reading.systolic, factor), ucum)},
            {"code": _concept((DIASTOLIC,)), "valueQuantity": _quantity(_converted(reading.diastolic, factor), ucum)},
        ]
    else:
        assert reading.value is not None
        document["valueQuantity"] = _quantity(_converted(reading.value, factor), ucum)
    # A reading's Observation has one shape per kind and unit: the Reading model has already checked every
    # value that varies (device and patient patterns, finite numbers), all but the dateTime's FHIR form.
    shape = f"reading:{reading.kind}:{ucum}" if _FHIR_DATETIME.fullmatch(document["effectiveDateTime"]) else None
    return _validated(document, shape)


def validated(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` checked against the FHIR Observation model, as JSON-ready data.

    fhir.resources costs about 0.3 ms an Observation, more than everything else a reading costs together. The
    gateway builds its Observations from a few shapes, so a shape is validated whole once (:func:`shape_of`:
    the document with its per-reading values abstracted) and, if the model gives back exactly the document,
    later documents of that shape are taken with only their varying values checked as the FHIR primitives
    they are (ids, dateTimes, strings, finite decimals). Anything else is validated in full, every time.
    """
    return _validated(document, shape_of(document))


def _validated(document: Mapping[str, Any], shape: Shape | str | None) -> dict[str, Any]:
    if shape is not None and shape in _TRUSTED_SHAPES:
        return dict(document)
    try:
        model = Observation.model_validate(document)
    except ValidationError as exc:
        raise ReadingError(f"not a valid FHIR Observation: {describe(exc)}") from None
    dumped = model.model_dump(mode="json", exclude_none=True)
    if shape is not None and dumped == document:
        with _SHAPES_LOCK:
            if len(_TRUSTED_SHAPES) >= _MAX_SHAPES:
                _TRUSTED_SHAPES.pop(next(iter(_TRUSTED_SHAPES)))
            _TRUSTED_SHAPES[shape] = None
    return dumped


_MAX_SHAPES = 4096
# Insertion-ordered, so the oldest is dropped first. Lookups need no lock (a dict's single operations are atomic
# under the GIL); adding and evicting take one, since finding the oldest is two steps.
_TRUSTED_SHAPES: dict[Shape | str, None] = {}
_SHAPES_LOCK = threading.Lock()
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_FHIR_STRING = re.compile(r"[ \r\n\t\S]+")
_FHIR_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?)?)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)?)?)?"
)
# Keys whose string values vary from reading to reading, and the primitive each must match.
_VARYING = {
    "id": _FHIR_ID,
    "effectiveDateTime": _FHIR_DATETIME,
    "issued": _FHIR_DATETIME,
    "start": _FHIR_DATETIME,
    "end": _FHIR_DATETIME,
    "reference": _FHIR_STRING,
    "value": _FHIR_STRING,
    "data": _FHIR_STRING,
}


class _UnfitError(Exception):
    """A varying value that is not the primitive it must be: validate the whole document."""


_VARYING_MARK = {key: f"<{key}>" for key in _VARYING}
_DECIMAL_MARK = "<decimal>"


def _abstract(value: Any, key: str | None) -> Any:
    """``value`` as a hashable shape: containers, names and fixed values kept, varying values replaced by a mark.

    Containers are tagged with their type (a list of pairs is not an object) and so are ints and booleans (``1``,
    ``1.0`` and ``True`` are equal in Python, not in FHIR); strings need no tag, since no mark is ever a tuple.
    Tuples, not JSON text: building and hashing them costs half of what encoding did, for each Observation.
    """
    # Exact types, not isinstance: this runs for every element of every Observation, and documents are JSON.
    kind = type(value)
    if kind is dict:
        return (dict, *[(k, _abstract(v, k)) for k, v in value.items()])
    if kind is list:
        return (list, *[_abstract(v, key) for v in value])
    if kind is str:
        if key in _VARYING:
            if not _VARYING[key].fullmatch(value):
                raise _UnfitError
            return _VARYING_MARK[key]
        return value
    if kind is float:
        # A decimal; its digits vary. Not ints: some int elements are positiveInt or unsignedInt.
        if not math.isfinite(value):
            raise _UnfitError
        return _DECIMAL_MARK
    if kind is int or kind is bool:
        return (kind, value)
    if value is not None:
        raise _UnfitError
    return value


Shape = tuple[Any, ...]


def shape_of(document: Mapping[str, Any]) -> Shape | None:
    """The document with its per-reading values replaced by their type; None if one of them is unfit."""
    if type(document) is not dict:
        return None
    try:
        shape: Shape = _abstract(document, None)
        return shape
    except _UnfitError:
        return None


# ----------------------------------------------------------------------------- FHIR in

# LOINC code -> kind, for Observations and HL7 v2 OBX segments that arrive coded already.
KIND_OF_CODE: dict[str, Kind] = {
    BP_PANEL.code: Kind.BLOOD_PRESSURE,
    HEART_RATE.code: Kind.HEART_RATE,
    ECG_HEART_RATE.code: Kind.ECG_HEART_RATE,
    SPO2.code: Kind.SPO2,
    SPO2_PULSE_OXIMETRY.code: Kind.SPO2,
    RESPIRATORY_RATE.code: Kind.RESPIRATORY_RATE,
    GLUCOSE_MASS.code: Kind.GLUCOSE,
    GLUCOSE_MOLES.code: Kind.GLUCOSE,
    BODY_TEMPERATURE.code: Kind.BODY_TEMPERATURE,
    BODY_WEIGHT.code: Kind.BODY_WEIGHT,
}


def kind_of_codes(codes: list[str]) -> Kind:
    """The kind named by LOINC codes; the most specific wins (an ECG heart rate is also a heart rate)."""
    kinds = {KIND_OF_CODE[c] for c in codes if c in KIND_OF_CODE}
    if Kind.ECG_HEART_RATE in kinds:
        kinds.discard(Kind.HEART_RATE)
    if len(kinds) != 1:
        shown = ", ".join(codes) or "none"
        why = "names several kinds" if kinds else "is not a LOINC code this gateway maps"
        raise ReadingError(f"LOINC code {shown} {why} (known: {', '.join(sorted(KIND_OF_CODE))})")
    return kinds.pop()


def check_codes_agree(codes: list[str], observation: Mapping[str, Any]) -> None:
    """Refuse a reading whose sender's LOINC code contradicts its unit (2339-0 with mmol/L, say)."""
    ours = {c["code"] for c in observation["code"]["coding"]}
    if not ours & set(codes):
        raise ReadingError(
            f"LOINC code {', '.join(codes)} does not fit the unit given; it is {', '.join(sorted(ours))}"
        )


def _loinc_codes(concept: Any) -> list[str]:
    return [c.code for c in (concept.coding or []) if c.system == LOINC and c.code]


def _quantity_of(quantity: Any, where: str) -> tuple[float, str]:
    if quantity is None or quantity.value is None:
        raise ReadingError(f"{where} has no valueQuantity with a value")
    unit = quantity.code if quantity.system == UCUM and quantity.code else quantity.unit
    if not unit:
        raise ReadingError(f"{where} has no unit")
    return float(quantity.value), str(unit)


def _device_id(device: Any) -> str:
    if device is None:
        raise ReadingError("Observation.device is required: the gateway records which device measured")
    if device.identifier is not None and device.identifier.value:
        return str(device.identifier.value)
    reference = device.reference or ""
    if reference.startswith("Device/"):
        return reference.removeprefix("Device/")
    raise ReadingError("Observation.device needs an identifier value or a Device/<id> reference")


def from_observation(document: Mapping[str, Any]) -> Reading:
    """A reading from a FHIR Observation a device (or its hub) coded itself."""
    if document.get("resourceType") != "Observation":
        raise ReadingError(f"expected an Observation, got resourceType {document.get('resourceType')!r}")
    try:
        model = Observation.model_validate(document)
    except ValidationError as exc:
        raise ReadingError(f"not a valid FHIR Observation: {describe(exc)}") from None
    codes = _loinc_codes(model.code)
    kind = kind_of_codes(codes)
    if model.effectiveDateTime is None:
        raise ReadingError("Observation.effectiveDateTime is required")
    fields: dict[str, Any] = {
        "deviceId": _device_id(model.device),
        "patient": model.subject.reference if model.subject is not None else None,
        "kind": kind,
        "time": model.effectiveDateTime,
    }
    if kind is Kind.BLOOD_PRESSURE:
        parts: dict[str, tuple[float, str]] = {}
        for component in model.component or []:
            for code in _loinc_codes(component.code):
                if code in (SYSTOLIC.code, DIASTOLIC.code):
                    parts[code] = _quantity_of(component.valueQuantity, f"component {code}")
        if set(parts) != {SYSTOLIC.code, DIASTOLIC.code}:
            raise ReadingError("a blood-pressure Observation needs components 8480-6 and 8462-4 with values")
        units = parts[SYSTOLIC.code][1], parts[DIASTOLIC.code][1]
        if ucum_unit(kind, units[0]) != ucum_unit(kind, units[1]):
            raise ReadingError(f"systolic is in {units[0]!r} but diastolic in {units[1]!r}")
        fields.update(systolic=parts[SYSTOLIC.code][0], diastolic=parts[DIASTOLIC.code][0])
        fields["unit"] = parts[SYSTOLIC.code][1]
    else:
        fields["value"], fields["unit"] = _quantity_of(model.valueQuantity, "Observation")
    reading = parse_reading(fields)
    check_codes_agree(codes, to_observation(reading))
    return reading
