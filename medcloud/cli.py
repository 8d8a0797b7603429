"""The `medcloud` command: one entry point, one sub-command group per concern."""

from __future__ import annotations

import typer

from medcloud.commands import api, crds, dev, onboard, records
from medcloud.commands import operator as operator_command
from medcloud_gateway import command as gateway_command

app = typer.Typer(
    name="medcloud",
    help="MedCloud: control plane of a city's private medical cloud.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(crds.app, name="crds")
app.add_typer(records.app, name="records")
app.command("api")(api.serve)
app.command("onboard")(onboard.run)
app.command("operator")(operator_command.run)
app.command("gateway")(gateway_command.run)


if __name__ == "__main__":  # pragma: no cover
    app()
