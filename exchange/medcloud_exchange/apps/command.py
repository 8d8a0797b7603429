"""`medcloud app <name>`: the catalog apps that are MedCloud's own code (docs/catalog.md)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Run a catalog app that is MedCloud's own code (the operator runs it from MedCloud's image).")


@app.command("emr-sharing")
def emr_sharing(
    once: Annotated[bool, typer.Option(help="Publish the new documents once and exit (no facade).")] = False,
) -> None:
    """The hospital-side connector of the consortium exchange (docs/emr-sharing.md); MEDCLOUD_EMR_SHARING_* settings."""
    import httpx
    import uvicorn

    from medcloud_exchange.apps.emr_sharing import EmrSharingSettings, Publisher, create_facade, records_of

    settings = EmrSharingSettings()

    with httpx.Client(base_url=settings.exchange_url.rstrip("/"), timeout=settings.timeout_seconds) as exchange:
        publisher = Publisher(records_of(settings), exchange, settings.exchange_token_file)
        if once:
            result = publisher.run_once()
            typer.echo(
                f"published {len(result.published)}, refused {len(result.refused)}, "
                f"already published {result.skipped}, failed {result.failed}",
                err=True,
            )
            raise typer.Exit(1 if result.failed else 0)
        # No access log: query strings carry patient identifiers.
        uvicorn.run(create_facade(settings, publisher), host=settings.host, port=settings.port, access_log=False)
