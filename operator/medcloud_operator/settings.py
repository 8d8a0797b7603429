"""The operator's settings, read from ``MEDCLOUD_*`` environment variables."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Everything an operator deployment may tune; each field is ``MEDCLOUD_<FIELD>`` in the environment.

    Lists and maps are JSON in the environment, e.g.
    ``MEDCLOUD_STORAGE_CIDRS='["10.20.0.0/24"]'``.
    """

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_", extra="ignore")

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (or globs like hospital-*) whose namespaced objects are served; empty: all.",
    )
    operator_namespace: str = Field(
        default="medcloud-system",
        description="Where the operator runs and where tenant KEK Secrets live (never in a tenant namespace).",
    )
    operator_subject_kind: Literal["ServiceAccount", "User", "Group"] = Field(
        default="ServiceAccount",
        description=(
            "Kind of the identity the operator runs as, bound in every tenant namespace to the "
            "tenant Secrets ClusterRole (RoleBinding medcloud-operator-tenant). ServiceAccount in a "
            "cluster; User or Group when it authenticates otherwise (a client certificate)."
        ),
    )
    operator_subject_name: str = Field(
        default="medcloud-operator", min_length=1, description="Name of that identity (the ServiceAccount's name)."
    )
    operator_subject_namespace: str | None = Field(
        default=None,
        description="Namespace of that ServiceAccount; unset: operator_namespace. Ignored for User and Group.",
    )
    tenant_secrets_cluster_role: str = Field(
        default="medcloud-operator-tenant-secrets",
        min_length=1,
        description=(
            "ClusterRole (Secrets by name: get, create, update, patch, delete) the operator binds to itself in "
            "each tenant namespace; its RBAC holds `bind` on this name only."
        ),
    )
    ingress_namespace: str = Field(
        default="ingress-nginx",
        description="Namespace of the ingress controller allowed into every tenant; empty: none.",
    )
    dns_namespace: str = Field(default="kube-system", description="Namespace of the cluster DNS service.")
    dns_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"k8s-app": "kube-dns"},
        description="Labels of the cluster DNS pods that tenants may query on port 53.",
    )
    storage_cidrs: list[str] = Field(
        default_factory=list,
        description="CIDRs of the S3-compatible record storage endpoint tenants may reach.",
    )
    storage_namespace: str | None = Field(
        default=None,
        description="Namespace of an in-cluster record storage service tenants may reach.",
    )
    storage_port: int = Field(default=9000, ge=1, le=65535, description="TCP port of the record storage endpoint.")
    pod_security_version: str = Field(
        default="latest", description="Pod Security Standards version pinned on tenant namespaces."
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Prometheus metrics port; 0 disables.")
    metrics_address: str = Field(default="0.0.0.0", description="Address the metrics server binds.")  # noqa: S104
    probe_port: int = Field(default=8080, ge=0, le=65535, description="Liveness/readiness port; 0 disables.")
    peering_name: str = Field(default="medcloud", description="ClusterKopfPeering object replicas coordinate through.")
    standalone: bool = Field(default=False, description="Run without peering (a single replica).")
    peering_priority: int = Field(
        # Kopf pauses every replica that sees a peer of equal priority, so two
        # replicas with one fixed priority would both stand still. A random
        # priority per process makes exactly one of them act; the other waits
        # as a hot standby and takes over when the active one's lease lapses.
        default_factory=lambda: secrets.randbelow(1_000_000) + 1,
        ge=0,
        description="Peering priority of this replica; the highest acts, the others stand by. Default: random.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_format: Literal["json", "full", "plain"] = Field(default="json", description="Log line format.")
    resync_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How often every Hospital is reconciled even without events: it catches what no watch "
            "reports (a deleted KEK Secret) and refreshes status. Read once, when handlers register."
        ),
    )
    deletion_retry_seconds: float = Field(
        default=15.0, gt=0, description="How often a refused deletion (RecordStores present) is retried."
    )

    def operator_subject(self) -> dict[str, str]:
        """The operator's own identity as an RBAC subject, spelled as the API server stores it."""
        if self.operator_subject_kind == "ServiceAccount":
            return {
                "kind": "ServiceAccount",
                "name": self.operator_subject_name,
                "namespace": self.operator_subject_namespace or self.operator_namespace,
            }
        return {
            "kind": self.operator_subject_kind,
            "apiGroup": "rbac.authorization.k8s.io",
            "name": self.operator_subject_name,
        }
