"""`medcloud gateway`: run the device gateway with settings from the environment (see docs/gateway.md)."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer


def run() -> None:
    """Run the device gateway: MQTT, HTTPS and HL7 v2 (MLLP) readings into the RecordStore, as FHIR Observations."""
    from pydantic import ValidationError

    from medcloud_gateway.readings import describe
    from medcloud_gateway.service import build_gateway
    from medcloud_gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings()  # every required field comes from the environment
    except ValidationError as exc:
        typer.echo(f"gateway settings: {describe(exc)}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gateway = build_gateway(settings)
    except ValueError as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"MedCloud device gateway: {gateway.describe()}", err=True)
        await gateway.run(stop)

    asyncio.run(main())
