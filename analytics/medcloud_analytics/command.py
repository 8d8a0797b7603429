"""`medcloud analytics`: load the exchange's de-identified export into the lake, print the indicators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Analytics over the de-identified export (docs/analytics.md).", no_args_is_help=True)

Endpoint = Annotated[str, typer.Option(envvar="MEDCLOUD_ANALYTICS_ENDPOINT", help="MinIO host:port of the lake.")]
Bucket = Annotated[str, typer.Option(envvar="MEDCLOUD_ANALYTICS_BUCKET", help="The analytics bucket.")]
AccessKey = Annotated[str, typer.Option(envvar="MEDCLOUD_ANALYTICS_ACCESS_KEY", help="The analytics user's key.")]
SecretKey = Annotated[str, typer.Option(envvar="MEDCLOUD_ANALYTICS_SECRET_KEY", help="Its secret.", show_default=False)]
Secure = Annotated[bool, typer.Option(envvar="MEDCLOUD_ANALYTICS_SECURE", help="TLS to MinIO.")]


def _tiers(values: list[str]) -> dict[str, str]:
    tiers = {}
    for value in values:
        name, sep, tier = value.partition("=")
        if not sep or not name or not tier:
            raise typer.BadParameter(f"--tier takes hospital=tier, got {value!r}")
        tiers[name] = tier
    return tiers


@app.command("indicators")
def indicators(
    endpoint: Endpoint,
    bucket: Bucket,
    access_key: AccessKey,
    secret_key: SecretKey,
    secure: Secure = False,
    tier: Annotated[
        list[str] | None, typer.Option(help="A member's tier, hospital=tier (Hospital spec.tier); repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print every indicator, cells under five patients suppressed."""
    from medcloud_analytics.indicators import compute_all
    from medcloud_analytics.lake import Lake, connect
    from medcloud_analytics.report import report

    cells = compute_all(connect(Lake(endpoint, bucket, access_key, secret_key, secure)), _tiers(tier or []))
    typer.echo(json.dumps(cells, indent=2, default=str) if as_json else report(cells))


@app.command("load")
def load(
    endpoint: Endpoint,
    bucket: Bucket,
    access_key: AccessKey,
    secret_key: SecretKey,
    exchange: Annotated[str, typer.Option(envvar="MEDCLOUD_EXCHANGE_URL", help="The exchange's base URL.")],
    token_file: Annotated[
        Path, typer.Option(help="The commission's service account token (audience medcloud-exchange).")
    ],
    practitioner: Annotated[str, typer.Option(help="Who the export is for (X-MedCloud-Practitioner).")],
    secure: Secure = False,
    since: Annotated[str | None, typer.Option(help="Only what changed after this instant (_since).")] = None,
) -> None:
    """Export from the exchange (de-identified there) and write it into the lake as one batch."""
    import httpx

    from medcloud_analytics.ingest import BulkClient
    from medcloud_analytics.ingest import load as load_export
    from medcloud_analytics.lake import Lake

    token = token_file.read_text(encoding="utf-8").strip()
    with httpx.Client(base_url=exchange, timeout=120) as http:
        export = BulkClient(http, token, practitioner).export(since=since)
    rows = load_export(Lake(endpoint, bucket, access_key, secret_key, secure), export)
    typer.echo(f"loaded {rows} resources as batch {export.batch} (transaction time {export.transaction_time})")


@app.command("publish")
def publish(
    endpoint: Endpoint,
    bucket: Bucket,
    access_key: AccessKey,
    secret_key: SecretKey,
    secure: Secure = False,
    tier: Annotated[
        list[str] | None, typer.Option(help="A member's tier, hospital=tier (Hospital spec.tier); repeatable.")
    ] = None,
) -> None:
    """Write the suppressed indicators as the dashboard's charts (dashboard/indicators.json) for the API."""
    from datetime import UTC, datetime

    from medcloud_analytics.dashboard import document
    from medcloud_analytics.dashboard import publish as publish_document
    from medcloud_analytics.indicators import compute_all
    from medcloud_analytics.lake import Lake, connect

    lake = Lake(endpoint, bucket, access_key, secret_key, secure)
    cells = compute_all(connect(lake), _tiers(tier or []))
    key = publish_document(lake, document(cells, datetime.now(UTC).isoformat(timespec="seconds")))
    typer.echo(f"published s3://{bucket}/{key}")
