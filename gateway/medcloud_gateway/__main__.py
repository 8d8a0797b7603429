"""``python -m medcloud_gateway``: the same as ``medcloud gateway``."""

import typer

from medcloud_gateway.command import run

typer.run(run)
