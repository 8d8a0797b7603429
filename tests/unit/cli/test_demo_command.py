"""`medcloud demo scenario`: its options and the driver's pure parts (no server; the scenario itself runs in
tests/integration/test_workflows.py against the real exchange)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from medcloud_cli.commands.demo import parse_tokens
from medcloud_cli.demo.scenario import EMR_SHARING, Cast, ScenarioStepError, app_desks, readers_in
from medcloud_cli.main import app

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_tokens_are_hospital_equals_file(tmp_path: Path) -> None:
    (tmp_path / "county").write_text("tok-county\n")
    assert parse_tokens([f"county-people={tmp_path / 'county'}"]) == {"county-people": "tok-county"}
    with pytest.raises(typer.BadParameter, match="HOSPITAL=FILE"):
        parse_tokens(["county-people"])


def test_a_member_without_a_token_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    (tmp_path / "village").write_text("tok")
    # Port 9 (discard) on loopback: the command must stop before it sends anything.
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "scenario",
            "--exchange-url",
            "http://127.0.0.1:9",
            "--token",
            f"village-willow={tmp_path / 'village'}",
        ],
    )
    assert result.exit_code == 2
    assert "no token for city-general, community-eastgate, county-people" in result.output


def test_the_cast_is_the_examples_village_county_city_and_community() -> None:
    tiers = {}
    for path in EXAMPLES.glob("hospital-*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Hospital":
                tiers[doc["metadata"]["name"]] = doc["spec"]["tier"]
    cast = Cast.of_examples()
    assert [tiers[h] for h in (cast.village, cast.county, cast.city, cast.community)] == [
        "village",
        "county",
        "city",
        "community",
    ]
    assert Cast.of_examples(lambda n: f"{n}-x").village == "village-willow-x"


def test_the_disclosure_names_successful_readers_only() -> None:
    def event(who: str, code: str, outcome: str = "0") -> dict[str, object]:
        return {"subtype": [{"code": code}], "outcome": outcome, "agent": [{"who": {"reference": who}}]}

    events = [
        event("Organization/county", "read"),
        event("Organization/city", "search-type"),
        event("Organization/village", "create"),
        event("Organization/community", "read", outcome="8"),
        event("Practitioner/dr-li", "read"),
    ]
    assert readers_in(events) == {"county", "city"}


def test_app_desks_send_each_app_to_its_facade_and_emr_sharing_to_the_exchange() -> None:
    direct_client = httpx.Client(base_url="http://exchange.invalid")
    desk, close = app_desks({("village", "referrals"): "http://referrals.invalid"}, lambda hospital, app: direct_client)
    try:
        referrals = desk("village", "referrals")
        assert str(referrals.base_url) == "http://referrals.invalid"
        assert "Authorization" not in referrals.headers  # the app holds its own account's token
        assert referrals.headers["X-MedCloud-Purpose-Of-Use"] == "TREAT"
        assert desk("village", "referrals") is referrals
        assert desk("village", EMR_SHARING) is direct_client
        with pytest.raises(ScenarioStepError, match="village runs no appointments app"):
            desk("village", "appointments")
    finally:
        close()
        direct_client.close()
