"""``python -m medcloud_operator``: the same as ``medcloud operator`` (the container's entry point)."""

from medcloud_operator.command import app

app(prog_name="medcloud-operator")
