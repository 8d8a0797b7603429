"""Labels and annotations every MedCloud child object carries, so each can be traced to its owner.

Children are traced by labels rather than owner references on purpose: a
Hospital whose finalizer is removed by force must not make the garbage
collector cascade into deleting a tenant namespace full of medical records.
"""

from __future__ import annotations

OPERATOR_NAME = "medcloud-operator"
"""Field manager, user agent and ``app.kubernetes.io/managed-by`` value of everything the operator writes."""

MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
HOSPITAL = "medcloud.io/hospital"
TIER = "medcloud.io/tier"
CONSORTIUM = "medcloud.io/consortium"
DEVICE_GATEWAY = "medcloud.io/device-gateway"
"""On a Device (written by the control API): the DeviceGateway it sends to, so a gateway's devices are one LIST."""
NAMESPACE_NAME = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace; the only namespace label tenants cannot forge."""

TENANCY = "tenancy"
"""Component of the objects a Hospital's tenancy consists of (pruning only ever touches these)."""

OWNED_PREFIXES = ("medcloud.io/", "pod-security.kubernetes.io/")
"""Label and annotation keys under these prefixes belong to the operator on its children:
one it no longer wants is removed, so a tenant cannot keep a stale consortium label."""


def managed_selector() -> str:
    """Server-side label selector matching everything this operator manages."""
    return f"{MANAGED_BY}={OPERATOR_NAME}"


def tenancy_labels(hospital: str) -> dict[str, str]:
    """Labels of every object that makes up a Hospital's tenancy."""
    return {
        MANAGED_BY: OPERATOR_NAME,
        PART_OF: "medcloud",
        COMPONENT: TENANCY,
        HOSPITAL: hospital,
    }


def tenancy_selector(hospital: str) -> str:
    """Label selector of one Hospital's tenancy objects."""
    return f"{MANAGED_BY}={OPERATOR_NAME},{COMPONENT}={TENANCY},{HOSPITAL}={hospital}"
