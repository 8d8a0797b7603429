"""Request and response bodies of the API.

Requests embed the CRDs' own spec models (``HospitalSpec``, ``RecordStoreSpec``,
...), so a request is refused for exactly the reasons the API server would
refuse the objects, with the same field names. Responses are views: they
summarise objects read back from the cluster.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from medcloud.models import (
    AppInstanceSpec,
    DeviceGatewaySpec,
    HospitalAdmins,
    HospitalQuota,
    HospitalSpec,
    RecordStoreSpec,
)
from medcloud.models.common import DNS1123Subdomain, HospitalName


class APIModel(BaseModel):
    """camelCase on the wire, like the custom resources; unknown fields are an error, never ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

TOWNSHIP_EXAMPLE: dict[str, Any] = {
    "name": "township-maple",
    "spec": {
        "displayName": "Maple Township Health Centre",
        "institutionCode": "52330122MJ8801234A",
        "tier": "township",
        "consortium": "riverton-medical-alliance",
        "admins": {"groups": ["township-maple-staff"]},
    },
}

CUSTOM_EXAMPLE: dict[str, Any] = {
    "name": "county-people",
    "spec": {
        "displayName": "Riverton County People's Hospital",
        "institutionCode": "12330122470012345B",
        "tier": "county",
        "quota": {"cpu": "32", "memory": "128Gi", "storage": "4Ti", "pods": 400},
        "admins": {"users": ["li.wei@county-people.example"]},
    },
    "recordStores": [
        {"name": "emr", "spec": {"recordClass": "emr", "retention": {"mode": "COMPLIANCE", "period": "30y"}}},
        {"name": "imaging", "spec": {"recordClass": "imaging", "retention": {"period": "30y"}, "quota": "2Ti"}},
    ],
    "deviceGateways": [
        {
            "name": "wards",
            "spec": {"protocols": ["mqtt", "hl7v2"], "deviceClasses": ["ecg", "spo2"], "recordStore": "emr"},
        }
    ],
    "apps": [
        {"name": "emr-sharing", "spec": {"app": "emr-sharing", "version": "2.3.1", "recordStore": "emr"}},
        {"name": "appointments", "spec": {"app": "appointments", "version": "4.1.0"}},
    ],
}


class RecordStoreRequest(APIModel):
    """A RecordStore to create in the hospital's namespace."""

    name: DNS1123Subdomain = Field(description="Name of the RecordStore, e.g. emr.")
    spec: RecordStoreSpec = Field(description="Its spec, exactly as in the RecordStore custom resource.")


class DeviceGatewayRequest(APIModel):
    """A DeviceGateway to create in the hospital's namespace."""

    name: DNS1123Subdomain = Field(description="Name of the DeviceGateway, e.g. wards.")
    spec: DeviceGatewaySpec = Field(description="Its spec, exactly as in the DeviceGateway custom resource.")


class AppRequest(APIModel):
    """An AppInstance to run in the hospital's namespace."""

    name: DNS1123Subdomain = Field(description="Name of the AppInstance, usually the app's name.")
    spec: AppInstanceSpec = Field(description="Its spec, exactly as in the AppInstance custom resource.")


class HospitalCreate(APIModel):
    """Onboard a hospital: the Hospital and everything that runs in its namespace, in one request.

    Leave out all of ``recordStores``, ``deviceGateways`` and ``apps`` to get
    the default profile of the hospital's tier (and, unless ``spec.quota`` is
    given, the tier's quota). Give any of them to choose yourself: the lists
    left out are then empty.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [TOWNSHIP_EXAMPLE, CUSTOM_EXAMPLE]})

    name: HospitalName = Field(description="Name of the Hospital; its namespace is hospital-<name>.")
    spec: HospitalSpec = Field(description="The Hospital's spec, exactly as in the Hospital custom resource.")
    record_stores: list[RecordStoreRequest] | None = Field(
        default=None, max_length=16, description="RecordStores to create; leave out for the tier's profile."
    )
    device_gateways: list[DeviceGatewayRequest] | None = Field(
        default=None, max_length=16, description="DeviceGateways to create; leave out for the tier's profile."
    )
    apps: list[AppRequest] | None = Field(
        default=None, max_length=32, description="AppInstances to create; leave out for the tier's profile."
    )

    def uses_profile(self) -> bool:
        return self.record_stores is None and self.device_gateways is None and self.apps is None


class HospitalPatch(APIModel):
    """The changes a city makes to an onboarded hospital; give at least one field.

    ``quota`` and ``admins`` change only the fields given. ``apps`` is the
    complete list of apps the hospital runs: missing ones are created, changed
    ones updated, and apps not listed are removed (apps hold no records; the
    RecordStores are never touched here).
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"quota": {"cpu": "24", "pods": 300}},
                {"admins": {"users": ["li.wei@county-people.example"], "groups": ["county-people-it"]}},
                {
                    "apps": [
                        {"name": "appointments", "spec": {"app": "appointments", "version": "4.2.0", "replicas": 2}},
                        {"name": "insurance-card", "spec": {"app": "insurance-card", "version": "1.0.4"}},
                    ]
                },
            ]
        }
    )

    quota: HospitalQuota | None = Field(default=None, description='Quota fields to change, e.g. {"cpu": "24"}.')
    admins: HospitalAdmins | None = Field(default=None, description="Admin users and/or groups to set.")
    apps: list[AppRequest] | None = Field(default=None, max_length=32, description="Every app the hospital runs.")

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if self.quota is None and self.admins is None and self.apps is None:
            raise ValueError("give at least one of quota, admins or apps")
        return self


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------

State = Literal["Pending", "Provisioning", "Ready", "Degraded", "Failed", "Terminating"]
Layer = Literal["tenant", "stores", "gateways", "apps"]


class ObjectRef(APIModel):
    """One custom resource."""

    kind: str = Field(description="Kind, e.g. RecordStore.")
    name: str = Field(description="Name.")
    namespace: str | None = Field(default=None, description="Namespace; none for the cluster-scoped Hospital.")


class ConditionView(APIModel):
    """A condition as the operator wrote it."""

    model_config = ConfigDict(extra="ignore")

    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ComponentView(APIModel):
    """One object of a hospital and how far it has come."""

    layer: Layer = Field(description="tenant (the Hospital), stores, gateways or apps.")
    kind: str = Field(description="Kind of the object.")
    name: str = Field(description="Name of the object.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    state: State = Field(description="Readiness as the API judges it from phase, conditions and generations.")
    ready: bool = Field(description="True when the Ready condition is True for the current spec.")
    phase: str | None = Field(default=None, description="status.phase as the operator wrote it.")
    message: str | None = Field(default=None, description="What the operator says about it.")
    generation: int | None = Field(default=None, description="metadata.generation of the spec.")
    observed_generation: int | None = Field(default=None, description="Generation the operator last acted on.")
    conditions: list[ConditionView] = Field(default_factory=list, description="status.conditions.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The object's spec.")


class Readiness(APIModel):
    """One overall readiness across the layers of a hospital."""

    state: State = Field(description="Ready only when every component is.")
    ready: bool = Field(description="state == Ready.")
    summary: str = Field(description="One line for a person: what is ready and what is awaited.")
    ready_count: int = Field(description="Components that are ready.")
    total: int = Field(description="Components in all layers.")


class HospitalView(APIModel):
    """A hospital across the layers of the medical cloud."""

    name: str
    display_name: str | None = None
    institution_code: str | None = None
    tier: str | None = None
    consortium: str | None = None
    namespace: str = Field(description="The tenant namespace, hospital-<name>.")
    readiness: Readiness
    tenant: ComponentView = Field(description="The Hospital itself: namespace, quota, network, admins, key.")
    stores: list[ComponentView] = Field(description="RecordStores in the namespace.")
    gateways: list[ComponentView] = Field(description="DeviceGateways in the namespace.")
    apps: list[ComponentView] = Field(description="AppInstances in the namespace.")


class HospitalSummary(APIModel):
    """One hospital in a list (the Hospital alone; GET one hospital for every layer)."""

    name: str
    display_name: str | None = None
    institution_code: str | None = None
    tier: str | None = None
    consortium: str | None = None
    phase: str | None = Field(default=None, description="status.phase of the Hospital.")
    state: State
    ready: bool


class HospitalList(APIModel):
    """A page of hospitals."""

    items: list[HospitalSummary]
    continue_: str | None = Field(
        default=None, alias="continue", description="Pass as ?continue= for the next page; absent on the last page."
    )


class OnboardingResult(APIModel):
    """What onboarding did, and the hospital as it stands."""

    hospital: HospitalView
    created: list[ObjectRef] = Field(description="Objects this request created.")
    unchanged: list[ObjectRef] = Field(description="Objects that already existed exactly as requested.")


class PatchResult(APIModel):
    """What a PATCH changed, and the hospital as it stands."""

    hospital: HospitalView
    changed: list[ObjectRef] = Field(description="Objects updated or created.")
    removed: list[ObjectRef] = Field(description="Apps removed.")


class Offboarding(APIModel):
    """An accepted offboarding."""

    name: str
    deleted: list[ObjectRef] = Field(description="Objects whose deletion was requested, the Hospital last.")
    detail: str


class Difference(APIModel):
    """One field where a request and what exists disagree."""

    object: ObjectRef
    path: str = Field(description="Dotted path, e.g. spec.tier.")
    requested: Any = Field(default=None, description="Value in the request (absent: not set).")
    existing: Any = Field(default=None, description="Value in the cluster (absent: not set).")


# ---------------------------------------------------------------------------
# Consortia
# ---------------------------------------------------------------------------


class Flow(APIModel):
    """Records of one category that flow between hospitals."""

    category: str
    hospitals: list[str] = Field(description="The other side of the flow, with * expanded to the members.")
    require_consent: bool


class MemberView(APIModel):
    """A member hospital and what it shares with whom."""

    name: str
    lead: bool = Field(description="The consortium's lead hospital.")
    visible: bool = Field(description="Whether the caller may read this Hospital; when false only the name is shown.")
    exists: bool | None = Field(default=None, description="Whether the Hospital exists (unknown when not visible).")
    display_name: str | None = None
    tier: str | None = None
    state: State | None = None
    ready: bool | None = None
    shares: list[Flow] = Field(description="Categories this member's records go to, and to whom.")
    receives: list[Flow] = Field(description="Categories this member may read, and from whom.")


class SharingRuleView(APIModel):
    category: str
    from_: list[str] = Field(alias="from")
    to: list[str]
    require_consent: bool


class ConsortiumSummary(APIModel):
    name: str
    display_name: str | None = None
    lead_hospital: str | None = None
    members: int
    consent_required: bool
    state: State
    ready: bool


class ConsortiumList(APIModel):
    items: list[ConsortiumSummary]


class ConsortiumView(ConsortiumSummary):
    """A consortium, its members, and what they share."""

    sharing: list[SharingRuleView] = Field(description="The sharing rules as written.")
    member_details: list[MemberView] = Field(description="Each member with the flows its rules allow.")


class MemberList(APIModel):
    items: list[MemberView]


class Health(APIModel):
    status: Literal["ok"]
    kubernetes: str | None = Field(default=None, description="Version of the Kubernetes API (readyz only).")
