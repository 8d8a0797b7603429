"""What the analytics integration tests share: ``medcloud analytics`` run against a lake."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from medcloud_analytics.lake import Lake
from medcloud_cli.main import app
from tests.analytics_activity import TIERS


def analytics_cli(lake: Lake, command: str, *args: str) -> Result:
    """``medcloud analytics COMMAND`` with the members' tiers, reaching ``lake`` by the environment as a
    deployment does (``MEDCLOUD_ANALYTICS_*``), with the lake's own key."""
    env = {
        "MEDCLOUD_ANALYTICS_ENDPOINT": lake.endpoint,
        "MEDCLOUD_ANALYTICS_BUCKET": lake.bucket,
        "MEDCLOUD_ANALYTICS_ACCESS_KEY": lake.access_key,
        "MEDCLOUD_ANALYTICS_SECRET_KEY": lake.secret_key,
    }
    tiers = [arg for name, tier in TIERS.items() for arg in ("--tier", f"{name}={tier}")]
    return CliRunner().invoke(app, ["analytics", command, *args, *tiers], env=env)
