"""`medcloud app <name>`: run one catalog app of MedCloud's own code for a hospital, under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from medcloud.models import CatalogApp


def run(
    name: Annotated[CatalogApp, typer.Argument(help="The catalog app.")],
    hospital: Annotated[str | None, typer.Option(help="The Hospital it acts for [env MEDCLOUD_HOSPITAL].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env MEDCLOUD_HTTP_PORT; default 8080].")] = None,
) -> None:
    """Run a catalog app; every other setting is a MEDCLOUD_* variable the operator sets (docs/apps/)."""
    import uvicorn

    from medcloud_exchange.apps.catalog import APPS
    from medcloud_exchange.apps.facade import create_facade
    from medcloud_exchange.apps.settings import AppSettings

    if name not in APPS:
        raise typer.BadParameter(f"{name.value} is not one of MedCloud's own apps ({', '.join(a.value for a in APPS)})")
    overrides = {k: v for k, v in {"app": name, "hospital": hospital, "http_port": port}.items() if v is not None}
    settings = AppSettings(**overrides)  # type: ignore[arg-type]  # pydantic-settings merges env and overrides
    typer.echo(f"MedCloud {name.value} of {settings.hospital} on http://{settings.host}:{settings.http_port}", err=True)
    # No access log: query strings carry patient identifiers.
    uvicorn.run(create_facade(settings, APPS[name]), host=settings.host, port=settings.http_port, access_log=False)
