"""Open mHealth data points from phones and wearable hubs, validated against the published schemas (pure).

A device sends ``{"patient": "Patient/<id>", "deviceId": "<id>", "dataPoint": {...}}``
where ``dataPoint`` is an IEEE 1752 / Open mHealth data point (``header`` with
``schema_id``, and ``body``). The body is validated with jsonschema against the
schema its header names, from the copies in ``omh_schemas/`` (see
``omh_schemas/PROVENANCE.md``), then becomes a :class:`Reading` and is
normalised like any other. What the schemas allow but a reading is not (an
aggregate with ``descriptive_statistic``, a ``time_interval`` instead of an
instant) is refused, naming why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from medcloud_gateway.readings import Kind, Reading, ReadingError, parse_reading

SCHEMAS = Path(__file__).with_name("omh_schemas")
_SEARCH = ("utility", "metadata", "data")


def _quantity(body: Mapping[str, Any], key: str) -> tuple[float, str]:
    item = body[key]
    return float(item["value"]), str(item["unit"])


def _single(kind: Kind, key: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def convert(body: Mapping[str, Any]) -> dict[str, Any]:
        value, unit = _quantity(body, key)
        return {"kind": kind, "value": value, "unit": unit}

    return convert


def _pressure(body: Mapping[str, Any]) -> dict[str, Any]:
    systolic, unit = _quantity(body, "systolic_blood_pressure")
    diastolic, _ = _quantity(body, "diastolic_blood_pressure")
    return {"kind": Kind.BLOOD_PRESSURE, "systolic": systolic, "diastolic": diastolic, "unit": unit}


# (schema name, version) -> body -> reading fields. Only versions whose schema ships in omh_schemas/.
CONVERTERS: dict[tuple[str, str], Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    ("blood-pressure", "4.0"): _pressure,
    ("heart-rate", "2.0"): _single(Kind.HEART_RATE, "heart_rate"),
    ("body-temperature", "4.0"): _single(Kind.BODY_TEMPERATURE, "body_temperature"),
    ("oxygen-saturation", "2.0"): _single(Kind.SPO2, "oxygen_saturation"),
    ("blood-glucose", "4.0"): _single(Kind.GLUCOSE, "blood_glucose"),
    ("respiratory-rate", "2.0"): _single(Kind.RESPIRATORY_RATE, "respiratory_rate"),
    ("body-weight", "3.0"): _single(Kind.BODY_WEIGHT, "body_weight"),
}


def _retrieve(uri: str) -> Resource[Any]:
    # Schemas refer to each other by w3id.org URLs or relative names; every one we need is a local file.
    name = uri.rsplit("/", 1)[-1]
    folders = ("utility/ieee", *_SEARCH) if "ieee-1752-schema" in uri else _SEARCH
    for folder in folders:
        path = SCHEMAS / folder / name
        if path.is_file():
            return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT7)
    raise LookupError(f"Open mHealth schema {uri} is not shipped with the gateway")


@cache
def _validator(folder: str, name: str) -> Draft7Validator:
    schema = json.loads((SCHEMAS / folder / name).read_text())
    registry: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
    return Draft7Validator(schema, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)


def check(validator: Draft7Validator, instance: Any, what: str) -> None:
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise ReadingError(f"{what} does not match its Open mHealth schema at {where}: {error.message}")


def schema_of(data_point: Mapping[str, Any]) -> tuple[str, str]:
    """The (name, version) a data point's header names, once the header is valid."""
    check(_validator("metadata", "data-point-1.0.json"), data_point, "data point")
    schema_id = data_point["header"]["schema_id"]
    name, version, namespace = schema_id["name"], schema_id["version"], schema_id["namespace"]
    if namespace != "omh" or (name, version) not in CONVERTERS:
        known = ", ".join(f"omh:{n}:{v}" for n, v in sorted(CONVERTERS))
        raise ReadingError(f"schema {namespace}:{name}:{version} is not one this gateway reads (known: {known})")
    return name, version


def validate_body(name: str, version: str, body: Any) -> None:
    check(_validator("data", f"{name}-{version}.json"), body, f"{name} {version} body")


def to_reading(payload: Mapping[str, Any], *, device_id: str | None = None) -> Reading:
    """A reading from an Open mHealth envelope (``patient``, ``deviceId``, ``dataPoint``)."""
    fields = dict(payload)
    data_point = fields.pop("dataPoint")
    if not isinstance(data_point, Mapping):
        raise ReadingError("dataPoint is an object with header and body")
    name, version = schema_of(data_point)
    body = data_point["body"]
    validate_body(name, version, body)
    if "descriptive_statistic" in body:
        raise ReadingError(f"descriptive_statistic {body['descriptive_statistic']!r}: an aggregate is not a reading")
    frame = body.get("effective_time_frame", {})
    if "date_time" not in frame:
        raise ReadingError("effective_time_frame has no date_time: a reading is taken at an instant, not over time")
    reading = {**fields, **CONVERTERS[(name, version)](body), "time": frame["date_time"]}
    return parse_reading(reading, device_id=device_id)
