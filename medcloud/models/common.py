"""Types shared by every MedCloud kind: names, quantities, durations, conditions, status.

The models are the single source of truth for the custom resources: field
descriptions become ``kubectl explain`` text, ``Field`` constraints become
OpenAPI validation and :class:`CELRule` annotations become
``x-kubernetes-validations`` in ``crds/*.yaml`` (see :mod:`medcloud.crdgen`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Underflow,
    localcontext,
)
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

T = TypeVar("T")

GROUP = "medcloud.io"
VERSION = "v1alpha1"
API_VERSION: Literal["medcloud.io/v1alpha1"] = "medcloud.io/v1alpha1"
CATEGORY = "medcloud"

# ---------------------------------------------------------------------------
# CEL rules and CRD facts
# ---------------------------------------------------------------------------

CELReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]


@dataclass(frozen=True)
class CELRule:
    """One ``x-kubernetes-validations`` entry.

    Used two ways: as ``Annotated`` metadata on a field (the rule's ``self`` is
    that field) or in a model's ``cel_rules`` (``self`` is the whole object).
    Rules that mention ``oldSelf`` are transition rules: the API server runs
    them on updates only, comparing with the stored object.
    """

    rule: str
    message: str | None = None
    message_expression: str | None = None
    reason: CELReason | None = None
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule}
        if self.message is not None:
            out["message"] = self.message
        if self.message_expression is not None:
            out["messageExpression"] = self.message_expression
        if self.reason is not None:
            out["reason"] = self.reason
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out

    def __get_pydantic_json_schema__(
        self, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        _append_rules(schema, (self,))
        return schema


def _append_rules(schema: JsonSchemaValue, rules: tuple[CELRule, ...]) -> None:
    if rules:
        schema.setdefault("x-kubernetes-validations", []).extend(rule.to_schema() for rule in rules)


def immutable(field_name: str, why: str) -> CELRule:
    """A transition rule that keeps a field's first value forever."""
    return CELRule(
        rule="self == oldSelf",
        message=f"{field_name} is immutable: {why}",
        reason="FieldValueForbidden",
    )


def only_grows(field_name: str, request: str) -> CELRule:
    """A transition rule for a counter that asks for something each time it is raised (a rotation)."""
    return CELRule(
        rule="self >= oldSelf",
        message=f"{field_name} can only be increased; raise it by one to request {request}",
        reason="FieldValueForbidden",
    )


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry: what ``kubectl get`` shows."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


PHASE_COLUMN = PrinterColumn("Phase", ".status.phase", description="Lifecycle phase reported by the operator")
READY_COLUMN = PrinterColumn(
    "Ready",
    '.status.conditions[?(@.type=="Ready")].status',
    description="Status of the Ready condition: True, False or Unknown",
)


@dataclass(frozen=True)
class CRDInfo:
    """The facts about a kind that live in its CRD rather than in its schema."""

    plural: str
    singular: str
    scope: Literal["Cluster", "Namespaced"]
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = (CATEGORY,)
    group: str = GROUP
    version: str = VERSION

    @property
    def name(self) -> str:
        """The CRD's own name, ``<plural>.<group>``."""
        return f"{self.plural}.{self.group}"

    @property
    def namespaced(self) -> bool:
        return self.scope == "Namespaced"


# ---------------------------------------------------------------------------
# Base models
# ---------------------------------------------------------------------------


class MedCloudModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, no unknown fields."""

    model_config = ConfigDict(
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
    )

    # Rules on the whole object (self is the object). A ClassVar keeps them
    # out of the schema's properties; __get_pydantic_json_schema__ puts them in.
    cel_rules: ClassVar[tuple[CELRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        _append_rules(target, cls.__dict__.get("cel_rules", ()))
        return schema


def empty_default() -> dict[str, Any]:
    """Schema extra for a nested object that defaults to ``{}``.

    The API server only applies the defaults of nested fields when their
    parent object exists; ``default: {}`` makes it exist, so a user who leaves
    out ``quota`` still gets every quota default.
    """
    return {"default": {}}


def unique_items(values: list[T]) -> list[T]:
    """Reject duplicates, as the API server does for ``x-kubernetes-list-type: set``."""
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate values: {', '.join(duplicates)}")
    return values


# ---------------------------------------------------------------------------
# Scalar types
# ---------------------------------------------------------------------------

DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

DNS1123Label = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL_PATTERN)]
"""A DNS-1123 label: lowercase letters, digits and '-', at most 63 characters (namespace names)."""

DNS1123Subdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN)]
"""A DNS-1123 subdomain: dot-separated labels, at most 253 characters (most object names)."""


def _printable(value: str) -> str:
    # A NUL or other control character in a name shown to people breaks
    # terminals, logs and C-string consumers (pydantic itself refuses lone surrogates).
    if any(char < " " or char == "\x7f" for char in value):
        raise ValueError("must not contain control characters (such as NUL)")
    return value


PLAIN_TEXT_RULE = CELRule(
    rule=r"!self.matches('[\\x00-\\x1f\\x7f]')",
    message="must not contain control characters (such as NUL)",
)

PlainText = Annotated[str, AfterValidator(_printable), PLAIN_TEXT_RULE]
"""Free text people read (display names, user names): any characters but control characters."""


HOSPITAL_NAME_MAX = 54
HOSPITAL_NAMESPACE_PREFIX = "hospital-"

HospitalName = Annotated[str, Field(min_length=1, max_length=HOSPITAL_NAME_MAX, pattern=DNS1123_LABEL_PATTERN)]
"""A Hospital's name: a DNS-1123 label short enough that ``hospital-<name>`` is one too."""


def hospital_namespace(hospital_name: str) -> str:
    """The tenant namespace of a hospital, by convention ``hospital-<name>``."""
    return f"{HOSPITAL_NAMESPACE_PREFIX}{hospital_name}"


# A Kubernetes quantity without a sign (every MedCloud quantity is a size or
# an amount of CPU; a negative one is always a mistake) and with an integer
# exponent, the only kind the API server's quantity parser accepts.
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"


def _quantity_to_str(value: object) -> object:
    # YAML `cpu: 4` arrives as an int; keep one Python type for readers.
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity such as ``500m``, ``4``, ``64Gi`` or ``2Ti`` (integer or string)."""

_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
# Quantities are computed exactly or not at all: no rounding, no overflow to infinity, no underflow to 0.
_EXACT = Context(prec=64, traps=[InvalidOperation, Overflow, Underflow, Inexact, DivisionByZero])
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: str | int) -> Decimal:
    """The number a Kubernetes quantity stands for, e.g. ``"128Mi"`` -> 134217728."""
    text = str(value)
    if not _QUANTITY_RE.match(text):
        raise ValueError(f"not a quantity: {text!r}")
    if text[-2:] in _BINARY_SUFFIXES:
        return Decimal(text[:-2]) * _BINARY_SUFFIXES[text[-2:]]
    number = re.match(r"^[0-9.]+([eE][+-]?[0-9]+)?", text)
    assert number is not None  # the pattern above guarantees a leading number
    suffix = text[number.end() :]
    try:
        with localcontext(_EXACT):
            return Decimal(number.group(0)).scaleb(_DECIMAL_SUFFIXES[suffix])
    except DecimalException as exc:
        # An exponent beyond what Decimal holds exactly ("1e999999999" would be
        # an error, "1e-999999999" silently 0): refuse it instead of a 500 or a
        # value other than the one written.
        raise ValueError(f"{text!r} is beyond any quantity MedCloud accepts") from exc


# The API server parses any quantity but stores it as an int64 of its
# smallest unit: 1e309 becomes 9223372036854775807 and 1e-309 rounds up, so
# what runs is not what was written (and the operator would "correct" it on
# every reconcile). Every MedCloud quantity is therefore bounded, with the
# same limits in the model (for the control API) and in CEL (for kubectl).
CPU_MAXIMUM = "100000"
CPU_MINIMUM = "1m"
BYTES_MAXIMUM = "1Ei"
# Whole millicores only: the API server rounds finer amounts up, and then the
# stored quota would differ from the spec forever.
CPU_PATTERN = r"^(([0-9]{1,6}([.][0-9]{1,3})?)|([0-9]{1,9}m))$"
_CPU_RE = re.compile(CPU_PATTERN)
CPU_BOUNDS = (
    "CPU must be cores with at most 3 decimals or whole millicores (e.g. 2.5 or 500m), "
    f"0 or {CPU_MINIMUM} to {CPU_MAXIMUM}"
)
BYTES_BOUNDS = f"a size must be a whole number of bytes, at most {BYTES_MAXIMUM}"


def _cpu_in_range(value: str) -> str:
    amount = parse_quantity(value)
    in_range = amount == 0 or parse_quantity(CPU_MINIMUM) <= amount <= parse_quantity(CPU_MAXIMUM)
    if not _CPU_RE.match(value) or not in_range:
        raise ValueError(f"{value} is out of range: {CPU_BOUNDS}")
    return value


def _bytes_in_range(value: str) -> str:
    amount = parse_quantity(value)
    if amount != amount.to_integral_value() or amount > parse_quantity(BYTES_MAXIMUM):
        raise ValueError(f"{value} is out of range: {BYTES_BOUNDS}")
    return value


_CPU_RULE = CELRule(
    rule=(
        f"string(self).matches('{CPU_PATTERN}') && (quantity(string(self)).compareTo(quantity('0')) == 0 || "
        f"(quantity(string(self)).compareTo(quantity('{CPU_MINIMUM}')) >= 0 && "
        f"quantity(string(self)).compareTo(quantity('{CPU_MAXIMUM}')) <= 0))"
    ),
    message=CPU_BOUNDS,
)
# isInteger() is false for any binary-suffixed quantity (the API server keeps
# those as decimals), so wholeness is checked on the value as a double; the
# bound comes first so that int() never sees a value beyond int64.
_BYTES_RULE = CELRule(
    rule=(
        f"quantity(string(self)).compareTo(quantity('{BYTES_MAXIMUM}')) <= 0 && "
        "double(int(quantity(string(self)).asApproximateFloat())) == quantity(string(self)).asApproximateFloat()"
    ),
    message=BYTES_BOUNDS,
)

CpuQuantity = Annotated[Quantity, AfterValidator(_cpu_in_range), _CPU_RULE]
"""An amount of CPU such as ``500m`` or ``2.5``: whole millicores, 0 or between 1m and 100000."""

ByteQuantity = Annotated[Quantity, AfterValidator(_bytes_in_range), _BYTES_RULE]
"""A size such as ``256Mi`` or ``2Ti``: whole bytes, at most 1Ei."""


DURATION_PATTERN = r"^[1-9][0-9]{0,4}[dy]$"
_DURATION_RE = re.compile(DURATION_PATTERN)
DAYS_PER_YEAR = 365

# The length bound keeps CEL cost estimates small; it is loose enough that a
# user who writes "30 years" is told about the pattern, not about length.
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=16)]
"""A whole number of days (``90d``) or years (``30y``); a year counts as 365 days."""


def duration_days(value: str) -> int:
    """Days in a :data:`Duration`; the CEL rules in the CRDs compute the same number."""
    if not _DURATION_RE.match(value):
        raise ValueError(f"not a duration like 90d or 30y: {value!r}")
    amount = int(value[:-1])
    return amount * DAYS_PER_YEAR if value.endswith("y") else amount


def duration_days_cel(expr: str) -> str:
    """CEL that computes :func:`duration_days` of the string expression ``expr``."""
    return f"(int({expr}.substring(0, size({expr}) - 1)) * ({expr}.endsWith('y') ? {DAYS_PER_YEAR} : 1))"


def _limit_rule(resource: str) -> CELRule:
    requests, limits = f"self.requests.{resource}", f"self.limits.{resource}"
    return CELRule(
        rule=(
            f"!has(self.requests) || !has(self.limits) || !has({requests}) || !has({limits}) || "
            f"quantity(string({limits})).compareTo(quantity(string({requests}))) >= 0"
        ),
        message=f"resources.limits.{resource} must be at least resources.requests.{resource}",
        field_path=f".limits.{resource}",
    )


class ComputeResources(MedCloudModel):
    """CPU and memory amounts of one container."""

    cpu: CpuQuantity | None = Field(default=None, description="CPU, e.g. 250m or 1.")
    memory: ByteQuantity | None = Field(default=None, description="Memory, e.g. 256Mi or 1Gi.")


class ResourceRequirements(MedCloudModel):
    """Compute resources of a workload's main container: what it is guaranteed and what it may use."""

    cel_rules: ClassVar[tuple[CELRule, ...]] = (_limit_rule("cpu"), _limit_rule("memory"))

    requests: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="100m", memory="128Mi"),
        description="Resources the scheduler reserves for the container.",
        json_schema_extra={"default": {"cpu": "100m", "memory": "128Mi"}},
    )
    limits: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="1", memory="512Mi"),
        description="Most the container may use; at least the requests.",
        json_schema_extra={"default": {"cpu": "1", "memory": "512Mi"}},
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Self:
        for resource in ("cpu", "memory"):
            request, limit = getattr(self.requests, resource), getattr(self.limits, resource)
            if request is not None and limit is not None and parse_quantity(limit) < parse_quantity(request):
                raise ValueError(f"resources.limits.{resource} must be at least resources.requests.{resource}")
        return self


# ---------------------------------------------------------------------------
# Conditions and status
# ---------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Phase(StrEnum):
    """Coarse lifecycle phase; conditions carry the detail."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    TERMINATING = "Terminating"
    FAILED = "Failed"


CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(MedCloudModel):
    """One aspect of the current state, in the shape of Kubernetes' metav1.Condition."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Type of condition in CamelCase, for example Ready, Provisioned or KeyRotated.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="Programmatic identifier in CamelCase for the last transition, for example BucketCreated.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="Human-readable details about the last transition; may be empty.",
    )
    last_transition_time: AwareDatetime = Field(
        description="When the condition last changed status (RFC 3339, with a time zone).",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation the condition was set for; older than the object's means stale.",
    )


class StatusBase(MedCloudModel):
    """Fields every MedCloud status has; the operator writes them, users do not."""

    phase: Phase | None = Field(
        default=None,
        description="Lifecycle phase: Pending, Provisioning, Ready, Degraded, Terminating or Failed.",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation of the spec the operator last acted on.",
    )
    observed_digest: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "Digest of the spec and the operator settings the operator last reconciled (hex SHA-256): while it, "
            "observedGeneration and the phase Ready stand, the operator's periodic safety net sends no request."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Current conditions of the resource; the Ready condition summarises them.",
        # One entry per type, as with metav1.Condition: server-side apply merges by type.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of the given type, if the operator has set it."""
        return next((c for c in self.conditions if c.type == type_), None)

    def is_ready(self) -> bool:
        ready = self.condition("Ready")
        return ready is not None and ready.status is ConditionStatus.TRUE


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata MedCloud reads and writes.

    Unlike the spec and status models this keeps unknown fields: objects read
    back from the API server carry managedFields, deletionTimestamp and more,
    which must survive a parse and re-serialise.
    """

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="allow")

    name: str | None = Field(default=None, description="Object name, unique within its scope.")
    namespace: str | None = Field(default=None, description="Namespace of a namespaced object.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    uid: str | None = Field(default=None, description="Server-assigned unique id.")
    resource_version: str | None = Field(default=None, description="Server-assigned version, for updates.")
    generation: int | None = Field(default=None, description="Server-assigned spec generation.")
    creation_timestamp: datetime | None = Field(default=None, description="Server-assigned creation time.")
    finalizers: list[str] = Field(default_factory=list, description="Finalizers that block deletion.")


# ---------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------

API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. "
    "Servers should convert recognized schemas to the latest internal value, and may reject "
    "unrecognized values."
)


class Resource(MedCloudModel):
    """Base of the five kinds: apiVersion, metadata and the CRD facts.

    Subclasses declare ``kind``, ``spec`` and ``status`` (each with its own
    description, which ``kubectl explain`` shows) and set ``crd``.
    """

    crd: ClassVar[CRDInfo]

    api_version: Literal["medcloud.io/v1alpha1"] = Field(default=API_VERSION, description=API_VERSION_DESCRIPTION)
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")

    def to_manifest(self) -> dict[str, Any]:
        """The object as the API server wants it: camelCase keys, JSON values, no nulls."""
        manifest: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        meta = manifest.get("metadata", {})
        for key in ("labels", "annotations", "finalizers"):
            if not meta.get(key):
                meta.pop(key, None)
        return manifest
