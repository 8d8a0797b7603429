"""Consortium: the city medical alliance and its record-sharing agreements (cluster-scoped)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from medcloud.models.common import (
    HOSPITAL_NAME_MAX,
    PHASE_COLUMN,
    READY_COLUMN,
    CELRule,
    CRDInfo,
    HospitalName,
    MedCloudModel,
    PlainText,
    PrinterColumn,
    Resource,
    StatusBase,
    empty_default,
    unique_items,
)
from medcloud.models.deidentification import DeidentificationPolicy
from medcloud.models.hospital import Tier

ANY_MEMBER = "*"

HospitalOrAny = Annotated[
    str,
    Field(min_length=1, max_length=HOSPITAL_NAME_MAX, pattern=r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"),
]
"""A member hospital's name, or ``*`` for every member."""


class SharingCategory(StrEnum):
    """Category of records a sharing rule covers."""

    EMR = "emr"
    IMAGING = "imaging"
    DEVICE_DATA = "device-data"
    DOCUMENTS = "documents"
    EXAM_RESULTS = "exam-results"
    REFERRALS = "referrals"


class SharingRule(MedCloudModel):
    """Members listed in from share records of one category with members listed in to."""

    category: SharingCategory = Field(
        description="Record category: emr, imaging, device-data, documents, exam-results or referrals."
    )
    from_: list[HospitalOrAny] = Field(
        alias="from",
        min_length=1,
        max_length=32,
        description="Member hospitals whose records are shared, or * for every member.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    to: list[HospitalOrAny] = Field(
        min_length=1,
        max_length=32,
        description="Member hospitals that may read those records, or * for every member.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    require_consent: bool = Field(
        default=True,
        description="Reads need the patient's recorded consent; each cross-institution read is audited either way.",
    )

    @field_validator("from_", "to")
    @classmethod
    def _no_duplicates(cls, values: list[str]) -> list[str]:
        return unique_items(values)


LOINC_CODE_PATTERN = r"^[0-9]{1,7}-[0-9]$"
DIAGNOSTIC_SERVICE_PATTERN = r"^[A-Z]{2,5}$"


class RecognitionWindow(MedCloudModel):
    """How long a result of one test (a LOINC code) or one diagnostic service section stays recognised."""

    cel_rules: ClassVar[tuple[CELRule, ...]] = (
        CELRule(
            rule="has(self.test) != has(self.category)",
            message="a recognition window names exactly one of test (a LOINC code) and category (e.g. LAB, RAD)",
        ),
    )

    test: str | None = Field(
        default=None,
        pattern=LOINC_CODE_PATTERN,
        description="LOINC code of the test (DiagnosticReport.code), e.g. 58410-2 for a complete blood count.",
    )
    category: str | None = Field(
        default=None,
        pattern=DIAGNOSTIC_SERVICE_PATTERN,
        description="HL7 v2 table 0074 diagnostic service section (DiagnosticReport.category), e.g. LAB, RAD, CT.",
    )
    days: int = Field(ge=1, le=3650, description="Days after the report's issue during which it is recognised.")

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.test is None) == (self.category is None):
            raise ValueError("a recognition window names exactly one of test and category")
        return self


class ExamRecognition(MedCloudModel):
    """Which members' exam results every member recognises instead of repeating the test, and for how long."""

    producer_tiers: list[Tier] = Field(
        default_factory=lambda: [Tier.CITY, Tier.COUNTY, Tier.DISTRICT],
        max_length=6,
        description="Tiers of the producing institution whose results are recognised.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    require_accreditation: bool = Field(
        default=True,
        description="Only results of members whose Hospital sets spec.examAccredited are recognised.",
    )
    windows: list[RecognitionWindow] = Field(
        default_factory=list,
        max_length=256,
        description="Validity per test or per category; a test's own window wins. No window: never recognised.",
    )

    @field_validator("producer_tiers")
    @classmethod
    def _no_duplicate_tiers(cls, values: list[Tier]) -> list[Tier]:
        return unique_items(values)


class ConsortiumExchangeSpec(MedCloudModel):
    """Where the consortium's exchange finds its database (docs/exchange.md, docs/install.md)."""

    database_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description=(
            "Secret in the operator namespace holding the PostgreSQL connection URI (libpq) of the exchange's "
            "database, e.g. the <cluster>-app Secret CloudNativePG creates. Unset: the operator's setting "
            "MEDCLOUD_EXCHANGE_DATABASE_SECRET with {consortium} filled in."
        ),
    )
    database_secret_key: str = Field(
        default="uri",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of that Secret holding the URI (CloudNativePG's is uri).",
    )


_MAX_MEMBERS = 100

_CONSENT_RULE = CELRule(
    rule="!self.consentRequired || !has(self.sharing) || self.sharing.all(r, r.requireConsent)",
    message=(
        "a sharing rule cannot set requireConsent: false while spec.consentRequired is true; "
        "set consentRequired: false first if the alliance's agreement allows it"
    ),
    reason="FieldValueForbidden",
    field_path=".sharing",
)


class ConsortiumSpec(MedCloudModel):
    """Desired state of a consortium."""

    cel_rules: ClassVar[tuple[CELRule, ...]] = (
        CELRule(
            rule="self.leadHospital in self.members",
            message_expression="'leadHospital ' + self.leadHospital + ' must be listed in members'",
            field_path=".leadHospital",
        ),
        CELRule(
            rule=(
                "!has(self.sharing) || self.sharing.all(r, "
                f"r.from.all(h, h == '{ANY_MEMBER}' || h in self.members) && "
                f"r.to.all(h, h == '{ANY_MEMBER}' || h in self.members))"
            ),
            message_expression=(
                "'sharing rules may only name member hospitals (' + self.members.join(', ') + "
                "') or * for every member in from and to'"
            ),
            field_path=".sharing",
        ),
        _CONSENT_RULE,
    )

    display_name: PlainText = Field(
        min_length=1, max_length=128, description="Human-readable name of the alliance, e.g. Riverton Medical Alliance."
    )
    lead_hospital: HospitalName = Field(
        description="Name of the lead Hospital (usually the city hospital); it must be one of members."
    )
    members: list[HospitalName] = Field(
        min_length=1,
        max_length=_MAX_MEMBERS,
        description="Names of the member Hospitals, the lead included.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    sharing: list[SharingRule] = Field(
        default_factory=list,
        max_length=32,
        description="Which members share which record categories with whom.",
    )
    consent_required: bool = Field(
        default=True,
        description="Patient consent is required for every cross-institution read; rules cannot waive it while true.",
    )
    exam_recognition: ExamRecognition = Field(
        default_factory=ExamRecognition,
        description="Mutual recognition of exam results: recognised producers and validity windows.",
        json_schema_extra=empty_default(),
    )
    exchange: ConsortiumExchangeSpec = Field(
        default_factory=ConsortiumExchangeSpec,
        description="How the consortium's exchange is deployed: its database connection Secret.",
        json_schema_extra=empty_default(),
    )
    deidentification: DeidentificationPolicy | None = Field(
        default=None,
        description=(
            "How the exchange de-identifies a FHIR Bulk export for the city health commission "
            "(docs/analytics.md); without it the exchange exports nothing."
        ),
    )

    @field_validator("members")
    @classmethod
    def _no_duplicates(cls, values: list[str]) -> list[str]:
        return unique_items(values)

    def shares(self, publisher: str, category: str) -> bool:
        """Whether some sharing rule shares ``publisher``'s records of ``category`` with anyone."""
        return any(
            rule.category.value == category and (ANY_MEMBER in rule.from_ or publisher in rule.from_)
            for rule in self.sharing
        )

    def publishers(self) -> list[str]:
        """The members some rule shares from: the stores the consortium's exchange may read, and no others."""
        return sorted({m for m in self.members for rule in self.sharing if ANY_MEMBER in rule.from_ or m in rule.from_})

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        if self.lead_hospital not in self.members:
            raise ValueError(f"leadHospital {self.lead_hospital} must be listed in members")
        members = set(self.members)
        for rule in self.sharing:
            strangers = {h for h in (*rule.from_, *rule.to) if h != ANY_MEMBER and h not in members}
            if strangers:
                raise ValueError(f"sharing rules name hospitals that are not members: {', '.join(sorted(strangers))}")
            if self.consent_required and not rule.require_consent:
                raise ValueError("a sharing rule cannot set requireConsent: false while spec.consentRequired is true")
        return self


class ConsortiumExchangeStatus(MedCloudModel):
    """What the operator granted and provisioned for the consortium's exchange (docs/exchange.md)."""

    service_account: str = Field(
        description="The exchange's identity: a ServiceAccount in the operator namespace, as namespace/name."
    )
    publishers: list[str] = Field(
        default_factory=list,
        max_length=_MAX_MEMBERS,
        description="Members whose store keys and credentials the exchange may read: those spec.sharing shares from.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    endpoint: str | None = Field(
        default=None, description="In-cluster base URL of the exchange's FHIR server (its Service), e.g. .../fhir."
    )
    audit_bucket: str | None = Field(default=None, description="The exchange's object-locked audit bucket.")


class ConsortiumStatus(StatusBase):
    """Observed state of a consortium, written by the operator."""

    member_count: int | None = Field(default=None, ge=0, description="Number of member hospitals.")
    ready_members: int | None = Field(default=None, ge=0, description="Member hospitals whose tenant is Ready.")
    exchange: ConsortiumExchangeStatus | None = Field(
        default=None, description="The access the operator granted the consortium's exchange."
    )


class Consortium(Resource):
    """A city medical alliance: a lead hospital, its members, and which records they share under consent."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="consortia",
        singular="consortium",
        scope="Cluster",
        short_names=("cons",),
        printer_columns=(
            PrinterColumn("Lead", ".spec.leadHospital", description="Lead hospital"),
            PrinterColumn("Members", ".status.memberCount", type="integer", description="Member hospitals"),
            PrinterColumn("Ready Members", ".status.readyMembers", type="integer", description="Ready members"),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn(
                "Consent", ".spec.consentRequired", type="boolean", description="Consent required", priority=1
            ),
            PrinterColumn(
                "Exchange",
                '.status.conditions[?(@.type=="ExchangeReady")].status',
                description="The exchange serves: its pods pass readiness (PostgreSQL and MinIO answer)",
            ),
            PrinterColumn(
                "Endpoint", ".status.exchange.endpoint", description="The exchange's FHIR base URL", priority=1
            ),
            PrinterColumn(
                "Exchange Identity",
                ".status.exchange.serviceAccount",
                description="The exchange's identity (docs/exchange.md)",
                priority=1,
            ),
        ),
    )

    kind: Literal["Consortium"] = Field(default="Consortium", description="Kind of the object: Consortium.")
    spec: ConsortiumSpec = Field(description="Desired state of the consortium.")
    status: ConsortiumStatus | None = Field(default=None, description="Observed state, written by the operator.")


class ConsortiumCondition(StrEnum):
    """The conditions a Consortium reports."""

    READY = "Ready"
    """Every member Hospital exists and is Ready."""
    MEMBERSHIP_CONSISTENT = "MembershipConsistent"
    """Members name this consortium in their own spec.consortium, and no Hospital claims it unlisted."""
    EXCHANGE_READY = "ExchangeReady"
    """The consortium's exchange is deployed and its pods pass readiness (its database and audit store answer)."""


class ConsortiumReason(StrEnum):
    """Reasons only a Consortium reports."""

    ALL_MEMBERS_READY = "AllMembersReady"
    MEMBERS_MISSING = "MembersMissing"
    """A listed member has no Hospital: onboard it, or remove it from spec.members."""
    MEMBERS_NOT_READY = "MembersNotReady"
    """Listed Hospitals exist but are not Ready: their own conditions say why."""
    CONSISTENT = "Consistent"
    MEMBERSHIP_MISMATCH = "MembershipMismatch"
    """A member's spec.consortium names another (or none), so its network policies do not admit fellow
    members; or a Hospital names this consortium without being listed."""
    EXCHANGE_SERVING = "ExchangeServing"
    EXCHANGE_STARTING = "ExchangeStarting"
    """The exchange's Deployment is rolling out and has not been ready yet."""
    EXCHANGE_UNAVAILABLE = "ExchangeUnavailable"
    """It had served, and its pods now fail readiness: PostgreSQL or MinIO is unreachable (Degraded; heals itself)."""
    EXCHANGE_NOT_CONFIGURED = "ExchangeNotConfigured"
    """The operator has no MinIO or no key service URL, so no exchange is deployed."""
    DATABASE_SECRET_MISSING = "DatabaseSecretMissing"  # noqa: S105 - a reason, not a secret
    """The database connection Secret (spec.exchange.databaseSecret or the operator's default) or its key is absent."""
