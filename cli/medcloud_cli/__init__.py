"""The `medcloud` command line and the local development cluster: the roof that may import every package.

The package is imported as ``medcloud_cli`` (its folder is ``cli/``). Nothing
but the tests imports it.
"""
