"""`medcloud app <name>`: the catalog apps that are MedCloud's own code (docs/catalog.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from medcloud.models import CatalogApp

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


def _run_workflow_app(name: CatalogApp) -> None:
    """One of the five workflow apps: its FHIR facade and its job (docs/apps/); MEDCLOUD_* settings."""
    import uvicorn

    from medcloud_exchange.apps.catalog import APPS
    from medcloud_exchange.apps.facade import create_facade
    from medcloud_exchange.apps.settings import AppSettings

    settings = AppSettings(app=name)  # the rest from the environment
    typer.echo(f"MedCloud {name.value} of {settings.hospital} on http://{settings.host}:{settings.http_port}", err=True)
    # No access log: query strings carry patient identifiers.
    uvicorn.run(create_facade(settings, APPS[name]), host=settings.host, port=settings.http_port, access_log=False)


def _register_workflow_apps() -> None:
    from medcloud_exchange.apps.catalog import APPS

    def command_of(name: CatalogApp) -> Callable[[], None]:
        def run() -> None:
            _run_workflow_app(name)

        return run

    for name in APPS:
        app.command(name.value, help=f"The {name.value} app for a hospital (docs/apps/{name.value}.md).")(
            command_of(name)
        )


_register_workflow_apps()
