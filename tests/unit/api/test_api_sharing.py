"""What each consortium member shares with whom, from the example alliance (no cluster)."""

from __future__ import annotations

from pathlib import Path

import yaml

from medcloud_api.sharing import member_flows

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "consortium.yaml"


def flows(member: str, direction: int) -> dict[str, list[str]]:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    return {f.category: f.hospitals for f in member_flows(spec)[member][direction]}


def test_a_township_refers_up_and_sends_device_data_to_the_city() -> None:
    shares = flows("township-maple", 0)
    assert shares["referrals"] == ["city-general", "county-people"]
    assert shares["device-data"] == ["city-general"]
    assert shares["emr"] == [
        "city-general",
        "community-eastgate",
        "county-people",
        "village-willow",
    ], "* expands to the others"
    assert "imaging" not in shares


def test_the_city_hospital_receives_device_data_from_the_clinics_and_never_from_itself() -> None:
    receives = flows("city-general", 1)
    assert receives["device-data"] == ["community-eastgate", "township-maple"]
    assert "city-general" not in receives["emr"]


def test_consent_is_carried_per_flow() -> None:
    spec = {
        "members": ["a", "b"],
        "sharing": [{"category": "emr", "from": ["a"], "to": ["b"], "requireConsent": False}],
    }
    ((flow,), ()) = member_flows(spec)["a"]
    assert (flow.category, flow.hospitals, flow.require_consent) == ("emr", ["b"], False)
    assert member_flows(spec)["b"][1][0].hospitals == ["a"]


def test_names_outside_the_members_are_ignored() -> None:
    spec = {"members": ["a"], "sharing": [{"category": "emr", "from": ["a"], "to": ["stranger"]}]}
    assert member_flows(spec) == {"a": ([], [])}


def test_the_village_clinic_refers_up_to_the_hospitals_only() -> None:
    shares = flows("village-willow", 0)
    assert shares["referrals"] == ["city-general", "county-people"]
    assert "device-data" not in shares
    assert "village-willow" in flows("county-people", 0)["referrals"], "the county refers down to it"
