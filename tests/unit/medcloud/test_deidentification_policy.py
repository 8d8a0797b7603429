"""The Consortium's de-identification policy refuses what would let a direct identifier out (pydantic side;
the CEL side runs on the API server in tests/integration/test_crds.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from medcloud.crdgen import crd_for
from medcloud.models import Consortium
from medcloud.models.deidentification import (
    DIRECT_IDENTIFIER_RE,
    DeidentificationPolicy,
    retained_identifiers,
)

BASE: dict[str, Any] = {"purposes": [{"name": "commission-indicators"}]}


def test_defaults_are_safe_harbor_with_months_and_ten_year_bands() -> None:
    policy = DeidentificationPolicy.model_validate(BASE)
    assert policy.dates == "month"
    assert policy.age_band_years == 10
    assert policy.retain == []


@pytest.mark.parametrize(
    ("retain", "refused"),
    [
        (["Patient.name"], "Patient.name"),
        (["Patient.identifier"], "Patient.identifier"),
        (["Coverage.beneficiary.identifier.value"], "Coverage.beneficiary.identifier.value"),
        (["Patient.address"], "Patient.address"),
        (["Patient.address.state", "Patient.address.line"], "Patient.address.line"),
        (["Patient.birthDate"], "Patient.birthDate"),
        (["Observation.note"], "Observation.note"),
        (["Observation.subject.display"], "Observation.subject.display"),
    ],
)
def test_a_policy_keeping_a_direct_identifier_is_refused(retain: list[str], refused: str) -> None:
    with pytest.raises(ValidationError, match=f"{re.escape(refused)} carries a direct identifier or free text"):
        DeidentificationPolicy.model_validate({**BASE, "retain": retain})


def test_state_and_country_may_be_retained() -> None:
    retain = ["Patient.address.state", "Patient.address.country"]
    assert DeidentificationPolicy.model_validate({**BASE, "retain": retain}).retain == retain
    assert retained_identifiers(retain) == []


def test_duplicate_purposes_are_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate values: a"):
        DeidentificationPolicy.model_validate({"purposes": [{"name": "a"}, {"name": "a"}]})


def test_the_crd_carries_the_same_rule_the_model_applies() -> None:
    crd = crd_for(Consortium)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    retain = schema["properties"]["spec"]["properties"]["deidentification"]["properties"]["retain"]
    (rule,) = retain["items"]["x-kubernetes-validations"]
    assert DIRECT_IDENTIFIER_RE in rule["rule"]
    assert rule["reason"] == "FieldValueForbidden"
