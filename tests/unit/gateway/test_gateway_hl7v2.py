"""HL7 v2 ORU^R01 to readings, the ACK answering it, and MLLP framing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import hl7
import pytest

from medcloud_gateway import hl7v2
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
    parse_timestamp,
    parsed,
)
from medcloud_gateway.pcd01 import normalise_segments
from medcloud_gateway.readings import Kind, ReadingError

MSH = "MSH|^~\\&|BPMON|WARD3|MEDCLOUD|CITYHOSP|20240501083000+0800||ORU^R01^ORU_R01|MSG0001|P|2.5"
PID = "PID|1||p-1001^^^CITYHOSP^MR"
OBR = "OBR|1|||85354-9^Blood pressure panel^LN|||20240501083000+0800"


def oru(*obx: str, msh: str = MSH, pid: str = PID) -> str:
    return "\r".join([msh, pid, OBR, *obx]) + "\r"


def obx(n: int, code: str, value: str, unit: str, *, time: str = "", device: str = "bp-77", kind: str = "NM") -> str:
    return f"OBX|{n}|{kind}|{code}^^LN||{value}|{unit}|||||F|||{time}||||{device}"


def test_blood_pressure_and_heart_rate_become_two_readings() -> None:
    result = parse_oru(
        oru(
            "OBX|1||85354-9^BP panel^LN||||||||F",
            obx(2, "8480-6", "120", "mm[Hg]^mm[Hg]^UCUM"),
            obx(3, "8462-4", "80", "mmHg"),
            obx(4, "8867-4", "72", "bpm"),
        )
    )
    assert result.errors == []
    pressure, rate = sorted(result.readings, key=lambda r: r.kind)
    assert (pressure.kind, pressure.systolic, pressure.diastolic) == (Kind.BLOOD_PRESSURE, 120, 80)
    assert (rate.kind, rate.value, rate.unit) == (Kind.HEART_RATE, 72, "bpm")
    assert {r.patient for r in result.readings} == {"Patient/p-1001"}
    assert {r.device_id for r in result.readings} == {"bp-77"}
    # OBX-14 empty: the OBR's observation time.
    assert rate.time == datetime(2024, 5, 1, 0, 30, tzinfo=UTC)


def test_obx_time_and_device_win_over_obr_and_msh() -> None:
    result = parse_oru(oru(obx(1, "59408-5", "97", "%", time="20240501090000+0000", device="")))
    (spo2,) = result.readings
    assert spo2.time == datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    assert spo2.device_id == "BPMON"  # no OBX-18: the sending application (MSH-3)


def test_every_bad_obx_is_reported_and_no_reading_is_kept() -> None:
    result = parse_oru(
        oru(
            obx(1, "8867-4", "72", "furlongs"),
            obx(2, "8478-0", "93", "mm[Hg]"),
            obx(3, "8480-6", "120", "mm[Hg]"),
            obx(4, "8310-5", "warm", "Cel"),
            obx(5, "29463-7", "70", "kg"),  # good, but the message is one unit
        )
    )
    assert result.readings == []
    assert result.errors == [
        "OBX 1: unit 'furlongs' is not known for heart-rate (UCUM units accepted: /min)",
        "OBX 2: LOINC code 8478-0 is not a LOINC code this gateway maps "
        "(known: 15074-8, 2339-0, 2708-6, 29463-7, 59408-5, 76282-3, 8310-5, 85354-9, 8867-4, 9279-1)",
        "OBX 4: OBX-5 'warm' is not a number",
        "OBX 3: 8480-6 has no matching 8462-4",
    ]


def test_loinc_code_that_contradicts_the_unit_is_refused() -> None:
    result = parse_oru(oru(obx(1, "2339-0", "5.8", "mmol/L")))
    assert result.errors == ["OBX 1: LOINC code 2339-0 does not fit the unit given; it is 15074-8"]


def test_non_loinc_coding_system_is_refused() -> None:
    result = parse_oru(oru("OBX|1|NM|HR^Heart rate^L||72|bpm|||||F"))
    assert result.errors == ["OBX 1: OBX-3 coding system 'L' is not LOINC (LN)"]


def test_message_without_obx_is_an_error_not_an_empty_success() -> None:
    assert parse_oru(oru()).errors == ["no OBX segments: the message carries no observation"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (oru(msh=MSH.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")), r"message type ADT\^A01 is not ORU\^R01"),
        (oru(obx(1, "8867-4", "72", "bpm"), pid="PID|1||"), "no PID-3 patient identifier"),
        ("this is not HL7", "no readable MSH segment"),
    ],
)
def test_messages_that_are_not_readable_orus_raise(text: str, problem: str) -> None:
    with pytest.raises(Hl7Error, match=problem):
        parse_oru(text)


def test_times_without_offset_need_a_configured_zone() -> None:
    text = oru(obx(1, "8867-4", "72", "bpm", time="202405010830"))
    assert parse_oru(text).errors == ["OBX 1: time '202405010830' has no UTC offset and no HL7 time zone is configured"]
    (reading,) = parse_oru(text, local=ZoneInfo("Asia/Shanghai")).readings
    assert reading.time == datetime(2024, 5, 1, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240501083015-0500", datetime(2024, 5, 1, 8, 30, 15, tzinfo=timezone(timedelta(hours=-5)))),
        ("202405010830+0000", datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
        ("20240501083015.25+0100", datetime(2024, 5, 1, 8, 30, 15, 250000, tzinfo=timezone(timedelta(hours=1)))),
        # Mindray's milliseconds without the dot (tests/data/devices/hl7v2/mindray_hl7_pipeline-raw-hl7-sample.hl7).
        ("20260124131539000+0800", datetime(2026, 1, 24, 13, 15, 39, tzinfo=timezone(timedelta(hours=8)))),
        ("20260124131539125+0800", datetime(2026, 1, 24, 13, 15, 39, 125000, tzinfo=timezone(timedelta(hours=8)))),
    ],
)
def test_hl7_timestamps(value: str, expected: datetime) -> None:
    assert parse_timestamp(value, None) == expected


@pytest.mark.parametrize(
    "value", ["20240501", "2024-05-01T08:30", "20241301083000+0000", "202405010830000+0000", "2024050108301512+0000"]
)
def test_hl7_timestamps_that_are_refused(value: str) -> None:
    with pytest.raises(ReadingError):
        parse_timestamp(value, UTC)


NOW = datetime(2024, 5, 1, 0, 31, tzinfo=UTC)


def test_ack_answers_the_sender_with_msa_and_the_control_id() -> None:
    header = parse_header(oru())
    ack = build_ack(header, AckCode.ACCEPT, "stored 2 observation(s)", control_id="A1", now=NOW)
    assert ack == (
        "MSH|^~\\&|MEDCLOUD|CITYHOSP|BPMON|WARD3|20240501003100+0000||ACK^R01^ACK|A1|P|2.5\r"
        "MSA|AA|MSG0001|stored 2 observation(s)\r"
    )
    parsed = hl7.parse(ack)
    assert str(parsed.segment("MSA")(1)) == "AA"


def test_ack_text_is_escaped_and_cut_to_the_field_length() -> None:
    ack = build_ack(Header(control_id="X|1"), AckCode.ERROR, "OBX 1: a|b^c " + "x" * 200, control_id="A2", now=NOW)
    msa = ack.split("\r")[1]
    assert msa.startswith("MSA|AE|X\\F\\1|OBX 1: a\\F\\b\\S\\c x")
    assert len(msa.split("|", 3)[3]) == 80


def test_ack_for_a_message_without_header_still_parses() -> None:
    ack = build_ack(None, AckCode.REJECT, "no readable MSH segment", control_id="A3", now=NOW)
    assert str(hl7.parse(ack).segment("MSA")(1)) == "AR"


def test_mllp_frame_wraps_the_message_in_start_and_end_blocks() -> None:
    assert frame("MSH|x\r") == b"\x0bMSH|x\r\x1c\r"


def test_mllp_decoder_reassembles_messages_split_anywhere() -> None:
    stream = frame("first\r") + b"\r\n" + frame("second\r") + frame("third")
    for size in (1, 2, 5, len(stream)):
        decoder = MllpDecoder()
        messages = []
        for start in range(0, len(stream), size):
            messages += decoder.feed(stream[start : start + size])
        assert messages == [b"first\r", b"second\r", b"third"]
        assert decoder.pending == 0


def test_mllp_decoder_holds_an_incomplete_message() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|partial") == []
    assert decoder.pending == len(b"\x0bMSH|partial")


def test_mllp_decoder_refuses_bytes_outside_a_frame() -> None:
    with pytest.raises(MllpFramingError, match="expected a start block"):
        MllpDecoder().feed(b"GET / HTTP/1.1\r\n")


def test_mllp_decoder_refuses_an_oversized_message() -> None:
    decoder = MllpDecoder(max_message=10)
    with pytest.raises(MllpFramingError, match="longer than 10 bytes"):
        decoder.feed(b"\x0b" + b"x" * 20)


def _tree(part: object) -> object:
    """A parsed message as nested (container type, children), leaves as text: what python-hl7 built, exactly."""
    if isinstance(part, str):
        return part
    assert isinstance(part, list)
    return (type(part).__name__, [_tree(child) for child in part])


CORPUS = sorted((Path(__file__).parents[2] / "data" / "devices" / "hl7v2").glob("*.hl7"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_the_remembered_parse_plan_parses_exactly_as_python_hl7_does(path: Path) -> None:
    text = normalise_segments(path.read_text())
    ours, theirs = parsed.__wrapped__(text), hl7.parse(text)
    assert _tree(ours) == _tree(theirs)
    # Escapes and separators read from the message's own MSH-2, as python-hl7 reads them.
    assert (ours.esc, ours.separators) == (theirs.esc, theirs.separators)
    assert str(ours) == str(theirs)


def test_the_remembered_parse_plan_keeps_escapes_and_other_delimiters() -> None:
    text = "MSH#$~\\&#A#B\rOBX#1#ST#a$b~c$d&e\\F\\f##x\\S\\y\r"
    ours, theirs = parsed.__wrapped__(text), hl7.parse(text)
    assert _tree(ours) == _tree(theirs)
    assert ours.unescape(str(ours.segment("OBX")[5])) == theirs.unescape(str(theirs.segment("OBX")[5]))


def test_fields_remembered_from_other_messages_parse_exactly_as_python_hl7_does() -> None:
    # Every message of the corpus parsed once, so that the second time most of their fields come from the memory.
    texts = [normalise_segments(path.read_text()) for path in CORPUS]
    for text in texts:
        parsed.__wrapped__(text)
    for text in texts:
        ours, theirs = parsed.__wrapped__(text), hl7.parse(text)
        assert _tree(ours) == _tree(theirs)
        assert str(ours) == str(theirs)


def test_a_remembered_field_is_only_shared_between_messages_of_the_same_delimiters() -> None:
    default = "MSH|^~\\&|A\rOBX|1|CWE|a^b#c\r"
    other = "MSH#^~\\&#A\rOBX#1#CWE#a^b#c\r"
    for text in (default, other, default):
        assert _tree(parsed.__wrapped__(text)) == _tree(hl7.parse(text))


def test_long_fields_are_not_remembered() -> None:
    waveform = "^".join(str(n) for n in range(2000))
    text = f"MSH|^~\\&|A\rOBX|1|NA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.1.1.1|{waveform}\r"
    assert _tree(parsed.__wrapped__(text)) == _tree(hl7.parse(text))
    assert all(waveform not in fields for fields in hl7v2._FIELDS.values())
