"""``python -m medcloud_operator``: the same as ``medcloud operator`` (the container's entry point)."""

from medcloud.commands.operator import app

app(prog_name="medcloud-operator")
