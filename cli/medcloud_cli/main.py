"""The `medcloud` command: one entry point, one sub-command per deployable and per concern.

The roof of the layout: it imports each deployable's own command (operator,
api, gateway, keyservice, exchange, analytics) and the local cluster; nothing imports it.
"""

from __future__ import annotations

import typer

from medcloud_analytics import command as analytics_command
from medcloud_api import command as api_command
from medcloud_cli.commands import crds, demo, dev, devices, onboard, records
from medcloud_exchange import command as exchange_command
from medcloud_exchange.apps import command as apps_command
from medcloud_gateway import command as gateway_command
from medcloud_keyservice import command as keyservice_command
from medcloud_operator import command as operator_command

app = typer.Typer(
    name="medcloud",
    help="MedCloud: control plane of a city's private medical cloud.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(crds.app, name="crds")
app.add_typer(records.app, name="records")
app.add_typer(devices.app, name="devices")
app.add_typer(apps_command.app, name="app")
app.add_typer(analytics_command.app, name="analytics")
app.add_typer(demo.app, name="demo")
app.command("api")(api_command.serve)
app.command("exchange")(exchange_command.run)
app.command("onboard")(onboard.run)
app.command("operator")(operator_command.run)
app.command("gateway")(gateway_command.run)
app.command("keyservice")(keyservice_command.run)


if __name__ == "__main__":  # pragma: no cover
    app()
