"""The example alliance's clinical scenario, as a driver the tests, the docs and ``medcloud demo`` share."""
