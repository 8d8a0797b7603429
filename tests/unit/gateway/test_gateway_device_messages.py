"""Real device messages (tests/data/devices, see SOURCES.md) to FHIR R4 Observations, or refused by name.

Every Observation built is checked with fhir.resources and against HL7's FHIR
R4 JSON schema (tests/fhir_r4.py).
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from medcloud.models import CodeMapping, DeviceGatewaySpec
from medcloud_gateway import ecg, omh
from medcloud_gateway.hl7v2 import Hl7Error, MllpDecoder, frame
from medcloud_gateway.mdc import MDC_SYSTEM, UnknownUnitError, Vocabulary, ucum_of
from medcloud_gateway.normalize import to_observation
from medcloud_gateway.pcd01 import DeviceResult, is_device_message, parse_pcd01
from medcloud_gateway.readings import ReadingError
from tests.fhir_r4 import assert_valid_r4_observation

DATA = Path(__file__).parents[2] / "data" / "devices"
HL7 = DATA / "hl7v2"
LOINC = "http://loinc.org"


def read(name: str) -> str:
    return (HL7 / name).read_text()


def parse(text: str, vocabulary: Vocabulary | None = None) -> DeviceResult:
    result = parse_pcd01(text, vocabulary or Vocabulary(), local=ZoneInfo("UTC"))
    for item in result.observations:
        assert_valid_r4_observation(item.document)
    return result


def codes(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["system"], c["code"]) for c in document["code"]["coding"]]


def by_mdc(result: DeviceResult) -> dict[str, dict[str, Any]]:
    return {c["code"]: o.document for o in result.observations for c in o.document["code"]["coding"][-1:]}


# ----------------------------------------------------------------------------- IHE PCD-01 / Continua WAN


def test_pcd01_blood_pressure_is_one_panel_with_loinc_first_then_mdc() -> None:
    result = parse(read("ipf-pcd01-request.hl7"))
    assert result.errors == []
    (panel,) = [o.document for o in result.observations]
    assert codes(panel) == [(LOINC, "85354-9"), (MDC_SYSTEM, "150020")]
    assert panel["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]
    parts = {c["code"]["coding"][0]["code"]: c for c in panel["component"]}
    assert [c["code"] for c in parts["8480-6"]["code"]["coding"]] == ["8480-6", "150021"]
    assert parts["8480-6"]["valueQuantity"]["code"] == "mm[Hg]"
    assert parts["8462-4"]["valueQuantity"]["value"] == 80
    assert parts["8478-0"]["valueQuantity"]["value"] == 100
    # The device is the MDS OBX-18 (EUI-64), inherited through the containment tree; OBX-11 R is preliminary.
    assert panel["device"]["identifier"]["value"] == "0123456789ABCDEF"
    assert panel["status"] == "preliminary"
    assert panel["subject"] == {"reference": "Patient/789567"}
    assert panel["effectiveDateTime"] == "2009-08-13T09:57:15+05:00"


def test_pcd01_monitor_message_keeps_every_channel() -> None:
    # No UTC offsets in this message: the configured zone (UTC here) applies.
    result = parse(read("ipf-pcd01-request2.hl7"))
    assert result.errors == []
    found = by_mdc(result)
    assert codes(found["147842"]) == [(LOINC, "8867-4"), (LOINC, "76282-3"), (MDC_SYSTEM, "147842")]
    assert codes(found["148065"]) == [(MDC_SYSTEM, "148065")]  # no LOINC equivalent: MDC alone
    assert codes(found["150032"])[0] == (LOINC, "85354-9")
    assert codes(found["150044"]) == [(MDC_SYSTEM, "150044")]  # pulmonary artery: not a systemic BP panel
    assert "meta" not in found["150044"]
    assert {o.document["device"]["identifier"]["value"] for o in result.observations} == {"080019FFFF4F6AC0"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ipf-continua-wan-bp.hl7", {"150020"}),
        ("ipf-continua-wan-scale.hl7", {"188736", "188740", "188752"}),
        ("ipf-continua-wan-thermometer.hl7", {"188424"}),
        ("ipf-continua-wan-glucose.hl7", {"160184", "8417760", "68185", "8417800", "8417768", "8417752"}),
    ],
)
def test_continua_wan_messages_are_stored(name: str, expected: set[str]) -> None:
    result = parse(read(name))
    assert result.errors == []
    assert set(by_mdc(result)) == expected


def test_continua_units_and_codes_map_to_ucum_and_loinc() -> None:
    scale = by_mdc(parse(read("ipf-continua-wan-scale.hl7")))
    assert scale["188736"]["valueQuantity"]["code"] == "kg"
    assert codes(scale["188752"])[0] == (LOINC, "39156-5")
    assert scale["188752"]["valueQuantity"]["code"] == "kg/m2"
    thermometer = by_mdc(parse(read("ipf-continua-wan-thermometer.hl7")))["188424"]
    assert thermometer["valueQuantity"] == {
        "value": 98.6,
        "unit": "[degF]",
        "system": "http://unitsofmeasure.org",
        "code": "[degF]",
    }
    glucose = by_mdc(parse(read("ipf-continua-wan-glucose.hl7")))
    assert codes(glucose["160184"])[0] == (LOINC, "2339-0")
    assert glucose["8417752"]["valueCodeableConcept"]["coding"][0] == {
        "code": "1",
        "display": "sensor-strip-insertion(3)",
    }


def test_separators_cr_crlf_and_lf_give_the_same_observations() -> None:
    lf = read("ipf-continua-wan-scale.hl7")
    assert "\r" not in lf
    results = [parse(text) for text in (lf, lf.replace("\n", "\r\n"), lf.replace("\n", "\r"))]
    documents = [[o.document for o in r.observations] for r in results]
    assert documents[0] == documents[1] == documents[2]
    assert len(documents[0]) == 6


def test_unmapped_codes_are_refused_naming_each_and_nothing_is_kept() -> None:
    result = parse(read("ipf-pcd01-maximum-request2.hl7"))
    assert result.observations == []
    assert any(
        "MDC code 1500212 (MDC_PRESS_BLD_NONINV_SYS) is not a code this gateway maps" in e for e in result.errors
    )
    assert any(e.startswith("OBX 5 (1500232^MDC_PRESS_BLD_NONINV_MEAN^MDC)") for e in result.errors)


def test_a_waveform_without_sample_rate_is_refused_with_the_reason() -> None:
    result = parse(read("ipf-continua-wan-oximeter.hl7"))
    assert result.observations == []
    assert result.errors == [
        "OBX 3 (150452^MDC_PULS_OXIM_PLETH^MDC): waveform 150452 has no MDC_ATTR_SAMP_RATE child (OBX-4 1.0.0.2.n)"
    ]


def test_code_and_reference_id_that_disagree_are_refused() -> None:
    text = read("ipf-continua-wan-thermometer.hl7").replace("188424^MDC_TEMP_ORAL", "188424^MDC_TEMP_AXIL")
    (error,) = parse(text).errors
    assert error.endswith("OBX-3 says 188424 is MDC_TEMP_AXIL, but MDC 188424 is MDC_TEMP_ORAL")


VENDOR = (
    "MSH|^~\\&|NC_Monitor|KC261551373G|||20250610015127+0800||ORU^R01^ORU_R01|202506100151270003|P|2.6\r"
    "PID|||10006\r"
    "OBR||||1^MON_PARAM^99COMEN|||20250610015127+0800\r"
    "OBX|1|NM|327680^SPO2_SPO2^EHC|1.3.1|97|262688^MDC_DIM_PERCENT^MDC|||||F|||20250610015127+0800\r"
)


def test_vendor_codes_are_refused_until_the_operator_maps_them() -> None:
    (error,) = parse(VENDOR).errors
    assert "code 327680^SPO2_SPO2^EHC is in coding system 'EHC'" in error
    vocabulary = Vocabulary.with_mappings([CodeMapping(system="EHC", code="327680", mdc=150456)])
    # No OBX-18: the device is MSH-3.1, which must be usable as a device id.
    (error,) = parse(VENDOR, vocabulary).errors
    assert "device id 'NC_Monitor' (OBX-18.1, else MSH-3) is not" in error
    (spo2,) = parse(VENDOR.replace("NC_Monitor", "NC-Monitor"), vocabulary).observations
    assert codes(spo2.document) == [(LOINC, "2708-6"), (LOINC, "59408-5"), (MDC_SYSTEM, "150456")]
    assert spo2.document["device"]["identifier"]["value"] == "NC-Monitor"


def test_code_mappings_are_a_devicegateway_field() -> None:
    spec = DeviceGatewaySpec.model_validate(
        {
            "protocols": ["hl7v2"],
            "deviceClasses": ["spo2"],
            "recordStore": "vitals",
            "codeMappings": [{"system": "EHC", "code": "327680", "mdc": 150456}],
        }
    )
    assert spec.code_mappings == [CodeMapping(system="EHC", code="327680", mdc=150456)]


SN_CWE = (
    "MSH|^~\\&|GW^0011223344556677^EUI-64||||20240501083000+0800||ORU^R01^ORU_R01|M-9|P|2.5\r"
    "PID|1||p-1001\r"
    "OBR|1|||182777000^monitoring of patient^SCT|||20240501083000+0800\r"
    "OBX|1|SN|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|>^95|262688^MDC_DIM_PERCENT^MDC|||||F||||||||ox-1\r"
    "OBX|2|SN|151562^MDC_RESP_RATE^MDC|1.4.1.1|^12^-^16|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F||||||||ox-1\r"
    "OBX|3|CWE|8417752^MDC_GLU_METER_DEV_STATUS^MDC|1.5.1.1|3^strip \\T\\ sensor \\S\\ error^99X|||||F||||||||ox-1\r"
    "OBX|4|NM|150344^MDC_TEMP^MDC|1.2.1.1|37.1~37.2|268192^MDC_DIM_DEGC^MDC|||||F||||||||ox-1\r"
)


def test_sn_values_become_quantities_with_comparator_or_ranges_and_cwe_is_unescaped() -> None:
    result = parse(SN_CWE.replace("OBX|4", "NTE|4"), Vocabulary())
    assert result.errors == []
    found = by_mdc(result)
    assert found["150456"]["valueQuantity"]["comparator"] == ">"
    assert found["151562"]["valueRange"]["low"]["value"] == 12
    assert found["151562"]["valueRange"]["high"]["value"] == 16
    assert found["8417752"]["valueCodeableConcept"]["text"] == "strip & sensor ^ error"


def test_a_repeated_numeric_value_is_refused() -> None:
    errors = parse(SN_CWE).errors
    assert errors == ["OBX 4 (150344^MDC_TEMP^MDC): OBX-5 repeats 2 times; a NM value is one"]


def test_ecg_waveform_alerts_and_heart_rate_from_one_message() -> None:
    text = read("constructed-pcd01-ecg-waveform.hl7")
    assert is_device_message(text)
    result = parse(text)
    assert result.errors == []
    found = by_mdc(result)
    strip = found["131328"]
    assert codes(strip) == [(LOINC, "11524-6"), (MDC_SYSTEM, "131328")]
    leads = {c["code"]["coding"][0]["display"]: c["valueSampledData"] for c in strip["component"]}
    assert set(leads) == {"MDC_ECG_ELEC_POTL_I", "MDC_ECG_ELEC_POTL_II"}
    assert leads["MDC_ECG_ELEC_POTL_II"] == {
        "origin": {"value": 0, "unit": "mV", "system": "http://unitsofmeasure.org", "code": "mV"},
        "period": 2.0,
        "factor": 0.005,
        "dimensions": 1,
        "data": "-12 -8 0 14 31 20",
    }
    alert = found["196648"]
    assert alert["category"][0]["coding"][0]["code"] == "device-alert"
    assert alert["valueString"] == "V2 lead off"
    assert codes(found["147842"])[0] == (LOINC, "8867-4")


def admitted(text: str) -> str:
    """``text`` as the monitor sends it once a patient is admitted: PID-3 holds the patient's id."""
    assert "PID|||^^^Hospital^PI|" in text
    return text.replace("PID|||^^^Hospital^PI|", "PID|||p-5005^^^Hospital^PI|")


def mindray_waveforms_as_stored() -> str:
    """The capture's waveforms with a patient admitted and the pleth read as the NA it is (Mindray's own parser
    reads it so): every OBX of it is then stored."""
    waveforms = read("mindray_hl7_pipeline-oru-r01-ecg-pleth-waveforms.hl7")
    return admitted(waveforms).replace("OBX|5|NM|150452", "OBX|5|NA|150452")


def test_a_mindray_alarm_oru_r40_is_refused_by_its_message_type() -> None:
    alarm = read("mindray_hl7_pipeline-oru-r40-lead-off-alarm.hl7")
    assert is_device_message(alarm)
    with pytest.raises(Hl7Error, match=re.escape("message type ORU^R40 is not ORU^R01")):
        parse(alarm)


def test_a_mindray_waveform_message_without_an_admitted_patient_is_refused_naming_pid_3() -> None:
    waveforms = read("mindray_hl7_pipeline-oru-r01-ecg-pleth-waveforms.hl7")
    with pytest.raises(Hl7Error, match="no PID-3 patient identifier"):
        parse(waveforms)


def test_a_mindray_pleth_sent_as_nm_with_samples_is_refused_naming_the_obx() -> None:
    waveforms = read("mindray_hl7_pipeline-oru-r01-ecg-pleth-waveforms.hl7")
    result = parse(admitted(waveforms))
    assert result.observations == []
    assert result.errors == [
        "OBX 5 (150452^MDC_PULS_OXIM_PLETH^MDC): OBX-2 is NM, but OBX-5 has 58 components: a waveform is NA or MA"
    ]


def test_a_mindray_ecg_lead_becomes_sampled_data_with_its_rate_resolution_and_inop_alert() -> None:
    result = parse(mindray_waveforms_as_stored())
    assert result.errors == []
    strip = by_mdc(result)["131328"]
    assert codes(strip) == [(LOINC, "11524-6"), (MDC_SYSTEM, "131328")]
    (lead,) = strip["component"]
    assert lead["code"]["coding"] == [{"system": MDC_SYSTEM, "code": "131329", "display": "MDC_ECG_ELEC_POTL_I"}]
    data = lead["valueSampledData"]
    samples = data.pop("data").split(" ")
    # 500 samples at MDC_ATTR_SAMP_RATE 500 MDC_DIM_HZ: one second; MDC_ATTR_NU_MSMT_RES 0.001221 mV per step.
    assert (len(samples), samples[:4], samples[-1]) == (500, ["80", "88", "92", "96"], "136")
    assert data == {
        "origin": {"value": 0, "unit": "mV", "system": "http://unitsofmeasure.org", "code": "mV"},
        "period": 2.0,
        "factor": 0.001221,
        "dimensions": 1,
    }
    # OBX-18 as EUI-64, OBX-11 R, the time OBR-7's with Mindray's undotted milliseconds.
    assert strip["device"]["identifier"]["value"] == "00A037000000"
    assert strip["status"] == "preliminary"
    assert strip["effectiveDateTime"] == "2026-01-24T13:15:39+08:00"
    assert by_mdc(result)["150452"]["valueSampledData"]["period"] == pytest.approx(1000 / 60)
    # Each channel's MDC_EVT_INOP 32767 (lead off, as the capture's README reads it) is a device alert as sent.
    alerts = [o.document for o in result.observations if o.document["code"]["coding"][0]["code"] == "196660"]
    assert [a["valueString"] for a in alerts] == ["32767", "32767"]
    assert {a["category"][0]["coding"][0]["code"] for a in alerts} == {"device-alert"}


def test_a_waveform_inop_of_zero_says_the_channel_works_and_stores_nothing() -> None:
    text = mindray_waveforms_as_stored()
    zero = text.replace("1.7.6.131329.3|32767|", "1.7.6.131329.3|0|")
    assert zero != text
    alerts = [o for o in parse(zero).observations if o.document["code"]["coding"][0]["code"] == "196660"]
    assert len(alerts) == 1  # the pleth's 32767 only


def test_a_sample_rate_in_a_unit_that_is_not_per_second_is_refused() -> None:
    text = mindray_waveforms_as_stored().replace("|500|264640^MDC_DIM_HZ^MDC|", "|500|264320^MDC_DIM_SEC^MDC|")
    (error,) = parse(text).errors
    assert error == ("OBX 1 (131329^MDC_ECG_ELEC_POTL_I^MDC): unit s is not one of /s, Hz for MDC_ATTR_SAMP_RATE")


def test_lead_numbers_that_contradict_their_reference_ids_are_refused_naming_both() -> None:
    result = parse(read("icu-heart-mindray-egateway-dummy-waveform.hl7"))
    assert result.observations == []
    mismatches = [e for e in result.errors if "OBX-3 says" in e]
    assert mismatches[0] == (
        "OBX 1 (131330^MDC_PULS_OXIM_PLETH^MDC): "
        "OBX-3 says 131330 is MDC_PULS_OXIM_PLETH, but MDC 131330 is MDC_ECG_ELEC_POTL_II"
    )
    # The leads are numbered from 131310 in this published example; IEEE 11073-10101 numbers them from 131329.
    expected = {"I": 131329, "II": 131330, "III": 131389, "AVR": 131390, "AVL": 131391, "AVF": 131392}
    for error, (lead, code) in zip(mismatches[1:], expected.items(), strict=True):
        assert error.endswith(f"but MDC_ECG_ELEC_POTL_{lead} is MDC {code}"), error
    # V1 (131331) is numbered right: that OBX fails only for the sender's id, MSH-3 'Mindray_eGateway'.
    assert any(
        e.startswith("OBX 29 (131331^MDC_ECG_ELEC_POTL_V1^MDC): device id 'Mindray_eGateway'") for e in result.errors
    )


def test_a_unit_whose_mdc_code_and_reference_id_disagree_is_refused() -> None:
    # OBX 3 of the icu-heart example: the resolution of a pleth in "266418^MDC_DIM_PERCENT" (266418 is millivolts).
    with pytest.raises(UnknownUnitError, match="MDC 266418 is MDC_DIM_MILLI_VOLT, but MDC_DIM_PERCENT is 262688"):
        ucum_of("266418", "MDC_DIM_PERCENT", "MDC")
    assert ucum_of("266418", "MDC_DIM_MILLI_VOLT", "MDC") == "mV"


def test_several_messages_in_one_mllp_stream_split_whatever_the_chunks() -> None:
    messages = [read(n).replace("\n", "\r") for n in ("ipf-pcd01-request.hl7", "ipf-continua-wan-scale.hl7")]
    stream = b"".join(frame(m) for m in messages)
    decoder = MllpDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out.extend(decoder.feed(stream[i : i + 7]))
    assert [m.decode() for m in out] == messages


# ----------------------------------------------------------------------------- ECG as JSON

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def strip_payload(seconds: int = 10, rate: int = 500) -> dict[str, Any]:
    samples = seconds * rate
    return {
        "deviceId": "ecg-3",
        "patient": "Patient/p-1001",
        "time": "2024-05-01T08:30:00+08:00",
        "waveform": {
            "samplesPerSecond": rate,
            "unit": "uV",
            "factor": 2.5,
            "leads": {lead: [((i * 7 + n) % 400) - 200 for i in range(samples)] for n, lead in enumerate(LEADS)},
        },
    }


def test_a_12_lead_10_s_500_hz_strip_is_one_observation_in_bounded_memory() -> None:
    payload = strip_payload()
    body = json.dumps(payload)
    tracemalloc.start()
    try:
        item = ecg.to_observation(json.loads(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_valid_r4_observation(item.document)
    components = item.document["component"]
    assert [c["code"]["coding"][0]["code"] for c in components][:3] == ["131329", "131330", "131389"]
    assert all(len(c["valueSampledData"]["data"].split(" ")) == 5000 for c in components)
    assert components[0]["valueSampledData"]["period"] == 2.0
    # 60,000 samples (~300 KB of JSON): the whole conversion stays within a small multiple of that.
    assert peak < 40 * len(body), (peak, len(body))


def test_ecg_strips_too_long_or_with_unknown_leads_are_refused() -> None:
    with pytest.raises(ReadingError, match="more than the 120000"):
        ecg.to_observation(strip_payload(seconds=11, rate=1000))
    payload = strip_payload(seconds=1)
    payload["waveform"]["leads"]["V7"] = payload["waveform"]["leads"].pop("V6")
    with pytest.raises(ReadingError, match="ECG lead 'V7' is not one of"):
        ecg.to_observation(payload)
    with pytest.raises(ReadingError, match="does not match the sending device"):
        ecg.to_observation(strip_payload(seconds=1), device_id="ecg-4")


# ----------------------------------------------------------------------------- Open mHealth


def data_point(file: Path) -> dict[str, Any]:
    match = re.match(r"(.+)-(\d\.\d)-", file.name)
    assert match
    return {
        "patient": "Patient/p-2002",
        "deviceId": "phone-7",
        "dataPoint": {
            "header": {
                "uuid": "5c0b1f3e-8d44-4a8e-9c3a-3f7f4e5f6a01",
                "schema_id": {"namespace": "omh", "name": match.group(1), "version": match.group(2)},
                "source_creation_date_time": "2024-05-01T08:30:00+08:00",
            },
            "body": json.loads(file.read_text()),
        },
    }


STORED = {
    "blood-pressure-4.0-blood-pressure-only.json": "85354-9",
    "heart-rate-2.0-with-temporal-relationship-to-sleep.json": "8867-4",
    "oxygen-saturation-2.0-saturation-only.json": "2708-6",
    "body-temperature-4.0-valid-temperature.json": "8310-5",
    "respiratory-rate-2.0-with-temporal-relationship-to-physical-activity.json": "9279-1",
}
REFUSED = {
    "blood-pressure-4.0-invalid-unit.json": "at systolic_blood_pressure/unit: 'mmH' is not one of ['mmHg']",
    "body-weight-3.0-invalid-unit.json": "at body_weight/unit: 'km' is not one of",
    "body-weight-3.0-with-descriptive-statistic.json": "an aggregate is not a reading",
    "blood-glucose-4.0-with-everything.json": "an aggregate is not a reading",
}


@pytest.mark.parametrize(("name", "loinc"), sorted(STORED.items()))
def test_open_mhealth_data_points_are_validated_and_normalised(name: str, loinc: str) -> None:
    reading = omh.to_reading(data_point(DATA / "omh" / name))
    document = to_observation(reading)
    assert_valid_r4_observation(document)
    assert document["code"]["coding"][0]["code"] == loinc
    assert document["device"]["identifier"]["value"] == "phone-7"


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSED.items()))
def test_open_mhealth_data_points_the_schema_or_the_gateway_refuses(name: str, reason: str) -> None:
    with pytest.raises(ReadingError, match=re.escape(reason)):
        omh.to_reading(data_point(DATA / "omh" / name))


def test_open_mhealth_unknown_schema_and_bad_header_are_refused() -> None:
    point = data_point(DATA / "omh" / "heart-rate-2.0-with-temporal-relationship-to-sleep.json")
    point["dataPoint"]["header"]["schema_id"]["version"] = "9.9"
    with pytest.raises(ReadingError, match=re.escape("schema omh:heart-rate:9.9 is not one this gateway reads")):
        omh.to_reading(point)
    del point["dataPoint"]["header"]["uuid"]
    with pytest.raises(ReadingError, match="data point does not match its Open mHealth schema"):
        omh.to_reading(point)


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"])
def test_the_same_pcd01_content_reads_alike_from_v2_3_to_v2_6(version: str) -> None:
    text = read("ipf-pcd01-request.hl7").replace("|P|2.6|", f"|P|{version}|")
    assert f"|P|{version}|" in text
    (panel,) = parse(text).observations
    assert codes(panel.document) == [(LOINC, "85354-9"), (MDC_SYSTEM, "150020")]
