"""The onboarding annotation: what the API writes is what the operator reads back."""

from __future__ import annotations

import pytest

from medcloud.tenancy import onboarding


def test_the_annotation_round_trips_in_a_stable_order() -> None:
    children = [("AppInstance", "referrals"), ("RecordStore", "emr"), ("RecordStore", "archive")]
    value = onboarding.annotation_value(children)
    assert value == '{"AppInstance":["referrals"],"RecordStore":["archive","emr"]}'
    read = onboarding.intended({onboarding.ANNOTATION: value})
    assert read == [("RecordStore", "archive"), ("RecordStore", "emr"), ("AppInstance", "referrals")]


def test_no_annotation_means_no_unfinished_onboarding_and_a_garbled_one_blocks_nothing() -> None:
    assert onboarding.intended(None) is None
    assert onboarding.intended({"other": "x"}) is None
    assert onboarding.intended({onboarding.ANNOTATION: "{not json"}) == []
    assert onboarding.intended({onboarding.ANNOTATION: '{"RecordStore": "emr"}'}) == []


def test_only_hospital_child_kinds_are_written() -> None:
    with pytest.raises(ValueError, match="not a hospital child kind"):
        onboarding.annotation_value([("Hospital", "a")])


def test_missing_keeps_the_requested_order() -> None:
    wanted = [("RecordStore", "emr"), ("DeviceGateway", "wards"), ("AppInstance", "x")]
    assert onboarding.missing(wanted, [("DeviceGateway", "wards")]) == [("RecordStore", "emr"), ("AppInstance", "x")]
    assert onboarding.describe(onboarding.missing(wanted, [])) == "RecordStore emr, DeviceGateway wards, AppInstance x"
