"""MedCloud's Kopf operator: turns MedCloud custom resources into governed tenants.

The package is imported as ``medcloud_operator`` (its folder is ``operator/``):
a top-level ``operator`` module would shadow the standard library's.
"""

from medcloud.tenancy.labels import OPERATOR_NAME

__all__ = ["OPERATOR_NAME"]
