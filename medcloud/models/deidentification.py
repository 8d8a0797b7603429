"""De-identification policy of a Consortium: what leaves the exchange in a FHIR Bulk export.

The policy is HIPAA Safe Harbor's list (45 CFR 164.514(b)(2)) made concrete
for FHIR: direct identifiers and free text are dropped, patient and resource
ids become keyed pseudonyms (one key per export purpose, so two purposes
cannot join their extracts), dates are reduced to the month or shifted per
patient, and the birth date becomes an age band (90 and over in one band).
The de-identifier itself is ``medcloud_exchange.bulk.deidentify``; this model
only says how it is configured and refuses a configuration that would let a
direct identifier through (pydantic here, the same rule in CEL in the CRD).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator

from medcloud.models.common import CELRule, DNS1123Subdomain, MedCloudModel, unique_items

DIRECT_IDENTIFIER_SEGMENTS = (
    "identifier",
    "name",
    "telecom",
    "photo",
    "contact",
    "line",
    "city",
    "district",
    "postalCode",
    "birthDate",
    "text",
    "note",
    "comment",
    "display",
    "data",
    "url",
    "title",
)
"""Element names that carry a direct identifier or free text wherever they occur in a resource
(``Reference.display`` and ``Attachment.title`` may hold a name; ``Attachment.data`` a whole document)."""

DIRECT_IDENTIFIER_RE = "(^|[.])(" + "|".join(DIRECT_IDENTIFIER_SEGMENTS) + ")([.]|$)"
"""RE2 and Python alike: a path one of whose segments is a direct identifier or free text."""

WHOLE_ADDRESS = "Patient.address"
"""Retaining the whole address keeps street and city; only ``.state`` and ``.country`` may be retained."""

REFUSED_RETAIN = "carries a direct identifier or free text, which Safe Harbor drops: it cannot be retained"

_RETAINED_RULE = CELRule(
    rule=f"self != '{WHOLE_ADDRESS}' && !self.matches('{DIRECT_IDENTIFIER_RE}')",
    message_expression=f"self + ' {REFUSED_RETAIN}'",
    reason="FieldValueForbidden",
)

RetainedElement = Annotated[
    str,
    Field(min_length=3, max_length=128, pattern=r"^[A-Z][A-Za-z]+(\.[a-z][A-Za-z]*)+$"),
    _RETAINED_RULE,
]
"""A FHIR element path the export keeps, resource type then element names, e.g. ``Patient.address.state``;
never a direct identifier (the rule runs per element, which keeps the API server's CEL cost estimate small)."""

PurposeName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class DateHandling(StrEnum):
    """What happens to every date, dateTime and instant of an exported resource."""

    MONTH = "month"
    """Reduced to the month: ``2026-11-17`` becomes ``2026-11``, an instant the first of its month at 00:00Z."""
    SHIFT = "shift"
    """Moved by a per-patient offset (keyed, within ``dateShiftMaxDays``): intervals kept, calendar dates not."""


def retained_identifiers(paths: list[str]) -> list[str]:
    """The retained paths Safe Harbor forbids keeping: direct identifiers, free text, the whole address."""
    return [p for p in paths if p == WHOLE_ADDRESS or re.search(DIRECT_IDENTIFIER_RE, p)]


class ExportPurpose(MedCloudModel):
    """One purpose data may be exported for; each has its own pseudonym key."""

    name: PurposeName = Field(description="Name of the purpose, e.g. commission-indicators; the export's _purpose.")
    description: str = Field(default="", max_length=256, description="What the extract is for, in a sentence.")


class DeidentificationPolicy(MedCloudModel):
    """How the exchange de-identifies a FHIR Bulk export (docs/analytics.md)."""

    purposes: list[ExportPurpose] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Purposes an export may name. Patient and resource ids become pseudonyms keyed per purpose: "
            "extracts of two purposes cannot be joined."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    dates: DateHandling = Field(
        default=DateHandling.MONTH,
        description="month: every date reduced to its month; shift: moved by a keyed per-patient offset.",
    )
    date_shift_max_days: int = Field(
        default=30, ge=1, le=365, description="With dates: shift, the largest offset in days either way."
    )
    age_band_years: int = Field(
        default=10,
        ge=1,
        le=30,
        description="Width of the age bands replacing the birth date; ages 90 and over form one band.",
    )
    device_store: DNS1123Subdomain | None = Field(
        default="device-data",
        description=(
            "RecordStore of each member where its DeviceGateways write device Observations; the export "
            "carries them (de-identified like the rest) and the exchange is granted that store's keys. "
            "Leave it out to export no device readings."
        ),
    )
    retain: list[RetainedElement] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Elements the de-identifier would drop but the export keeps, e.g. Patient.address.state. "
            "Direct identifiers and free text cannot be retained."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @field_validator("purposes")
    @classmethod
    def _unique_purposes(cls, values: list[ExportPurpose]) -> list[ExportPurpose]:
        unique_items([p.name for p in values])
        return values

    @field_validator("retain")
    @classmethod
    def _no_direct_identifiers(cls, values: list[str]) -> list[str]:
        unique_items(values)
        refused = retained_identifiers(values)
        if refused:
            raise ValueError("; ".join(f"{path} {REFUSED_RETAIN}" for path in refused))
        return values

    def purpose(self, name: str) -> ExportPurpose | None:
        """The purpose called ``name``, or None when the policy does not allow it."""
        return next((p for p in self.purposes if p.name == name), None)
