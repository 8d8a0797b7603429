"""MedCloud's Kopf operator: turns MedCloud custom resources into governed tenants.

The package is imported as ``medcloud_operator`` (its folder is ``operator/``):
a top-level ``operator`` module would shadow the standard library's.
"""

OPERATOR_NAME = "medcloud-operator"
"""Field manager, user agent and ``app.kubernetes.io/managed-by`` value of everything the operator writes."""
