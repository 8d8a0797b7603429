"""HL7 v2 ORU^R01 results to readings, the ACK that answers them, and MLLP framing (pure).

One ORU message is taken whole or not at all: if any OBX cannot become a reading
the ACK is AE listing every problem and nothing is stored, so the sender fixes
and resends the message instead of guessing which half arrived.

Field use (HL7 v2.5 numbering):

- PID-3.1: the patient's id, recorded as ``Patient/<id>``.
- OBX-2 ``NM``; OBX-3.1 a LOINC code (OBX-3.3 ``LN``); OBX-5 the value; OBX-6.1
  the unit (UCUM or a device spelling); OBX-14 the time, else OBR-7, else MSH-7;
  OBX-18.1 the device, else MSH-3.1 (the sending application).
- Systolic (8480-6) and diastolic (8462-4) OBX of the same device and time make
  one blood-pressure reading; a panel OBX (85354-9) without a value only heads them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from typing import Any

import hl7

from medcloud_gateway.normalize import (
    BP_PANEL,
    DIASTOLIC,
    SYSTOLIC,
    check_codes_agree,
    kind_of_codes,
    to_observation,
    ucum_unit,
)
from medcloud_gateway.readings import Kind, Reading, ReadingError, parse_reading

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
MAX_MESSAGE_BYTES = 1024 * 1024


class Hl7Error(ValueError):
    """A message that is not an ORU^R01 this gateway can read at all (answered with AR)."""


class MllpFramingError(ValueError):
    """Bytes on an MLLP connection that are not a frame: the connection cannot be trusted further."""


class AckCode(StrEnum):
    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


# ----------------------------------------------------------------------------- MLLP framing


def frame(message: str | bytes) -> bytes:
    """One message in an MLLP block: ``0x0b message 0x1c 0x0d``."""
    body = message.encode() if isinstance(message, str) else message
    return START_BLOCK + body + END_BLOCK + CARRIAGE_RETURN


class MllpDecoder:
    """Cuts a byte stream into MLLP messages; bytes arrive in any split."""

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the messages it completed, in order."""
        self._buffer += data
        messages: list[bytes] = []
        while True:
            # Line breaks between blocks are tolerated (some senders add them); anything else is not MLLP.
            stripped = self._buffer.lstrip(b"\r\n")
            del self._buffer[: len(self._buffer) - len(stripped)]
            if not self._buffer:
                return messages
            if self._buffer[:1] != START_BLOCK:
                raise MllpFramingError(f"expected a start block (0x0b), got {bytes(self._buffer[:16])!r}")
            end = self._buffer.find(END_BLOCK + CARRIAGE_RETURN)
            if end < 0:
                if len(self._buffer) > self._max + 1:
                    raise MllpFramingError(f"message longer than {self._max} bytes")
                return messages
            if end - 1 > self._max:
                raise MllpFramingError(f"message longer than {self._max} bytes")
            messages.append(bytes(self._buffer[1:end]))
            del self._buffer[: end + 2]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still held."""
        return len(self._buffer)


# ----------------------------------------------------------------------------- ORU^R01 in


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK echoes."""

    control_id: str
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    trigger_event: str = ""
    processing_id: str = "P"
    version: str = "2.5"
    time: str = ""


@dataclass(frozen=True)
class OruResult:
    """What one ORU^R01 carried: readings if every OBX was good, else the problems."""

    header: Header
    readings: list[Reading] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# Mindray monitors send milliseconds without HL7's dot (20260124131539000+0800); a DTM has 14 digits before its
# fraction, so three more digits after the seconds can only be milliseconds.
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4})|(?<=\d{14})(\d{3}))?([+-]\d{4})?$")


def parse_timestamp(value: str, local: tzinfo | None) -> datetime:
    """An HL7 TS/DTM (``YYYYMMDDHHMM[SS[.S]][+ZZZZ]``, or Mindray's ``YYYYMMDDHHMMSSsss``) as an aware datetime.

    Without an offset the time is in ``local`` (the gateway's configured HL7
    time zone); with no zone configured such a time is refused, not guessed.
    """
    match = _TS.match(value.strip())
    if not match or match.group(4) is None or match.group(5) is None:
        raise ReadingError(f"time {value!r} is not an HL7 timestamp to the minute (YYYYMMDDHHMM[SS][+ZZZZ])")
    year, month, day, hour, minute, second, fraction, milliseconds, offset = match.groups()
    fraction = fraction or milliseconds
    zone: tzinfo
    if offset:
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    elif local is not None:
        zone = local
    else:
        raise ReadingError(f"time {value!r} has no UTC offset and no HL7 time zone is configured")
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=zone,
        )
    except ValueError as exc:
        raise ReadingError(f"time {value!r}: {exc}") from None


def _field(segment: Any, number: int, component: int = 1) -> str:
    """Segment field ``number``, component ``component``, as text ('' when absent)."""
    try:
        return str(segment.extract_field(field_num=number, component_num=component)).strip()
    except (IndexError, KeyError):
        return ""


def _segments(message: Any, name: str) -> list[Any]:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


def _msh_field(msh: Any, number: int, component: int = 1) -> str:
    # python-hl7 counts MSH-1 (the field separator) as field 1, as the standard does.
    return _field(msh, number, component)


@functools.lru_cache(maxsize=16)
def parsed(text: str) -> Any:
    """``hl7.parse(text)``, remembered for the last few texts: the header, the PCD-01 test and the parser each read
    the same message, and python-hl7 takes longer to parse one than everything else the gateway does with it.
    The message is only read, never changed."""
    if _RememberedPlan is None:
        return hl7.parse(text)
    # What hl7.parse does (python-hl7's create_parse_plan and _split), with a plan that makes each level's plan once
    # (see _RememberedPlan), and each field text parsed once for many messages (see _remembered_fields).
    message = text.strip()
    plan = create_parse_plan(message)
    remembered = _RememberedPlan(plan.separator, plan.separators, plan.containers, plan.esc, plan.factory)
    if not remembered.applies(message):
        return split(message, remembered)
    segment_plan = remembered.next()
    fields = _remembered_fields(plan.separators, plan.esc)
    return remembered.container([_segment(s, segment_plan, fields) for s in message.split(remembered.separator)])


_MAX_REMEMBERED_FIELDS = 8192
_LONGEST_REMEMBERED_FIELD = 256
"""Longer field texts (waveforms, free text) are parsed every time: they rarely repeat, and memory stays bounded."""
_FIELDS: dict[tuple[str, str], dict[str, Any]] = {}


def _remembered_fields(separators: str, esc: str) -> dict[str, Any]:
    """Parsed fields by their text, for messages of these delimiters.

    A device's messages repeat most field texts (segment names, codes, units, sub-ids, status, the device; often the
    time across one message's OBX), and python-hl7 builds several containers for each field (repetitions,
    components), the largest part of its parse time. A remembered field is shared by every message it occurs in,
    which the gateway never changes. Dict reads and writes are atomic under the GIL, so threads may share it; when
    full it is emptied and refilled from the messages that follow."""
    fields = _FIELDS.get((separators, esc))
    if fields is None:
        fields = _FIELDS.setdefault((separators, esc), {})
    elif len(fields) >= _MAX_REMEMBERED_FIELDS:
        fields.clear()
    return fields


def _segment(text: str, plan: Any, fields: dict[str, Any]) -> Any:
    """python-hl7's ``_split`` of one segment (MSH's delimiters field included), its fields from ``fields``."""
    if not plan.applies(text):
        return plan.container([text])
    data = []
    if text[:3] in ("MSH", "BHS", "FHS"):
        # As python-hl7: MSH-1 and MSH-2 hold the delimiters themselves and are not split.
        name, sep0 = text[:3], text[3]
        sep_end_off = text.find(sep0, 4)
        seps = text[4:sep_end_off]
        text = text[sep_end_off + 1 :]
        create = plan.factory.create_field
        data = [create(sequence=[part], esc=plan.esc, separators=plan.separators) for part in (name, sep0, seps)]
    if text:
        field_plan = plan.next()
        for field_text in text.split(plan.separator):
            parsed_field = fields.get(field_text)
            if parsed_field is None:
                parsed_field = split(field_text, field_plan)
                if len(field_text) <= _LONGEST_REMEMBERED_FIELD:
                    fields[field_text] = parsed_field
            data.append(parsed_field)
    return plan.container(data)


try:
    from hl7.parser import _ParsePlan, create_parse_plan
    from hl7.parser import _split as split
except ImportError:  # a python-hl7 without them: its public parse
    _RememberedPlan = None
else:

    class _RememberedPlan(_ParsePlan):  # type: ignore[no-redef,misc]
        """python-hl7's parse plan (its own parser does all the splitting), each level's plan made once per message
        instead of once per element: python-hl7 made a new plan for each of a message's few hundred fields,
        repetitions and components, a fifth of its parse time (its ``next`` is written to be subclassed)."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self._child: Any = self
            self._below = self.separators[self.separators.find(self.separator) :]

        def next(self) -> Any:
            if self._child is self:
                self._child = super().next()
            return self._child

        def applies(self, text: str) -> bool:
            # As python-hl7's: this level's separator or a lower one is in the text (without re-slicing them).
            return any(separator in text for separator in self._below)


def parse_header(text: str) -> Header:
    """The MSH of ``text``; :class:`Hl7Error` when there is none."""
    try:
        message = parsed(text)
        msh = message.segment("MSH")
    except Exception as exc:  # python-hl7 raises bare errors of several kinds on malformed text
        raise Hl7Error(f"no readable MSH segment: {exc}") from None
    return Header(
        control_id=_msh_field(msh, 10),
        sending_application=_msh_field(msh, 3),
        sending_facility=_msh_field(msh, 4),
        receiving_application=_msh_field(msh, 5),
        receiving_facility=_msh_field(msh, 6),
        message_type=_msh_field(msh, 9, 1),
        trigger_event=_msh_field(msh, 9, 2),
        processing_id=_msh_field(msh, 11) or "P",
        version=_msh_field(msh, 12) or "2.5",
        time=_msh_field(msh, 7),
    )


@dataclass
class _Row:
    """One OBX as read, before pairing."""

    number: str
    code: str
    value: float | None
    unit: str
    time: datetime
    device: str


def _obx_row(obx: Any, default_time: str, default_device: str, local: tzinfo | None) -> _Row:
    number = _field(obx, 1) or "?"
    code, coding_system = _field(obx, 3, 1), _field(obx, 3, 3)
    if coding_system and coding_system != "LN":
        raise ReadingError(f"OBX-3 coding system {coding_system!r} is not LOINC (LN)")
    if not code:
        raise ReadingError("OBX-3 has no observation code")
    value_type, raw_value = _field(obx, 2), _field(obx, 5)
    value: float | None = None
    if raw_value:
        if value_type != "NM":
            raise ReadingError(f"OBX-2 value type {value_type!r} is not NM (numeric)")
        try:
            value = float(raw_value)
        except ValueError:
            raise ReadingError(f"OBX-5 {raw_value!r} is not a number") from None
    time = parse_timestamp(_field(obx, 14) or default_time, local)
    device = _field(obx, 18) or default_device
    if not device:
        raise ReadingError("no device: OBX-18 and MSH-3 are both empty")
    unit = _field(obx, 6, 1) or _field(obx, 6, 2)
    return _Row(number, code, value, unit, time, device)


def _reading(fields: dict[str, Any], codes: list[str]) -> Reading:
    reading = parse_reading(fields)
    check_codes_agree(codes, to_observation(reading))
    return reading


def parse_oru(text: str, *, local: tzinfo | None = None) -> OruResult:
    """The readings of an ORU^R01, or every reason it has none. :class:`Hl7Error` if it is not one at all."""
    header = parse_header(text)
    if (header.message_type, header.trigger_event) != ("ORU", "R01"):
        raise Hl7Error(f"message type {header.message_type}^{header.trigger_event} is not ORU^R01")
    message = parsed(text)
    pids = _segments(message, "PID")
    if not pids or not _field(pids[0], 3):
        raise Hl7Error("no PID-3 patient identifier")
    patient = f"Patient/{_field(pids[0], 3)}"
    obrs = _segments(message, "OBR")
    default_time = (_field(obrs[0], 7) if obrs else "") or header.time
    readings: list[Reading] = []
    errors: list[str] = []
    pressure: dict[tuple[str, datetime], dict[str, _Row]] = {}
    obxs = _segments(message, "OBX")
    if not obxs:
        errors.append("no OBX segments: the message carries no observation")
    for obx in obxs:
        number = _field(obx, 1) or "?"
        try:
            row = _obx_row(obx, default_time, header.sending_application, local)
            if row.code in (SYSTOLIC.code, DIASTOLIC.code):
                parts = pressure.setdefault((row.device, row.time), {})
                if row.code in parts:
                    raise ReadingError(f"a second {row.code} for the same device and time")
                parts[row.code] = row
                continue
            if row.code == BP_PANEL.code and row.value is None:
                continue  # the panel's own OBX only heads its systolic and diastolic rows
            if row.value is None:
                raise ReadingError(f"OBX-5 is empty for {row.code}")
            kind = kind_of_codes([row.code])
            fields = {"deviceId": row.device, "patient": patient, "kind": kind, "value": row.value}
            readings.append(_reading({**fields, "unit": row.unit, "time": row.time}, [row.code]))
        except ReadingError as exc:
            errors.append(f"OBX {number}: {exc}")
    for (device, time), parts in pressure.items():
        systolic, diastolic = parts.get(SYSTOLIC.code), parts.get(DIASTOLIC.code)
        if systolic is None or diastolic is None:
            alone = systolic or diastolic
            assert alone is not None
            errors.append(f"OBX {alone.number}: {alone.code} has no matching {'8462-4' if systolic else '8480-6'}")
            continue
        try:
            if systolic.value is None or diastolic.value is None:
                raise ReadingError("OBX-5 is empty for systolic or diastolic")
            if ucum_unit(Kind.BLOOD_PRESSURE, systolic.unit) != ucum_unit(Kind.BLOOD_PRESSURE, diastolic.unit):
                raise ReadingError(f"systolic is in {systolic.unit!r} but diastolic in {diastolic.unit!r}")
            fields = {"deviceId": device, "patient": patient, "kind": Kind.BLOOD_PRESSURE, "time": time}
            readings.append(
                _reading(
                    {**fields, "systolic": systolic.value, "diastolic": diastolic.value, "unit": systolic.unit},
                    [BP_PANEL.code],
                )
            )
        except ReadingError as exc:
            errors.append(f"OBX {systolic.number}/{diastolic.number}: {exc}")
    if errors:
        return OruResult(header, [], errors)
    return OruResult(header, readings, [])


# ----------------------------------------------------------------------------- ACK out


def _escape(text: str) -> str:
    """Text safe inside one HL7 field with the default delimiters."""
    escaped = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    escaped = escaped.replace("&", "\\T\\").replace("~", "\\R\\")
    return " ".join(escaped.split())


def build_ack(header: Header | None, code: AckCode, text: str, *, control_id: str, now: datetime) -> str:
    """An original-mode ACK: MSH answering ``header`` (or a bare one) and MSA with ``code`` and ``text``.

    MSA-3 carries the text (at most 80 characters, as the field allows); the
    full list of problems goes to the gateway's log and metrics.
    """
    given = header or Header(control_id="")
    trigger = f"^{given.trigger_event}" if given.trigger_event else ""
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            _escape(given.receiving_application or "MEDCLOUD-GATEWAY"),
            _escape(given.receiving_facility),
            _escape(given.sending_application),
            _escape(given.sending_facility),
            now.strftime("%Y%m%d%H%M%S%z"),
            "",
            f"ACK{trigger}^ACK",
            _escape(control_id),
            _escape(given.processing_id),
            _escape(given.version),
        ]
    )
    msa = "|".join(["MSA", code.value, _escape(given.control_id), _escape(text)[:80]])
    return f"{msh}\r{msa}\r"
