"""Hospital: one tenant of the medical cloud (cluster-scoped)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AwareDatetime, Field, model_validator

from medcloud.models.common import (
    DNS1123_LABEL_PATTERN,
    HOSPITAL_NAME_MAX,
    HOSPITAL_NAMESPACE_PREFIX,
    PHASE_COLUMN,
    READY_COLUMN,
    ByteQuantity,
    CELRule,
    CpuQuantity,
    CRDInfo,
    DNS1123Label,
    DNS1123Subdomain,
    MedCloudModel,
    PlainText,
    PrinterColumn,
    Resource,
    StatusBase,
    empty_default,
    hospital_namespace,
    immutable,
    only_grows,
)

INSTITUTION_CODE_PATTERN = r"^[A-Z0-9]{6,24}$"
_LABEL_RE = re.compile(DNS1123_LABEL_PATTERN)


class Tier(StrEnum):
    """Level of the institution in the city's medical system, from the city hospital down."""

    CITY = "city"
    COUNTY = "county"
    DISTRICT = "district"
    TOWNSHIP = "township"
    VILLAGE = "village"
    COMMUNITY = "community"


# Principal names are free-form (users may be e-mail addresses or
# system:serviceaccount:... names); bounding them keeps CEL costs estimable.
Principal = Annotated[PlainText, Field(min_length=1, max_length=253)]


class HospitalAdmins(MedCloudModel):
    """Who administers the tenant: they get the admin role in the hospital's namespace."""

    users: list[Principal] = Field(
        default_factory=list,
        max_length=64,
        description="User names bound to the tenant admin role, as the cluster authenticates them.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    groups: list[Principal] = Field(
        default_factory=list,
        max_length=64,
        description="Group names bound to the tenant admin role.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class HospitalQuota(MedCloudModel):
    """Resource quota of the tenant namespace; every field has a default for a mid-size hospital."""

    cpu: CpuQuantity = Field(default="16", description="Total CPU the tenant's pods may request, e.g. 16 or 8500m.")
    memory: ByteQuantity = Field(default="64Gi", description="Total memory the tenant's pods may request, e.g. 64Gi.")
    storage: ByteQuantity = Field(
        default="1Ti", description="Total storage the tenant's persistent volume claims may request, e.g. 1Ti."
    )
    pods: int = Field(default=200, ge=0, le=100000, description="Maximum number of pods in the tenant namespace.")
    persistent_volume_claims: int = Field(
        default=50, ge=0, le=10000, description="Maximum number of persistent volume claims in the tenant namespace."
    )


class HospitalNetwork(MedCloudModel):
    """Network allowances on top of the tenant's default-deny policies."""

    allow_from_namespaces: list[DNS1123Label] = Field(
        default_factory=list,
        max_length=64,
        description="Extra namespaces whose pods may reach the tenant's pods, e.g. a monitoring namespace.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    allow_consortium_ingress: bool = Field(
        default=True,
        description="Allow traffic from the namespaces of the other hospitals in the same consortium.",
    )


class KekRotation(MedCloudModel):
    """On-demand rotation of the tenant's key-encryption key (KEK)."""

    rotate_now: Annotated[
        int,
        only_grows("keyRotation.rotateNow", "a KEK rotation"),
    ] = Field(
        default=0,
        ge=0,
        description=(
            "On-demand KEK rotation counter: increase it by one to make a new KEK version current. Older "
            "versions stay until every RecordStore has re-wrapped its data keys; no record is re-encrypted. "
            "The operator rotates whenever it differs from status.kek.observedRotateNow. It can only grow."
        ),
    )


class DeviceCARotation(MedCloudModel):
    """On-demand rotation of the hospital's tenant device CA (it also rotates by itself near its end)."""

    rotate_now: Annotated[
        int,
        only_grows("deviceCaRotation.rotateNow", "a device CA rotation"),
    ] = Field(
        default=0,
        ge=0,
        description=(
            "On-demand device CA rotation counter: increase it by one to make a new device CA current. The "
            "previous CA stays trusted (gateways, the platform broker, its CRL) until no unexpired, unrevoked "
            "device certificate it issued remains, then its key is deleted; new enrolments and the gateways' "
            "serving certificates come from the new CA. The operator rotates whenever it exceeds "
            "status.deviceCa.observedRotateNow (one overlap at a time). It can only grow."
        ),
    )


class HospitalSpec(MedCloudModel):
    """Desired state of a hospital tenant."""

    display_name: PlainText = Field(
        min_length=1, max_length=128, description="Human-readable name of the institution, e.g. Riverton City Hospital."
    )
    institution_code: Annotated[
        str,
        Field(
            pattern=INSTITUTION_CODE_PATTERN,
            description=(
                "Official registration code of the institution: 6 to 24 upper-case letters or digits "
                "(e.g. the 18-character unified social credit code). Immutable."
            ),
        ),
        immutable("institutionCode", "it identifies the institution in audit trails and key material"),
    ]
    tier: Tier = Field(description="Tier of the institution: city, county, district, township, village or community.")
    consortium: DNS1123Subdomain | None = Field(
        default=None, description="Name of the Consortium (medical alliance) this hospital belongs to, if any."
    )
    admins: HospitalAdmins = Field(
        default_factory=HospitalAdmins,
        description="Users and groups who administer the tenant.",
        json_schema_extra=empty_default(),
    )
    quota: HospitalQuota = Field(
        default_factory=HospitalQuota,
        description="Resource quota of the tenant namespace.",
        json_schema_extra=empty_default(),
    )
    network: HospitalNetwork = Field(
        default_factory=HospitalNetwork,
        description="Network allowances on top of the tenant's default-deny network policies.",
        json_schema_extra=empty_default(),
    )
    exam_accredited: bool = Field(
        default=False,
        description=(
            "The institution's laboratory and imaging are accredited (e.g. ISO 15189), so the Consortium may "
            "recognise its exam results (spec.examRecognition.requireAccreditation of the Consortium)."
        ),
    )
    key_rotation: KekRotation = Field(
        default_factory=KekRotation,
        description="On-demand rotation of the tenant's key-encryption key.",
        json_schema_extra=empty_default(),
    )
    device_ca_rotation: DeviceCARotation = Field(
        default_factory=DeviceCARotation,
        description="On-demand rotation of the tenant's device CA (devices' client certificates).",
        json_schema_extra=empty_default(),
    )


class KeyEncryptionKey(MedCloudModel):
    """The tenant's current key-encryption key (its material never appears in status)."""

    version: int = Field(ge=1, description="Version of the current KEK; it grows by one on every rotation.")
    created_at: AwareDatetime = Field(description="When the current KEK version was created.")
    observed_rotate_now: int = Field(
        default=0, ge=0, description="Last spec.keyRotation.rotateNow value the operator acted on."
    )
    versions: list[int] = Field(
        default_factory=list,
        description=(
            "Every KEK version the KEK Secret still holds, oldest first: older ones unwrap the data keys of "
            "stores not yet re-wrapped (see status.kekVersion of each RecordStore)."
        ),
    )


class DeviceCACertificate(MedCloudModel):
    """A tenant device CA as status names it: facts of its public certificate, never anything of its key."""

    name: str = Field(description="Subject CN of the CA, e.g. city device CA 2 (its generation after the first).")
    serial: str = Field(description="Serial of the CA certificate, upper-case hex as openssl x509 -serial shows it.")
    not_after: AwareDatetime = Field(description="When the CA certificate expires.")


class PreviousDeviceCA(DeviceCACertificate):
    """The CA a rotation replaced, still trusted while devices hold certificates of it."""

    trusted_until: AwareDatetime = Field(
        description=(
            "When it is dropped from trust at the latest: the expiry of the last unrevoked device certificate it "
            "issued (sooner once those devices are re-enrolled or revoked), never past its own expiry."
        )
    )


class DeviceCAStatus(MedCloudModel):
    """The tenant's device CA: which one is current and whether a previous one is still trusted."""

    generation: int = Field(ge=1, description="Generation of the current CA: 1 at first, one more per rotation.")
    current: DeviceCACertificate = Field(description="The CA that signs new enrolments and the gateways' leaves.")
    observed_rotate_now: int = Field(
        default=0, ge=0, description="The spec.deviceCaRotation.rotateNow the current CA answers."
    )
    previous: PreviousDeviceCA | None = Field(
        default=None, description="The CA the last rotation replaced, while it is still trusted."
    )
    message: str | None = Field(default=None, description="A rotation that is due but waits, and why.")


class HospitalStatus(StatusBase):
    """Observed state of a hospital tenant, written by the operator."""

    namespace: str | None = Field(default=None, description="Name of the tenant namespace, hospital-<name>.")
    kek: KeyEncryptionKey | None = Field(default=None, description="The tenant's current key-encryption key.")
    device_ca: DeviceCAStatus | None = Field(
        default=None, description="The tenant's device CA, once a Device or DeviceGateway made it."
    )
    quota_usage: dict[str, str] = Field(
        default_factory=dict,
        description="Current use of the namespace quota by resource, e.g. requests.cpu: 2500m.",
    )
    message: str | None = Field(default=None, description="Human-readable summary of the current state.")


class Hospital(Resource):
    """A hospital tenant of the medical cloud: namespace, quota, network isolation, admins and encryption key."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="hospitals",
        singular="hospital",
        scope="Cluster",
        short_names=("hosp",),
        printer_columns=(
            PrinterColumn("Tier", ".spec.tier", description="Tier of the institution"),
            PrinterColumn("Code", ".spec.institutionCode", description="Institution code"),
            PrinterColumn("Tenant", ".status.namespace", description="Tenant namespace"),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn("Consortium", ".spec.consortium", description="Consortium membership", priority=1),
            PrinterColumn("KEK", ".status.kek.version", type="integer", description="KEK version", priority=1),
        ),
    )
    # The API server only lets root-level rules see metadata.name, and does
    # not accept a fieldPath into metadata, so the messages name the field.
    cel_rules: ClassVar[tuple[CELRule, ...]] = (
        CELRule(
            rule=f"size(self.metadata.name) <= {HOSPITAL_NAME_MAX}",
            message=(
                f"metadata.name must be at most {HOSPITAL_NAME_MAX} characters so that the tenant namespace "
                f"{HOSPITAL_NAMESPACE_PREFIX}<name> is a valid namespace name"
            ),
        ),
        CELRule(
            rule=f"self.metadata.name.matches('{DNS1123_LABEL_PATTERN}')",
            message=(
                "metadata.name must be a DNS-1123 label (lowercase letters, digits and '-', no dots) "
                "because it names the tenant namespace"
            ),
        ),
    )

    kind: Literal["Hospital"] = Field(default="Hospital", description="Kind of the object: Hospital.")
    spec: HospitalSpec = Field(description="Desired state of the hospital tenant.")
    status: HospitalStatus | None = Field(default=None, description="Observed state, written by the operator.")

    @model_validator(mode="after")
    def _name_fits_namespace(self) -> Self:
        name = self.metadata.name
        if name is not None and (len(name) > HOSPITAL_NAME_MAX or not _LABEL_RE.match(name)):
            raise ValueError(
                f"metadata.name must be a DNS-1123 label of at most {HOSPITAL_NAME_MAX} characters "
                f"because it names the tenant namespace {HOSPITAL_NAMESPACE_PREFIX}<name>"
            )
        return self

    @property
    def namespace_name(self) -> str:
        """The tenant namespace, ``hospital-<metadata.name>``."""
        if not self.metadata.name:
            raise ValueError("a Hospital without metadata.name has no namespace")
        return hospital_namespace(self.metadata.name)


class HospitalCondition(StrEnum):
    """The conditions a Hospital reports; Ready summarises the others."""

    READY = "Ready"
    NAMESPACE_READY = "NamespaceReady"
    """Namespace, Pod Security labels, quota, limit range and admin RBAC are as specified."""
    NETWORK_ISOLATED = "NetworkIsolated"
    """Default-deny network policies and the allowed exceptions are in place."""
    KEY_READY = "KeyReady"
    """The tenant key-encryption key exists in the operator's namespace."""
    ONBOARDED = "Onboarded"
    """Every RecordStore, DeviceGateway and AppInstance an unfinished onboarding asked for exists."""


class HospitalReason(StrEnum):
    """Reasons only a Hospital reports (the shared ones are :class:`medcloud.models.conditions.Reason`)."""

    ONBOARDING_INCOMPLETE = "OnboardingIncomplete"
    """An onboarding stopped part-way: objects it asked for are missing; repeat the request."""
    INSTITUTION_CODE_TAKEN = "InstitutionCodeTaken"
    """An older Hospital has the same institution code; this one gets no tenancy until that one is gone."""
    NAMESPACE_TERMINATING = "NamespaceTerminating"
    """A namespace of the same name is still being deleted; the operator waits."""
    OPERATOR_NAMESPACE_MISSING = "OperatorNamespaceMissing"
    """The operator's own namespace (for KEK Secrets) does not exist."""
    RECORD_STORES_PRESENT = "RecordStoresPresent"
    """Deletion is refused while RecordStores remain in the tenant namespace."""
