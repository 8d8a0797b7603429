"""IHE PCD-01 (Device Enterprise Communication) ORU^R01, HL7 v2.3 to v2.6, to MDC-coded FHIR Observations (pure).

Parsing is python-hl7's; this module reads what IHE PCD TF-2 puts where:

- OBX-3 the observation (``150456^MDC_PULS_OXIM_SAT_O2^MDC``, or a vendor code the
  operator maps to MDC); OBX-4 the containment path MDS.VMD.CHAN.METRIC
  (``1.0.1.1``); OBX-2 the value type: NM, SN, CWE/CNE/CE, NA/MA (waveforms);
  OBX-6 the unit (MDC ``266016^MDC_DIM_MMHG^MDC``, UCUM, or a device spelling);
  OBX-11 the result status; OBX-14 the time, else OBR-7 of its group, else MSH-7;
  OBX-18 the equipment: the device is the OBX's own OBX-18, else its nearest
  ancestor's in the containment tree (the MDS OBX carries it), else MSH-3's
  universal id (EUI-64), else MSH-3.1.
- OBX without a value are the containment tree (MDS, VMD, channel, a blood
  pressure compound) and store nothing themselves.
- Systolic, diastolic and mean of one pressure compound under one parent become
  one panel Observation (LOINC 85354-9 with 8480-6, 8462-4, 8478-0 for systemic
  pressure); ECG leads (NA or MA) of one device in one OBR group become one
  Observation with a SampledData component per lead, their sample rate and
  resolution from their MDC_ATTR_SAMP_RATE and MDC_ATTR_NU_MSMT_RES children.
- MDC event codes (alarms, ``MDC_EVT_*``) become Observations of category
  ``device-alert``; device attributes (MDC_ATTR_TIME_ABS, MDC_TIME_SYNC_PROTOCOL)
  describe the device's clock and store nothing.

A message is taken whole or not at all, as in :mod:`hl7v2`: every OBX that
cannot be stored is listed with its code, and nothing is stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from medcloud.models import DeviceClass
from medcloud_gateway.device_fhir import Context, DeviceObservation, concept, observation, quantity, sampled_data
from medcloud_gateway.hl7v2 import Header, Hl7Error, parse_header, parse_timestamp, parsed
from medcloud_gateway.mdc import (
    BP_PANEL,
    DEVICE_ATTRIBUTES,
    ECG_ELEC_POTL,
    ECG_LEADS,
    EKG_STUDY,
    EVENT_PARTITION,
    FAMILIES,
    INOPERATIVE,
    LEAD_REFERENCE_IDS,
    MDC_SYSTEM,
    PART_LOINC,
    SAMPLE_RATE_UNITS,
    TERMS,
    WAVEFORM_ATTRIBUTES,
    PressureFamily,
    Term,
    UnknownUnitError,
    Vocabulary,
    family_of,
    lead_code,
    lead_reference_id,
    mdc,
    ucum_of,
)
from medcloud_gateway.readings import DEVICE_ID_PATTERN, ReadingError

MDC_CODING_SYSTEMS = frozenset({"MDC"})
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# HL7 v2 OBX-11 to FHIR Observation.status (the HL7 v2-to-FHIR IG's ConceptMap).
_STATUS = {
    "F": "final",
    "R": "preliminary",
    "P": "preliminary",
    "S": "preliminary",
    "C": "corrected",
    "U": "final",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "X": "cancelled",
    "": "final",
}
_CODED_TYPES = frozenset({"CWE", "CNE", "CE"})
_WAVEFORM_TYPES = frozenset({"NA", "MA"})
MAX_SAMPLES = 12 * 10 * 1000
"""Samples in one message's waveforms: a 12-lead, 10 s strip at 1 kHz; more is refused, keeping memory bounded."""


def normalise_segments(text: str) -> str:
    """Segments end with CR in HL7 v2; CRLF and LF (files, some senders) become CR so no segment is lost."""
    return text.replace("\r\n", "\r").replace("\n", "\r")


def is_device_message(text: str) -> bool:
    """True when any OBX-3 is coded in MDC or a vendor system (not LOINC): a PCD-01 message for this module."""
    message = parsed(normalise_segments(text))
    for obx in _segments(message, "OBX"):
        system = _component(obx, 3, 3)
        if system and system.upper() not in ("LN", "LOINC"):
            return True
    return False


# ----------------------------------------------------------------------------- fields


def _segments(message: Any, name: str) -> list[Any]:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


def _repetitions(segment: Any, number: int) -> tuple[tuple[str, ...], ...]:
    """Field ``number`` as repetitions of component strings (python-hl7 nests only where separators were)."""
    if len(segment) <= number:
        return ()
    field_ = segment[number]
    # A short field is usually one hl7v2.parsed shares between messages: its repetitions are read once. The entry
    # holds the field itself, so its id cannot name another object while it is remembered.
    known = _REMEMBERED_REPETITIONS.get(id(field_))
    if known is not None and known[0] is field_:
        return known[1]
    out: list[tuple[str, ...]] = []
    for repetition in field_:
        if isinstance(repetition, str):
            out.append((repetition,))
        else:
            out.append(tuple(str(component) for component in repetition))
    found = tuple(r for r in out if any(r))
    if sum(len(c) for r in found for c in r) <= _LONGEST_REMEMBERED_FIELD:
        if len(_REMEMBERED_REPETITIONS) >= _MAX_REMEMBERED_FIELDS:
            _REMEMBERED_REPETITIONS.clear()
        _REMEMBERED_REPETITIONS[id(field_)] = (field_, found)
    return found


_MAX_REMEMBERED_FIELDS = 8192
_LONGEST_REMEMBERED_FIELD = 256
"""Longer fields (waveforms, free text) are read every time: memory stays bounded."""
_REMEMBERED_REPETITIONS: dict[int, tuple[Any, tuple[tuple[str, ...], ...]]] = {}


def _component(segment: Any, number: int, component: int = 1, repetition: int = 0) -> str:
    reps = _repetitions(segment, number)
    if repetition >= len(reps) or component > len(reps[repetition]):
        return ""
    return reps[repetition][component - 1].strip()


@dataclass(frozen=True)
class Coded:
    code: str
    text: str
    system: str

    def __str__(self) -> str:
        return "^".join(p for p in (self.code, self.text, self.system) if p)


@dataclass
class Row:
    """One OBX as sent."""

    number: str
    value_type: str
    observation: Coded
    sub_id: str
    values: list[list[str]]
    unit: Coded | None
    status: str
    time: str
    equipment: str
    group: int
    children: list[Row] = field(default_factory=list)

    @property
    def has_value(self) -> bool:
        return any(any(c.strip() for c in rep) for rep in self.values)

    def where(self) -> str:
        return f"OBX {self.number} ({self.observation})"


def _coded(segment: Any, number: int, message: Any) -> Coded:
    return Coded(
        _component(segment, number, 1),
        message.unescape(_component(segment, number, 2)),
        _component(segment, number, 3),
    )


def _rows(message: Any) -> Iterator[Row]:
    group, group_time = 0, ""
    for position, segment in enumerate(message, start=1):
        name = str(segment[0][0]) if len(segment) else ""
        if name == "OBR":
            group += 1
            group_time = _component(segment, 7)
        elif name == "OBX":
            unit = _coded(segment, 6, message)
            yield Row(
                number=_component(segment, 1) or f"#{position}",
                value_type=_component(segment, 2).upper(),
                observation=_coded(segment, 3, message),
                sub_id=_component(segment, 4),
                values=[[message.unescape(c) for c in rep] for rep in _repetitions(segment, 5)],
                unit=unit if (unit.code or unit.text) else None,
                status=_component(segment, 11).upper(),
                time=_component(segment, 14) or group_time,
                equipment=_component(segment, 18),
                group=group,
            )


def _ancestors(sub_id: str) -> Iterator[str]:
    """Containment ancestors of ``1.2.1.3``: ``1.2.1``, ``1.2``, ``1``, each also zero-padded (``1.2.1.0``)."""
    parts = sub_id.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        prefix = parts[:depth]
        yield ".".join(prefix)
        yield ".".join(prefix + ["0"] * (4 - depth))


# ----------------------------------------------------------------------------- the message


@dataclass(frozen=True)
class DeviceResult:
    """What one PCD-01 message carried: Observations if every OBX was understood, else the problems."""

    header: Header
    observations: list[DeviceObservation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Reader:
    vocabulary: Vocabulary
    local: tzinfo | None
    header: Header
    patient: str
    default_device: str
    errors: list[str] = field(default_factory=list)
    out: list[DeviceObservation] = field(default_factory=list)

    def device_of(self, row: Row, by_path: dict[tuple[int, str], Row]) -> str:
        device = row.equipment
        if not device:
            for ancestor in _ancestors(row.sub_id):
                parent = by_path.get((row.group, ancestor))
                if parent is not None and parent.equipment:
                    device = parent.equipment
                    break
        device = device or self.default_device
        if not device:
            raise ReadingError("no device: neither OBX-18 of it or its containers nor MSH-3 names one")
        if not re.match(DEVICE_ID_PATTERN, device):
            raise ReadingError(f"device id {device!r} (OBX-18.1, else MSH-3) is not [A-Za-z0-9][A-Za-z0-9.-]{{0,63}}")
        return device

    def context(self, row: Row, device: str) -> Context:
        if not row.time and not self.header.time:
            raise ReadingError("no time: OBX-14, OBR-7 and MSH-7 are all empty")
        time = parse_timestamp(row.time or self.header.time, self.local)
        if row.status not in _STATUS:
            raise ReadingError(f"OBX-11 result status {row.status!r} is not one of {', '.join(sorted(_STATUS)[1:])}")
        return Context(self.patient, device, time, _STATUS[row.status])


def _mdc_code(row: Row, vocabulary: Vocabulary) -> int:
    observed = row.observation
    code = vocabulary.resolve(observed.code, observed.text, observed.system)
    if code is None:
        if observed.system.upper() in MDC_CODING_SYSTEMS:
            raise ReadingError(f"OBX-3 {observed} has no numeric MDC code")
        raise ReadingError(
            f"code {observed} is in coding system {observed.system or '(none)'!r}, which is neither MDC "
            "nor mapped by the DeviceGateway's codeMappings"
        )
    return code


def _number(text: str, where: str) -> float:
    if not _NUMBER.match(text.strip()):
        raise ReadingError(f"{where} {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ReadingError(f"{where} {text!r} is not finite")
    return value


def _unit(row: Row, allowed: tuple[str, ...], what: str) -> str:
    if row.unit is None:
        raise ReadingError(f"OBX-6 has no unit for {what}")
    try:
        ucum = ucum_of(row.unit.code, row.unit.text, row.unit.system)
    except UnknownUnitError as exc:
        raise ReadingError(str(exc)) from None
    if allowed and ucum not in allowed:
        raise ReadingError(f"unit {ucum} is not one of {', '.join(allowed)} for {what}")
    return ucum


def _single(row: Row) -> list[str]:
    if len(row.values) > 1:
        raise ReadingError(f"OBX-5 repeats {len(row.values)} times; a {row.value_type} value is one")
    return row.values[0]


def _value(row: Row, term: Term) -> dict[str, Any]:
    """OBX-5 as a FHIR value[x]: NM and SN as Quantity, Range or Ratio; CWE as CodeableConcept."""
    kind = row.value_type
    if kind == "NM":
        (text, *rest) = _single(row)
        if any(c.strip() for c in rest):
            raise ReadingError(f"OBX-2 is NM, but OBX-5 has {len(rest) + 1} components: a waveform is NA or MA")
        return {"valueQuantity": quantity(_number(text, "OBX-5"), _unit(row, term.units, term.reference_id))}
    if kind == "SN":
        parts = [*_single(row), "", "", ""][:4]
        comparator, first, separator, second = (p.strip() for p in parts)
        ucum = _unit(row, term.units, term.reference_id)
        if not separator:
            if comparator not in ("", "=", "<", ">", "<=", ">="):
                raise ReadingError(f"OBX-5 SN comparator {comparator!r} is not one of <, >, <=, >=, =")
            return {"valueQuantity": quantity(_number(first, "OBX-5.2"), ucum, comparator.strip("=") or None)}
        low, high = _number(first, "OBX-5.2"), _number(second, "OBX-5.4")
        if separator == "-":
            return {"valueRange": {"low": quantity(low, ucum), "high": quantity(high, ucum)}}
        if separator in (":", "/"):
            return {"valueRatio": {"numerator": quantity(low, ucum), "denominator": quantity(high, "1")}}
        raise ReadingError(f"OBX-5 SN separator {separator!r} is not -, : or /")
    if kind in _CODED_TYPES:
        code, text, system = ([*_single(row), "", "", ""])[:3]
        coding: dict[str, str] = {"code": code} if code else {}
        if system.upper() == "MDC":
            coding["system"] = MDC_SYSTEM
        if text:
            coding["display"] = text
        if not coding.get("code"):
            raise ReadingError("OBX-5 coded value has no code")
        return {"valueCodeableConcept": {"coding": [coding], **({"text": text} if text else {})}}
    raise ReadingError(f"OBX-2 value type {kind or '(empty)'!r} is not NM, SN, CWE, CNE, CE, NA or MA")


def parse_pcd01(text: str, vocabulary: Vocabulary, *, local: tzinfo | None = None) -> DeviceResult:
    """The Observations of one PCD-01 ORU^R01, or every reason it has none; :class:`Hl7Error` if not one at all."""
    text = normalise_segments(text)
    header = parse_header(text)
    if (header.message_type, header.trigger_event) != ("ORU", "R01"):
        raise Hl7Error(f"message type {header.message_type}^{header.trigger_event} is not ORU^R01")
    message = parsed(text)
    pids = _segments(message, "PID")
    patient_id = _component(pids[0], 3) if pids else ""
    if not patient_id:
        raise Hl7Error("no PID-3 patient identifier")
    if not re.match(r"^[A-Za-z0-9.-]{1,64}$", patient_id):
        raise Hl7Error(f"PID-3.1 {patient_id!r} is not usable as a FHIR Patient id ([A-Za-z0-9.-]{{1,64}})")
    msh = message.segment("MSH")
    default_device = _component(msh, 3, 2) or _component(msh, 3, 1)
    reader = _Reader(vocabulary, local, header, f"Patient/{patient_id}", default_device)
    rows = list(_rows(message))
    if not rows:
        reader.errors.append("no OBX segments: the message carries no observation")
    by_path = {(r.group, r.sub_id): r for r in rows if r.sub_id}
    _read(reader, rows, by_path)
    if reader.errors:
        return DeviceResult(header, [], reader.errors)
    return DeviceResult(header, reader.out, [])


def _read(reader: _Reader, rows: list[Row], by_path: dict[tuple[int, str], Row]) -> None:
    pressures: dict[tuple[int, str, str, int], dict[str, tuple[Row, int]]] = {}
    waveforms: dict[tuple[int, str], list[tuple[Row, int]]] = {}
    attributes: dict[tuple[int, str], list[Row]] = {}
    for row in rows:
        if row.observation.text in WAVEFORM_ATTRIBUTES:
            attributes.setdefault((row.group, row.sub_id.rsplit(".", 1)[0]), []).append(row)
    for row in rows:
        text = row.observation.text
        if text in WAVEFORM_ATTRIBUTES or text in DEVICE_ATTRIBUTES:
            continue
        if not row.has_value:
            continue  # the containment tree: MDS, VMD, channel, a pressure compound
        if text == INOPERATIVE and _operative_waveform_channel(row, by_path):
            continue
        try:
            code = _mdc_code(row, reader.vocabulary)
            _check_lead_code(row, code)
            device = reader.device_of(row, by_path)
            if code in ECG_LEADS or row.value_type in _WAVEFORM_TYPES:
                waveforms.setdefault((row.group, device), []).append((row, code))
                continue
            pressure = family_of(code)
            if pressure is not None:
                family, part = pressure
                parent = row.sub_id.rsplit(".", 1)[0] if "." in row.sub_id else ""
                parts = pressures.setdefault((row.group, device, parent, family.code), {})
                if part in parts:
                    raise ReadingError(f"a second {part} pressure in the same compound")
                parts[part] = (row, code)
                continue
            context = reader.context(row, device)
            if code in EVENT_PARTITION or text.startswith("MDC_EVT_"):
                reader.out.append(_alert(row, code, context))
                continue
            term = TERMS.get(code)
            if term is None:
                raise ReadingError(f"MDC code {code} ({text or 'no reference id'}) is not a code this gateway maps")
            if text and text.startswith("MDC_") and text != term.reference_id:
                raise ReadingError(f"OBX-3 says {code} is {text}, but MDC {code} is {term.reference_id}")
            reader.out.append(_measurement(row, term, context))
        except ReadingError as exc:
            reader.errors.append(f"{row.where()}: {exc}")
    for (_, device, parent, family_code), parts in pressures.items():
        try:
            reader.out.append(_panel(reader, device, parent, family_code, parts))
        except ReadingError as exc:
            first = min((r for r, _ in parts.values()), key=lambda r: r.number)
            reader.errors.append(f"{first.where()}: {exc}")
    for (_, device), leads in waveforms.items():
        try:
            reader.out.extend(_waveforms(reader, device, leads, attributes))
        except ReadingError as exc:
            reader.errors.append(f"{leads[0][0].where()}: {exc}")


def _operative_waveform_channel(row: Row, by_path: dict[tuple[int, str], Row]) -> bool:
    """True for a waveform's MDC_EVT_INOP child (OBX-4 ``<lead>.n``) of 0: the channel works, nothing to alert."""
    parent = by_path.get((row.group, row.sub_id.rsplit(".", 1)[0]))
    if parent is None or parent.value_type not in _WAVEFORM_TYPES:
        return False
    (value, *_) = row.values[0]
    return _NUMBER.match(value.strip()) is not None and float(value) == 0


def _check_lead_code(row: Row, code: int) -> None:
    """An ECG lead's number and reference id must name the same lead: which one the device meant cannot be told."""
    text = row.observation.text
    named = LEAD_REFERENCE_IDS.get(text.upper())
    if named is not None and named != code:
        raise ReadingError(f"OBX-3 says {code} is {text}, but {text} is MDC {named}")
    if named is None and code in ECG_LEADS and text.startswith("MDC_"):
        raise ReadingError(f"OBX-3 says {code} is {text}, but MDC {code} is {lead_reference_id(code)}")


def _measurement(row: Row, term: Term, context: Context) -> DeviceObservation:
    value = _value(row, term)
    unit = value.get("valueQuantity", {}).get("code")
    return observation(
        context,
        f"{term.code}\n{row.sub_id}",
        term.codings(unit),
        category_name=term.category,
        profile=term.profile,
        value=value,
        classes=term.classes,
    )


def _alert(row: Row, code: int, context: Context) -> DeviceObservation:
    values = row.values[0] if row.values else [""]
    if row.value_type in _CODED_TYPES and values[0]:
        value = _value(row, Term(code, row.observation.text, ()))
    else:
        value = {"valueString": "^".join(v for v in values if v)}
    codes = [mdc(code, row.observation.text or f"MDC {code}")]
    return observation(
        context,
        f"{code}\n{row.sub_id}",
        codes,
        category_name="device-alert",
        profile=None,
        value=value,
        # Every class of device can raise an alarm; the gateway keeps what its devices report.
        classes=frozenset(DeviceClass),
    )


def _panel(
    reader: _Reader, device: str, parent: str, family_code: int, parts: dict[str, tuple[Row, int]]
) -> DeviceObservation:
    family: PressureFamily = FAMILIES[family_code]
    rows = [r for r, _ in parts.values()]
    contexts = {reader.context(r, device).time for r in rows}
    if len(contexts) > 1:
        raise ReadingError("systolic, diastolic and mean of one compound have different times")
    context = reader.context(rows[0], device)
    components = []
    units = set()
    for part in ("systolic", "diastolic", "mean"):
        if part not in parts:
            continue
        row, code = parts[part]
        codes = [PART_LOINC[part], family.part_code(part)] if family.systemic else [family.part_code(part)]
        value = _value(row, Term(code, family.part_code(part).display, ("mm[Hg]",)))
        units.add(value.get("valueQuantity", {}).get("code"))
        components.append({"code": concept(codes), **value})
    both = "systolic" in parts and "diastolic" in parts
    compound = mdc(family.code, family.reference_id)
    return observation(
        context,
        f"{family.code}\n{parent}",
        [BP_PANEL, compound] if family.systemic else [compound],
        category_name="vital-signs",
        profile="bp" if family.systemic and both else None,
        components=components,
        classes=family.classes,
    )


def _attribute(attributes: list[Row], name: str) -> Row | None:
    for row in attributes:
        if row.observation.text == name:
            return row
    return None


def _waveforms(
    reader: _Reader, device: str, leads: list[tuple[Row, int]], attributes: dict[tuple[int, str], list[Row]]
) -> list[DeviceObservation]:
    """ECG leads of one device and group: one Observation, a component per lead; other waveforms one each."""
    ecg: list[dict[str, Any]] = []
    others: list[DeviceObservation] = []
    total = 0
    first: Row | None = None
    for row, code in leads:
        own = attributes.get((row.group, row.sub_id), [])
        rate_row = _attribute(own, "MDC_ATTR_SAMP_RATE")
        if rate_row is None or not rate_row.has_value:
            raise ReadingError(f"waveform {code} has no MDC_ATTR_SAMP_RATE child (OBX-4 {row.sub_id}.n)")
        rate = _number(rate_row.values[0][0], "MDC_ATTR_SAMP_RATE")
        # Samples per second whichever MDC spelling (MDC_DIM_PER_SEC, MDC_DIM_HZ): the period is 1000 / rate ms.
        _unit(rate_row, SAMPLE_RATE_UNITS, "MDC_ATTR_SAMP_RATE")
        if rate <= 0:
            raise ReadingError(f"sample rate {rate} is not positive")
        resolution_row = _attribute(own, "MDC_ATTR_NU_MSMT_RES")
        factor = _number(resolution_row.values[0][0], "MDC_ATTR_NU_MSMT_RES") if resolution_row else None
        unit_row = resolution_row if resolution_row is not None and resolution_row.unit else row
        unit = _unit(unit_row, (), f"waveform {code}")
        samples = _samples(row)
        total += len(samples)
        if total > MAX_SAMPLES:
            raise ReadingError(f"more than {MAX_SAMPLES} waveform samples in one message")
        data = sampled_data(samples, period_ms=1000.0 / rate, unit=unit, factor=factor)
        if code in ECG_LEADS:
            first = first or row
            ecg.append({"code": concept([lead_code(ECG_LEADS[code])]), "valueSampledData": data})
            continue
        term = TERMS.get(code)
        if term is None:
            raise ReadingError(f"waveform MDC code {code} ({row.observation.text}) is not a code this gateway maps")
        context = reader.context(row, device)
        others.append(
            observation(
                context,
                f"{code}\n{row.sub_id}",
                term.codings(),
                category_name=term.category,
                profile=None,
                value={"valueSampledData": data},
                classes=term.classes,
            )
        )
    if ecg:
        assert first is not None
        context = reader.context(first, device)
        others.append(
            observation(
                context,
                f"{ECG_ELEC_POTL.code}\n{first.group}",
                [EKG_STUDY, ECG_ELEC_POTL],
                category_name="procedure",
                profile=None,
                components=ecg,
                classes=frozenset({DeviceClass.ECG}),
            )
        )
    return others


def _samples(row: Row) -> list[str]:
    """NA: samples are components of one repetition; MA: repetitions are instants, components channels (one here)."""
    if row.value_type == "MA":
        if any(len(rep) != 1 for rep in row.values):
            raise ReadingError("an MA value with several channels per sample needs one OBX per lead")
        values = [rep[0] for rep in row.values]
    else:
        values = _single(row)
    out = []
    for value in values:
        text = value.strip()
        if not _NUMBER.match(text):
            raise ReadingError(f"waveform sample {text!r} is not a number")
        out.append(text)
    return out
