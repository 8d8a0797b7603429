"""Catalog apps with MedCloud's own code, run from MedCloud's image as ``medcloud app <name>`` (docs/catalog.md)."""
