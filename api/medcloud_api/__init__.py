"""MedCloud's control API: onboard hospitals and watch them come up, backed by the cluster's own auth.

The package is imported as ``medcloud_api`` (its folder is ``api/``). It keeps
no state of its own: every read and write goes to MedCloud's custom resources,
so ``kubectl`` and the API always agree.
"""

FIELD_MANAGER = "medcloud-api"
"""Field manager and ``app.kubernetes.io/created-by`` value of everything the API writes."""
