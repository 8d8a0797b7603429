"""Multi-lead ECG strips sent as JSON (HTTPS, MQTT) to one FHIR Observation, a SampledData per lead (pure).

The payload::

    {"deviceId": "ecg-3", "patient": "Patient/p-1", "time": "2024-05-01T08:30:00+08:00",
     "waveform": {"samplesPerSecond": 500, "unit": "uV", "factor": 1,
                  "leads": {"I": [12, 15, ...], "II": [...], ..., "V6": [...]}}}

``time`` is the first sample's instant; each lead is a list of numbers in
``unit`` (UCUM, after ``factor``); leads are the 12 standard ones, coded
MDC_ECG_ELEC_POTL_<lead> as IHE PCD does. At most :data:`MAX_SAMPLES` samples:
a 12-lead, 10 s strip at 1 kHz, so memory per strip is bounded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from medcloud.models import DeviceClass
from medcloud_gateway.device_fhir import Context, DeviceObservation, concept, observation, sampled_data
from medcloud_gateway.mdc import ECG_ELEC_POTL, EKG_STUDY, lead_code
from medcloud_gateway.pcd01 import MAX_SAMPLES
from medcloud_gateway.readings import DeviceId, PatientReference, ReadingError, claim_device, describe


class Waveform(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    samples_per_second: Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)]
    unit: Annotated[str, StringConstraints(pattern=r"^(V|mV|uV)$")]
    factor: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    leads: dict[str, list[float]] = Field(min_length=1, max_length=12)


class EcgStrip(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    device_id: DeviceId
    patient: PatientReference
    time: AwareDatetime
    waveform: Waveform


def _data(samples: list[float]) -> list[str]:
    out = []
    for sample in samples:
        if not math.isfinite(sample):
            raise ReadingError(f"sample {sample!r} is not finite")
        out.append(str(int(sample)) if sample.is_integer() else repr(sample))
    return out


def to_observation(payload: Mapping[str, Any], *, device_id: str | None = None) -> DeviceObservation:
    """The strip as one Observation (LOINC 11524-6, MDC 131328) with a component per lead."""
    try:
        strip = EcgStrip.model_validate(claim_device(payload, device_id))
    except ValidationError as exc:
        raise ReadingError(describe(exc)) from None
    waveform = strip.waveform
    total = sum(len(samples) for samples in waveform.leads.values())
    if total > MAX_SAMPLES:
        raise ReadingError(f"{total} samples: more than the {MAX_SAMPLES} one strip may carry")
    components = []
    for name, samples in waveform.leads.items():
        try:
            code = lead_code(name)
        except KeyError as exc:
            raise ReadingError(str(exc.args[0])) from None
        if not samples:
            raise ReadingError(f"lead {name} has no samples")
        data = sampled_data(
            _data(samples), period_ms=1000.0 / waveform.samples_per_second, unit=waveform.unit, factor=waveform.factor
        )
        components.append({"code": concept([code]), "valueSampledData": data})
    context = Context(strip.patient, strip.device_id, strip.time)
    return observation(
        context,
        f"{ECG_ELEC_POTL.code}\njson",
        [EKG_STUDY, ECG_ELEC_POTL],
        category_name="procedure",
        profile=None,
        components=components,
        classes=frozenset({DeviceClass.ECG}),
    )
