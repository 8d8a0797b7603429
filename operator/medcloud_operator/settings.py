"""The operator's settings: one object, read from ``MEDCLOUD_*`` environment variables once, at start.

:class:`OperatorSettings` is the whole; :class:`WorkloadSettings` and
:class:`StorageSettings` are the parts that the workload builders and the
MinIO client take (the whole is each of them, so it can be passed as either).
Nothing reads the environment at import time: `medcloud operator` reads it
and registers the handlers with what it read (``medcloud_operator.main``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medcloud import __version__
from medcloud.models import CatalogApp
from medcloud.models.common import CpuQuantity
from medcloud.tenancy.credentials import KEY_SERVICE_AUDIENCE
from medcloud_operator import sharding


class WorkloadSettings(BaseModel):
    """Images and publishing of the workloads the operator runs (apps and device gateways)."""

    operator_namespace: str = Field(
        default="medcloud-system",
        description=(
            "Where the operator runs and where tenant KEK Secrets and the MQTT broker's trust bundle "
            "(ConfigMap medcloud-broker-trust) live (never in a tenant namespace)."
        ),
    )
    app_image_prefix: str = Field(
        default="registry.medcloud.local/apps",
        min_length=1,
        description="Registry path of the catalog apps' images: <prefix>/<app>:<version>.",
    )
    published_apps: list[CatalogApp] = Field(
        default_factory=list,
        description=(
            "Catalog apps whose images are published under app_image_prefix. An AppInstance of any other app "
            "without MedCloud's own code (those run own_image) is refused (Ready=False, AppNotInCatalogImage) "
            "and gets no Deployment. JSON, e.g. '[\"referrals\"]'."
        ),
    )
    exchange_client_cluster_role: str = Field(
        default="medcloud-exchange-client",
        min_length=1,
        description=(
            "ClusterRole (use consortia/exchange) each app of MedCloud's own code is bound to in its hospital's "
            "namespace (deploy/exchange-client-rbac.yaml); the operator holds `bind` on this name only."
        ),
    )
    max_cpu_request: CpuQuantity | None = Field(
        default=None,
        description=(
            "The most CPU any container the operator makes may request (catalog apps, device gateways, "
            "exchanges) and the tenants' default request (LimitRange); limits are left as they are. Unset: "
            "the catalog's, the specs' and the defaults' requests. A small cluster sets it low (the local "
            "cluster's real node: 25m): requests reserve CPU for scheduling, and idle pods use far less."
        ),
    )
    exchange_namespace: str = Field(
        default="medcloud-system",
        min_length=1,
        description="Namespace the Consortiums' exchanges run in (the operator's): the apps may reach them there.",
    )
    gateway_image: str = Field(
        default="registry.medcloud.local/medcloud",
        min_length=1,
        description="Image (without tag) every DeviceGateway runs: MedCloud's own, as `medcloud gateway`.",
    )
    gateway_version: str = Field(
        default=__version__, min_length=1, description="Tag of the device gateway image; MedCloud's own version."
    )
    own_image: str = Field(
        # A semver's "+" is not allowed in an image tag; Helm writes "_" for it, and so does this default.
        default=f"registry.medcloud.local/medcloud:{__version__.replace('+', '_')}",
        min_length=1,
        description=(
            "MedCloud's own image, with its tag or digest: each Consortium's exchange and the catalog apps "
            "with MedCloud's code run it (the chart's image)."
        ),
    )
    key_service_audience: str = Field(
        default=KEY_SERVICE_AUDIENCE,
        min_length=1,
        description="Audience of the projected token the exchange, exchange-client apps and gateways show the keys.",
    )
    exchange_audience: str = Field(
        default="medcloud-exchange",
        min_length=1,
        description="Audience of the projected token exchange-client apps (emr-sharing) present to the exchange.",
    )
    gateway_keys_cluster_role: str = Field(
        default="medcloud-gateway-keys",
        min_length=1,
        description=(
            "ClusterRole (get recordstores/keys) bound in a gateway's namespace to the gateway's own "
            "ServiceAccount; the operator's RBAC holds `bind` on this name only (deploy/gateway-rbac.yaml)."
        ),
    )
    broker_host: str | None = Field(
        default=None,
        description="MQTT broker device gateways subscribe at (host or IP); unset: the gateway's default.",
    )
    broker_port: int | None = Field(default=None, ge=1, le=65535, description="Its TLS port; unset: 8883.")
    broker_client_ca_file: str | None = Field(
        default=None,
        description=(
            "PEM certificate of the CA the broker checks client certificates against (also the CA gateways "
            "verify the broker's certificate with). With broker_client_ca_key_file, the operator issues each "
            "DeviceGateway's broker client certificate (Secret gw-<name>-broker). Unset: gateways get none, and "
            "one with mqtt enabled stops at start naming the missing MQTT settings (never Ready)."
        ),
    )
    broker_client_ca_key_file: str | None = Field(
        default=None, description="That CA's private key (PEM, EC); read by the operator alone, never copied."
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent", description="Pull policy of app and gateway containers."
    )
    ingress_class: str | None = Field(
        default=None,
        description="ingressClassName of the Ingresses of exposed apps; unset: the cluster's default class.",
    )
    gateway_presence_from_namespace: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Namespace of the operator's own pods, when it runs as pods (the chart's release namespace): each "
            "DeviceGateway's NetworkPolicy then admits the pods of that namespace with "
            "gateway_presence_from_pod_labels to the gateway's health port, where the operator asks which "
            "devices the replica saw (status.devices.active). Unset: no such rule (an operator on the node "
            "reaches the pods as the node does)."
        ),
    )
    gateway_presence_from_pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels of the operator's pods in that namespace (the chart's selector labels); JSON.",
    )

    @model_validator(mode="after")
    def _broker_ca_whole(self) -> WorkloadSettings:
        if (self.broker_client_ca_file is None) != (self.broker_client_ca_key_file is None):
            raise ValueError("set both broker_client_ca_file and broker_client_ca_key_file, or neither")
        return self

    @model_validator(mode="after")
    def _presence_peer_whole(self) -> WorkloadSettings:
        # Labels alone would name no namespace; a namespace alone would admit every pod in it.
        if (self.gateway_presence_from_namespace is None) != (not self.gateway_presence_from_pod_labels):
            raise ValueError(
                "set both gateway_presence_from_namespace and gateway_presence_from_pod_labels, or neither"
            )
        return self


class EgressPeer(BaseModel):
    """A platform service every tenant pod may open connections to: the key service, the broker, the exchange.

    Reached by namespace (and pod labels) when it runs as pods, or by CIDRs
    when it runs elsewhere (on the node's own address, say); on one TCP port.
    """

    name: str = Field(min_length=1, description="What it is (keyservice, broker, exchange), for people reading.")
    namespace: str | None = Field(default=None, description="Namespace of its pods.")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Labels of its pods in that namespace.")
    cidrs: list[str] = Field(default_factory=list, description="Addresses it listens on, when not a pod.")
    port: int = Field(ge=1, le=65535, description="Its TCP port (the pod's port, not a Service's).")

    @model_validator(mode="after")
    def _has_peers(self) -> EgressPeer:
        # A rule with no peers would mean "everywhere" to the enforcer.
        if self.namespace is None and not self.cidrs:
            raise ValueError(f"egress peer {self.name}: set namespace or cidrs")
        if self.pod_labels and self.namespace is None:
            raise ValueError(f"egress peer {self.name}: pod_labels need a namespace")
        return self


class StorageSettings(BaseModel):
    """How the operator reaches MinIO and how often it looks at each RecordStore."""

    minio_endpoint: str | None = Field(
        default=None,
        description="URL the operator reaches MinIO at, e.g. https://minio.medcloud-storage.svc:9000. Unset: "
        "RecordStores report StorageNotConfigured.",
    )
    minio_access_key: str | None = Field(default=None, description="MinIO user with admin rights (from a Secret).")
    minio_secret_key: SecretStr | None = Field(default=None, description="Its secret key (from a Secret).")
    minio_region: str = Field(default="us-east-1", description="Region MinIO reports; written into the Secrets.")
    minio_ca_file: str | None = Field(default=None, description="CA bundle for MinIO's TLS certificate.")
    minio_public_endpoint: str | None = Field(
        default=None,
        description="URL tenants reach MinIO at, written into credentials Secrets; default: minio_endpoint.",
    )
    minio_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Read timeout of one MinIO request; connecting gives up after 5 seconds."
    )
    key_service_url: str | None = Field(
        default=None,
        description="URL of the key service, written into credentials Secrets as MEDCLOUD_KEY_SERVICE_URL.",
    )
    recordstore_refresh_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How often every RecordStore is reconciled without events: usage is re-counted (a listing of "
            "the bucket), scheduled key rotations and KEK rotations are picked up, and a lost MinIO is "
            "noticed. Read once, when handlers register."
        ),
    )
    recordstore_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between retries while MinIO is unavailable."
    )

    @property
    def configured(self) -> bool:
        return bool(self.minio_endpoint and self.minio_access_key and self.minio_secret_key)


RUNTIME_FIELDS = frozenset(
    {
        "namespaces",
        "metrics_port",
        "metrics_address",
        "probe_port",
        "peering_name",
        "standalone",
        "peering_priority",
        "log_level",
        "log_format",
        "resync_seconds",
        "full_resync_seconds",
        "gateway_presence_seconds",
        "max_concurrent_reconciles",
        "deletion_retry_seconds",
        "recordstore_refresh_seconds",
        "recordstore_retry_max_seconds",
        "minio_secret_key",
        "minio_timeout_seconds",
        "shard_selector",
    }
)
"""Settings that say how this process runs, not what it builds: a change of them leaves every object settled."""


class OperatorSettings(WorkloadSettings, StorageSettings, BaseSettings):
    """Everything an operator deployment may tune; each field is ``MEDCLOUD_<FIELD>`` in the environment.

    Lists and maps are JSON in the environment, e.g.
    ``MEDCLOUD_STORAGE_CIDRS='["10.20.0.0/24"]'``.
    """

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_", extra="ignore")

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (or globs like hospital-*) whose namespaced objects are served; empty: all.",
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
    exchange_cluster_role: str = Field(
        default="medcloud-exchange",
        min_length=1,
        description=(
            "ClusterRole (reviews, get consortia, create events) the operator binds to each Consortium's exchange "
            "identity; its RBAC holds `bind` on this name only (deploy/exchange-rbac.yaml)."
        ),
    )
    exchange_database_secret: str = Field(
        default="exchange-{consortium}-app",
        min_length=1,
        description=(
            "Secret (operator namespace) with a Consortium's exchange database URI when its spec names none; "
            "{consortium} is replaced by its name. The default is what a CloudNativePG Cluster named "
            "exchange-<consortium> creates (docs/install.md)."
        ),
    )
    exchange_audit_retention_days: int = Field(
        default=2190,
        ge=1,
        description="COMPLIANCE retention of each exchange's audit records, in days (default six years).",
    )
    exchange_readiness_url: str = Field(
        default="",
        description=(
            "Where the operator also asks each Consortium's exchange whether it serves (its /readyz: PostgreSQL "
            "and the audit bucket), {consortium} and {namespace} (the operator's) filled in, e.g. "
            "http://medcloud-exchange-{consortium}.{namespace}.svc/readyz. Empty: the pods' readiness alone "
            "decides (a kubelet runs the same check). Set it where no kubelet does (KWOK nodes, an exchange run "
            "as a local process), or to have the condition name what is down."
        ),
    )
    exchange_probe_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often the operator asks a serving (or degraded) exchange whether it is ready.",
    )
    exchange_probe_timeout_seconds: float = Field(
        default=3.0, gt=0, le=60, description="How long one readiness question to an exchange may take."
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
    dns_cidrs: list[str] = Field(
        default_factory=list,
        description=(
            "Addresses of a cluster DNS server that is not a pod (the local cluster's CoreDNS on the node "
            "address), which tenants may query on dns_port, UDP and TCP; empty: the DNS pods alone."
        ),
    )
    dns_port: int = Field(
        default=53,
        ge=1,
        le=65535,
        description="Port of the DNS server at dns_cidrs as policies see it (after the Service's translation).",
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
    platform_egress: list[EgressPeer] = Field(
        default_factory=list,
        description=(
            "Platform services tenant pods may reach besides DNS and record storage (key service, broker, "
            "exchange), each by namespace/pod labels or CIDRs and one port. JSON, e.g. "
            '\'[{"name": "keyservice", "namespace": "medcloud-system", "pod_labels": '
            '{"app.kubernetes.io/component": "keyservice"}, "port": 8443}]\'.'
        ),
    )
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
    gateway_presence_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How often the operator asks each DeviceGateway's ready replicas which devices they saw "
            "(GET /devices on the health port) to count status.devices.active. Read once, at registration."
        ),
    )
    gateway_presence_cidrs: list[str] = Field(
        default_factory=list,
        description=(
            "Pod address ranges the operator may open connections to when it asks gateway replicas for their "
            "presence, e.g. '[\"10.88.0.0/24\"]'. Empty (the default): it asks none, and status.devices.active "
            "stays unset. An endpoint outside them is never contacted, so no request leaves for an address the "
            "operator was not told is a pod's."
        ),
    )
    kek_recheck_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How soon a Hospital whose KEK Secret is unreadable (phase Failed, KEKInvalid) looks at it "
            "again: the operator never watches Secrets, so restoring or deleting the Secret heals within this."
        ),
    )
    full_resync_seconds: float = Field(
        default=21600.0,
        gt=0,
        description=(
            "How often each settled object is reconciled in full anyway (its reads and comparisons), spread "
            "evenly over this period by the object's uid: what no watch reports (a deleted KEK Secret) is "
            "caught within it. Every resync_seconds the safety net only compares the object's status with "
            "its spec and the settings, without a request."
        ),
    )
    max_concurrent_reconciles: int = Field(
        default=4,
        ge=1,
        le=64,
        description=(
            "Reconciles that run at once (threads of the work queue); waiting ones are served changes "
            "first, then resumes, then the safety net. Kopf's own thread pool gets the same size."
        ),
    )
    shard_selector: str | None = Field(
        default=None,
        description=(
            "Label selector (equality-based: k=v, k!=v, k, !k, comma-separated) of the MedCloud objects this "
            "replica serves, e.g. medcloud.io/shard=east; unset: all. Give each shard its own peering_name."
        ),
    )
    deletion_retry_seconds: float = Field(
        default=15.0, gt=0, description="How often a refused deletion (RecordStores present) is retried."
    )

    @field_validator("shard_selector")
    @classmethod
    def _equality_based(cls, value: str | None) -> str | None:
        if value:
            sharding.parse(value)  # raises on anything the local test could not judge like the API server
        return value or None

    def fingerprint(self) -> str:
        """A digest of the settings that shape child objects (not of how this process runs)."""
        shaping = self.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()

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
