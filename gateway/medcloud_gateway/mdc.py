"""IEEE 11073-10101 (MDC) nomenclature the gateway understands, with its LOINC and UCUM equivalents (pure).

A term is one MDC observation code (``150456`` = ``MDC_PULS_OXIM_SAT_O2``); it
says which LOINC codes the same measurement has (none for measurements LOINC's
vital-signs set does not name), which UCUM units it may be in, its FHIR
category and vital-signs profile, and which device classes produce it. A stored
Observation codes it LOINC first (what the vital-signs profiles look for), then
MDC, as the HL7 Personal Health Device and Point-of-Care Device IGs do.

Blood pressures are families: a compound code (``150020`` non-invasive) whose
systolic, diastolic and mean are the compound + 1, + 2, + 3; they become one
panel Observation with components. Event codes (MDC partition 3,
``MDC_EVT_*``) are alerts, kept as Observations of their own category.

Codes not here are refused with the code named; an operator maps a vendor's
private codes onto these through the DeviceGateway's ``codeMappings``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from medcloud.models import CodeMapping, DeviceClass

MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
LOINC_SYSTEM = "http://loinc.org"
EVENT_PARTITION = range(3 * 65536, 4 * 65536)
"""MDC partition 3 (events and alerts): 196608 to 262143."""

_C = DeviceClass


@dataclass(frozen=True)
class Code:
    """One coding: LOINC or MDC (``system``), code and display."""

    system: str
    code: str
    display: str

    def as_fhir(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


def loinc(code: str, display: str) -> Code:
    return Code(LOINC_SYSTEM, code, display)


def mdc(code: int, reference_id: str) -> Code:
    return Code(MDC_SYSTEM, str(code), reference_id)


@dataclass(frozen=True)
class Term:
    """An MDC observation the gateway stores."""

    code: int
    reference_id: str
    units: tuple[str, ...]
    """UCUM units accepted (empty: unitless values such as coded ones)."""
    loinc: tuple[Code, ...] = ()
    category: str | None = "vital-signs"
    profile: str | None = None
    classes: frozenset[DeviceClass] = field(default_factory=frozenset)
    loinc_by_unit: Mapping[str, tuple[Code, ...]] = field(default_factory=dict)
    """Where the LOINC code depends on the unit's property (glucose: mass or moles per volume)."""

    @property
    def mdc(self) -> Code:
        return mdc(self.code, self.reference_id)

    def codings(self, unit: str | None = None) -> list[Code]:
        """LOINC first (the profiles want it there), then MDC."""
        by_unit = self.loinc_by_unit.get(unit or "", ())
        return [*(by_unit or self.loinc), self.mdc]


HEART_RATE = loinc("8867-4", "Heart rate")
SYSTOLIC = loinc("8480-6", "Systolic blood pressure")
DIASTOLIC = loinc("8462-4", "Diastolic blood pressure")
MEAN_PRESSURE = loinc("8478-0", "Mean blood pressure")
BP_PANEL = loinc("85354-9", "Blood pressure panel with all children optional")
BODY_TEMPERATURE = loinc("8310-5", "Body temperature")
EKG_STUDY = loinc("11524-6", "EKG study")
_GLUCOSE = {
    "mg/dL": (loinc("2339-0", "Glucose [Mass/volume] in Blood"),),
    "mmol/L": (loinc("15074-8", "Glucose [Moles/volume] in Blood"),),
}
_RATE_CLASSES = frozenset({_C.BLOOD_PRESSURE, _C.ECG})
_TEMPERATURE = ("Cel", "[degF]")
_TEMPERATURE_CLASSES = frozenset({_C.TEMPERATURE, _C.WEARABLE})


def _term(code: int, ref: str, units: tuple[str, ...], *codes: Code, **kw: object) -> Term:
    return Term(code, ref, units, codes, **kw)  # type: ignore[arg-type]


TERMS: dict[int, Term] = {
    t.code: t
    for t in (
        _term(
            147842,
            "MDC_ECG_HEART_RATE",
            ("/min",),
            HEART_RATE,
            loinc("76282-3", "Heart rate.beat-to-beat by EKG"),
            profile="heartrate",
            classes=frozenset({_C.ECG}),
        ),
        _term(
            149530,
            "MDC_PULS_OXIM_PULS_RATE",
            ("/min",),
            HEART_RATE,
            loinc("8889-8", "Heart rate by Pulse oximetry"),
            profile="heartrate",
            classes=frozenset({_C.SPO2, _C.WEARABLE}),
        ),
        _term(
            149546,
            "MDC_PULS_RATE_NON_INV",
            ("/min",),
            HEART_RATE,
            profile="heartrate",
            classes=frozenset({_C.BLOOD_PRESSURE}),
        ),
        _term(149522, "MDC_BLD_PULS_RATE_INV", ("/min",), HEART_RATE, profile="heartrate", classes=_RATE_CLASSES),
        _term(148065, "MDC_ECG_V_P_C_CNT", ("/min",), classes=frozenset({_C.ECG})),
        _term(148066, "MDC_ECG_V_P_C_RATE", ("/min",), classes=frozenset({_C.ECG})),
        _term(
            150456,
            "MDC_PULS_OXIM_SAT_O2",
            ("%",),
            loinc("2708-6", "Oxygen saturation in Arterial blood"),
            loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
            profile="oxygensat",
            classes=frozenset({_C.SPO2, _C.WEARABLE}),
        ),
        _term(150452, "MDC_PULS_OXIM_PLETH", ("1",), classes=frozenset({_C.SPO2, _C.WEARABLE})),
        _term(
            151562,
            "MDC_RESP_RATE",
            ("/min",),
            loinc("9279-1", "Respiratory rate"),
            profile="resprate",
            classes=frozenset({_C.WEARABLE, _C.ECG}),
        ),
        _term(150344, "MDC_TEMP", _TEMPERATURE, BODY_TEMPERATURE, profile="bodytemp", classes=_TEMPERATURE_CLASSES),
        _term(
            150364, "MDC_TEMP_BODY", _TEMPERATURE, BODY_TEMPERATURE, profile="bodytemp", classes=_TEMPERATURE_CLASSES
        ),
        _term(
            188424,
            "MDC_TEMP_ORAL",
            _TEMPERATURE,
            BODY_TEMPERATURE,
            loinc("8331-1", "Oral temperature"),
            profile="bodytemp",
            classes=_TEMPERATURE_CLASSES,
        ),
        _term(
            188496,
            "MDC_TEMP_AXIL",
            _TEMPERATURE,
            BODY_TEMPERATURE,
            loinc("8328-7", "Axillary temperature"),
            profile="bodytemp",
            classes=_TEMPERATURE_CLASSES,
        ),
        _term(
            188736,
            "MDC_MASS_BODY_ACTUAL",
            ("kg", "g", "[lb_av]"),
            loinc("29463-7", "Body weight"),
            profile="bodyweight",
            classes=frozenset({_C.WEIGHT_SCALE}),
        ),
        _term(
            188740,
            "MDC_LEN_BODY_ACTUAL",
            ("cm", "m", "[in_i]"),
            loinc("8302-2", "Body height"),
            profile="bodyheight",
            classes=frozenset({_C.WEIGHT_SCALE}),
        ),
        _term(
            188752,
            "MDC_RATIO_MASS_BODY_LEN_SQ",
            ("kg/m2",),
            loinc("39156-5", "Body mass index (BMI) [Ratio]"),
            profile="bmi",
            classes=frozenset({_C.WEIGHT_SCALE}),
        ),
        _term(
            160184,
            "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
            ("mg/dL", "mmol/L"),
            category="laboratory",
            classes=frozenset({_C.GLUCOSE}),
            loinc_by_unit=_GLUCOSE,
        ),
        # Context of a glucose measurement (ISO/IEEE 11073-10417): stored as MDC-coded observations of their own.
        _term(8417760, "MDC_CTXT_GLU_EXERCISE", ("%",), category=None, classes=frozenset({_C.GLUCOSE})),
        _term(8417768, "MDC_CTXT_GLU_CARB_BREAKFAST", ("g",), category=None, classes=frozenset({_C.GLUCOSE})),
        _term(8417800, "MDC_CTXT_MEDICATION_RAPIDACTING", ("mg",), category=None, classes=frozenset({_C.GLUCOSE})),
        _term(68185, "MDC_ATTR_TIME_PD_MSMT_ACTIVE", ("s",), category=None, classes=frozenset({_C.GLUCOSE})),
        _term(8417752, "MDC_GLU_METER_DEV_STATUS", (), category=None, classes=frozenset({_C.GLUCOSE})),
    )
}


@dataclass(frozen=True)
class PressureFamily:
    """A blood-pressure compound: its code; systolic, diastolic and mean are code + 1, + 2, + 3."""

    code: int
    reference_id: str
    systemic: bool
    """Systemic arterial pressure: it has LOINC codes and the vital-signs ``bp`` profile; pulmonary has not."""
    classes: frozenset[DeviceClass]

    def part(self, code: int) -> str | None:
        """``systolic``, ``diastolic`` or ``mean`` if ``code`` is one of this family's, else None."""
        return {self.code + 1: "systolic", self.code + 2: "diastolic", self.code + 3: "mean"}.get(code)

    def part_code(self, part: str) -> Code:
        offset, suffix = {"systolic": (1, "SYS"), "diastolic": (2, "DIA"), "mean": (3, "MEAN")}[part]
        return mdc(self.code + offset, f"{self.reference_id}_{suffix}")


PART_LOINC = {"systolic": SYSTOLIC, "diastolic": DIASTOLIC, "mean": MEAN_PRESSURE}
FAMILIES: dict[int, PressureFamily] = {
    f.code: f
    for f in (
        PressureFamily(150020, "MDC_PRESS_BLD_NONINV", True, frozenset({_C.BLOOD_PRESSURE})),
        PressureFamily(150300, "MDC_PRESS_CUFF", True, frozenset({_C.BLOOD_PRESSURE})),
        PressureFamily(150032, "MDC_PRESS_BLD_ART", True, frozenset({_C.BLOOD_PRESSURE, _C.ECG})),
        PressureFamily(150044, "MDC_PRESS_BLD_ART_PULM", False, frozenset({_C.BLOOD_PRESSURE, _C.ECG})),
    )
}


def family_of(code: int) -> tuple[PressureFamily, str] | None:
    """The pressure family and part (systolic, diastolic, mean) of ``code``, if it is one."""
    for family in FAMILIES.values():
        part = family.part(code)
        if part is not None:
            return family, part
    return None


# ECG leads, two spellings in use: MDC_ECG_LEAD_<lead> (partition 2, 131072 + the lead's term code) and
# MDC_ECG_ELEC_POTL_<lead> (the same + 256: MDC_ECG_ELEC_POTL 131328 pre-coordinated with the lead). The term codes
# are IEEE 11073-10101's as DICOM CID 3001 "ECG Lead" and CID 3688 reprint them (I 1, II 2, V1-V6 3-8, III 61,
# aVR 62, aVL 63, aVF 64) and HL7's PoCD IG ValueSet 11073MDC-metric lists them (131073 MDC_ECG_LEAD_I ...).
_LEAD_OFFSETS = {
    "I": 1,
    "II": 2,
    "V1": 3,
    "V2": 4,
    "V3": 5,
    "V4": 6,
    "V5": 7,
    "V6": 8,
    "III": 61,
    "AVR": 62,
    "AVL": 63,
    "AVF": 64,
}
_LEAD_BASE = 2 * 65536
_ELEC_POTL_BASE = _LEAD_BASE + 256
ECG_LEADS: dict[int, str] = {
    **{_LEAD_BASE + o: name for name, o in _LEAD_OFFSETS.items()},
    **{_ELEC_POTL_BASE + o: name for name, o in _LEAD_OFFSETS.items()},
}
LEAD_REFERENCE_IDS: dict[str, int] = {
    **{f"MDC_ECG_LEAD_{name}": _LEAD_BASE + o for name, o in _LEAD_OFFSETS.items()},
    **{f"MDC_ECG_ELEC_POTL_{name}": _ELEC_POTL_BASE + o for name, o in _LEAD_OFFSETS.items()},
}
"""The code of each lead reference id (upper case, as RTMMS spells them: ``MDC_ECG_ELEC_POTL_AVR``)."""
ECG_ELEC_POTL = mdc(131328, "MDC_ECG_ELEC_POTL")
"""The code of a multi-lead ECG Observation (its components are the leads)."""


def lead_code(name: str) -> Code:
    """The MDC code of lead ``name`` (``I``, ``II``, ``aVR``, ``V1``...) as MDC_ECG_ELEC_POTL_<lead>."""
    key = name.upper()
    if key not in _LEAD_OFFSETS:
        known = ", ".join({"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(n, n) for n in _LEAD_OFFSETS)
        raise KeyError(f"ECG lead {name!r} is not one of {known}")
    return mdc(_ELEC_POTL_BASE + _LEAD_OFFSETS[key], f"MDC_ECG_ELEC_POTL_{key}")


def lead_reference_id(code: int) -> str:
    """The reference id of ECG lead ``code`` (one of :data:`ECG_LEADS`) in the spelling its number belongs to."""
    prefix = "MDC_ECG_ELEC_POTL_" if code > _ELEC_POTL_BASE else "MDC_ECG_LEAD_"
    return prefix + ECG_LEADS[code]


# Attributes that describe the device or a waveform, not a measurement of the patient (IEEE 11073-20601 / IHE PCD).
DEVICE_ATTRIBUTES = frozenset({"MDC_ATTR_TIME_ABS", "MDC_TIME_SYNC_PROTOCOL", "MDC_ATTR_TIME_REL"})
WAVEFORM_ATTRIBUTES = frozenset({"MDC_ATTR_SAMP_RATE", "MDC_ATTR_NU_MSMT_RES", "MDC_ATTR_DATA_RANGE"})
INOPERATIVE = "MDC_EVT_INOP"
"""A waveform's child event (OBX-4 ``<lead>.n``): the channel's inoperative condition, 0 when it works."""
SAMPLE_RATE_UNITS = ("/s", "Hz")

# MDC units (IEEE 11073-10101 partition 4) as UCUM; matched by reference id, then by code.
UNITS: dict[str, tuple[int, str]] = {
    "MDC_DIM_MMHG": (266016, "mm[Hg]"),
    "MDC_DIM_PERCENT": (262688, "%"),
    "MDC_DIM_BEAT_PER_MIN": (264864, "/min"),
    "MDC_DIM_RESP_PER_MIN": (264928, "/min"),
    "MDC_DIM_DEGC": (268192, "Cel"),
    "MDC_DIM_FAHR": (266560, "[degF]"),
    "MDC_DIM_KILO_G": (263875, "kg"),
    "MDC_DIM_G": (263872, "g"),
    "MDC_DIM_MILLI_G": (263890, "mg"),
    "MDC_DIM_LB": (263904, "[lb_av]"),
    "MDC_DIM_CENTI_M": (263441, "cm"),
    "MDC_DIM_INCH": (263520, "[in_i]"),
    "MDC_DIM_KG_PER_M_SQ": (264096, "kg/m2"),
    "MDC_DIM_MILLI_G_PER_DL": (264274, "mg/dL"),
    "MDC_DIM_MILLI_MOLE_PER_L": (266866, "mmol/L"),
    "MDC_DIM_SEC": (264320, "s"),
    "MDC_DIM_MILLI_VOLT": (266418, "mV"),
    "MDC_DIM_MICRO_VOLT": (266419, "uV"),
    "MDC_DIM_DIMLESS": (262656, "1"),
    "MDC_DIM_PER_SEC": (264608, "/s"),
    "MDC_DIM_HZ": (264640, "Hz"),
}
_UNIT_BY_CODE = {code: ucum for code, ucum in UNITS.values()}
_UNIT_NAME_BY_CODE = {code: name for name, (code, _) in UNITS.items()}
# Device spellings seen in the field (compared without case or spaces) -> UCUM.
SPELLINGS: dict[str, str] = {
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "%": "%",
    "bpm": "/min",
    "/min": "/min",
    "1/min": "/min",
    "{beat}/min": "/min",
    "{beats}/min": "/min",
    "beats/min": "/min",
    "{breath}/min": "/min",
    "breaths/min": "/min",
    "rpm": "/min",
    "cel": "Cel",
    "°c": "Cel",
    "degc": "Cel",
    "[degf]": "[degF]",
    "°f": "[degF]",
    "degf": "[degF]",
    "kg": "kg",
    "g": "g",
    "mg": "mg",
    "lb": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "cm": "cm",
    "m": "m",
    "kg/m2": "kg/m2",
    "mg/dl": "mg/dL",
    "mmol/l": "mmol/L",
    "s": "s",
    "mv": "mV",
    "uv": "uV",
    "µv": "uV",
    "1": "1",
    "/s": "/s",
    "hz": "Hz",
}


class UnknownUnitError(LookupError):
    pass


def ucum_of(code: str, text: str, system: str) -> str:
    """The UCUM unit of an OBX-6 (``266016^MDC_DIM_MMHG^MDC``, ``mm[Hg]^mm[Hg]^UCUM``, ``mmHg``)."""
    if system.upper() == "UCUM" and code:
        return code
    if text.upper() in UNITS:
        named_code, ucum = UNITS[text.upper()]
        # Which one the device meant cannot be told (266418^MDC_DIM_PERCENT: mV or %?): refused, not guessed.
        if code.isdigit() and int(code) != named_code and int(code) in _UNIT_NAME_BY_CODE:
            raise UnknownUnitError(
                f"unit {code}^{text}: MDC {code} is {_UNIT_NAME_BY_CODE[int(code)]}, but {text} is {named_code}"
            )
        return ucum
    if code.isdigit() and int(code) in _UNIT_BY_CODE:
        return _UNIT_BY_CODE[int(code)]
    for spelling in (code, text):
        found = SPELLINGS.get("".join(spelling.split()).lower())
        if found:
            return found
    raise UnknownUnitError(f"unit {'^'.join(p for p in (code, text, system) if p)!r} is not a unit this gateway maps")


@dataclass(frozen=True)
class Vocabulary:
    """The terms of one gateway: MDC's, plus the operator's vendor-code mappings."""

    vendor: Mapping[tuple[str, str], CodeMapping] = field(default_factory=dict)

    @classmethod
    def with_mappings(cls, mappings: Iterable[CodeMapping]) -> Vocabulary:
        return cls({(m.system.upper(), m.code): m for m in mappings})

    def resolve(self, code: str, text: str, system: str) -> int | None:
        """The MDC code an OBX-3 means: MDC as sent, or a vendor code through the mapping table."""
        if system.upper() == "MDC" or (not system and text.startswith("MDC_")):
            return int(code) if code.isdigit() else None
        mapping = self.vendor.get((system.upper(), code))
        return mapping.mdc if mapping is not None else None
