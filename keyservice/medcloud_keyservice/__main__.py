"""``python -m medcloud_keyservice``: the same as ``medcloud keyservice`` (the container's entry point)."""

from medcloud_keyservice.command import run

run()
