"""`medcloud exchange`: run a Consortium's exchange (FHIR R4, IHE MHD) under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def run(
    consortium: Annotated[
        str | None, typer.Option(help="The Consortium it serves [env MEDCLOUD_EXCHANGE_CONSORTIUM].")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [env MEDCLOUD_EXCHANGE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env MEDCLOUD_EXCHANGE_PORT; default 8090].")] = None,
) -> None:
    """Run the consortium exchange; every other setting is a MEDCLOUD_EXCHANGE_* variable (docs/exchange.md)."""
    import uvicorn

    from medcloud_exchange.app import create_app
    from medcloud_exchange.settings import ExchangeSettings

    overrides = {k: v for k, v in {"consortium": consortium, "host": host, "port": port}.items() if v is not None}
    settings = ExchangeSettings(**overrides)  # type: ignore[arg-type]  # pydantic-settings merges env and overrides
    typer.echo(f"MedCloud exchange of {settings.consortium} on http://{settings.host}:{settings.port}/fhir", err=True)
    # No access log: ITI-67 query strings carry patient identifiers.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False)
