"""One insurance card (catalog app ``insurance-card``): the province card number is the patient's key everywhere.

A member registers the card once as a FHIR ``Coverage`` whose beneficiary is a contained ``Patient``
(the card among its identifiers, the demographics); any member then presents the card number and gets
the consortium ``Patient`` and its ``Coverage`` (payer, class, period) without retyping anything. The
card number is kept only as the exchange's blind index and inside the encrypted Coverage record.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fhir.resources.R4B.coverage import Coverage

from medcloud_exchange import index
from medcloud_exchange.app import FhirBody, FhirResponse, Reader, Writer
from medcloud_exchange.audit import Interaction
from medcloud_exchange.blind import blind_index
from medcloud_exchange.outcomes import FhirError, conflict, invalid, not_found, unprocessable
from medcloud_exchange.resources import (
    INSURANCE_CARD_SYSTEM_PREFIX,
    ORGANIZATION,
    PATIENT,
    Identifier,
    _aware,
    parse_patient_token,
)
from medcloud_exchange.service import Context
from medcloud_exchange.workflows.common import FHIR_ERRORS, Workflows, bundle, dump, services, validated

# Registering and presenting a card reads and writes the patient's medical record: the emr category.
CATEGORY = "emr"
# The province card: two capital letters (the issuing city) and 8 to 18 digits, e.g. RV0123456789.
CARD_NUMBER = re.compile(r"^[A-Z]{2}[0-9]{8,18}$")
PROVINCE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def card_problem(system: str, value: str) -> str | None:
    """Why ``system|value`` is not a province insurance card; None when it is one."""
    if not system.startswith(INSURANCE_CARD_SYSTEM_PREFIX):
        return f"the card's system must be {INSURANCE_CARD_SYSTEM_PREFIX}<province>, got {system!r}"
    if not PROVINCE.match(system.removeprefix(INSURANCE_CARD_SYSTEM_PREFIX)):
        return f"{system!r} does not name a province (lower-case letters, digits and '-')"
    if not CARD_NUMBER.match(value):
        return "an insurance card number is two capital letters and 8 to 18 digits"
    return None


def parse_card(token: str) -> Identifier:
    """The ``system|value`` a member presents; 400 when it is not a well-formed province card."""
    system, value = parse_patient_token(token)
    problem = card_problem(system, value)
    if problem:
        raise invalid(f"malformed insurance card: {problem}")
    return system, value


@dataclass(frozen=True)
class CoverageRow:
    id: uuid.UUID
    patient_id: uuid.UUID
    status: str
    period_start: datetime | None
    period_end: datetime | None
    registered_by: str


def refusal(row: CoverageRow | None, now: datetime) -> FhirError | None:
    """Why a presented card gets no patient: unknown (404), cancelled or outside its period (422); None: valid."""
    if row is None:
        return not_found("no Coverage is registered for this insurance card")
    if row.status != "active":
        return FhirError(422, "business-rule", f"the insurance card's Coverage is {row.status}")
    if row.period_end is not None and row.period_end < now:
        return FhirError(422, "business-rule", f"the insurance card expired on {row.period_end.date().isoformat()}")
    if row.period_start is not None and now < row.period_start:
        return FhirError(
            422, "business-rule", f"the insurance card is valid from {row.period_start.date().isoformat()}"
        )
    return None


@dataclass(frozen=True)
class Registration:
    card: Identifier
    identifiers: tuple[Identifier, ...]
    status: str
    start: datetime | None
    end: datetime | None
    resource: dict[str, Any]


def parse_registration(body: dict[str, Any]) -> Registration:
    """A Coverage whose beneficiary is a contained Patient carrying exactly one province insurance card."""
    coverage = validated(Coverage, body, "Coverage")
    reference = coverage.beneficiary.reference or ""
    patient = next(
        (c for c in coverage.contained or [] if c.get_resource_type() == "Patient" and f"#{c.id}" == reference), None
    )
    if patient is None or not patient.identifier:
        raise unprocessable("Coverage.beneficiary must be a contained Patient (#id) with its identifiers")
    identifiers = tuple(
        dict.fromkeys((str(i.system or "").strip(), str(i.value or "").strip()) for i in patient.identifier)
    )
    if any(not s or not v for s, v in identifiers):
        raise unprocessable("every identifier of the beneficiary needs a system and a value")
    cards = [i for i in identifiers if i[0].startswith(INSURANCE_CARD_SYSTEM_PREFIX)]
    if len(cards) != 1:
        raise unprocessable(f"the beneficiary must carry exactly one {INSURANCE_CARD_SYSTEM_PREFIX}<province> card")
    problem = card_problem(*cards[0])
    if problem:
        raise unprocessable(f"malformed insurance card: {problem}")
    period = coverage.period
    start = _aware(period.start) if period and period.start else None
    end = _aware(period.end) if period and period.end else None
    if start and end and end < start:
        raise unprocessable("Coverage.period ends before it starts")
    return Registration(cards[0], identifiers, str(coverage.status), start, end, dump(coverage))


def coverage_out(resource: dict[str, Any], row: CoverageRow) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Coverage and its Patient as a member gets them: the exchange's ids, the Patient no longer contained."""
    coverage = {k: v for k, v in resource.items() if k != "contained"}
    reference = str(resource["beneficiary"]["reference"]).removeprefix("#")
    contained = next(c for c in resource.get("contained", []) if c.get("id") == reference)
    patient = {**contained, "id": str(row.patient_id)}
    patient["managingOrganization"] = {"reference": ORGANIZATION + row.registered_by}
    coverage["id"] = str(row.id)
    coverage["beneficiary"] = {"reference": f"{PATIENT}{row.patient_id}"}
    coverage["meta"] = {"versionId": "1"}
    return coverage, patient


_COLUMNS = "id, patient_id, status, period_start, period_end, registered_by"


class InsuranceCards:
    def __init__(self, workflows: Workflows) -> None:
        self.wf = workflows

    def register(self, ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        registration = parse_registration(body)
        coverage_id = uuid.uuid4()
        blind = blind_index(self.wf.key, *registration.card)
        resource = {**registration.resource, "id": str(coverage_id)}
        with self.wf.db.transaction() as conn:
            patient = index.ensure_patient(conn, self.wf.key, registration.identifiers)
            if (
                registration.status == "active"
                and conn.execute(
                    "SELECT 1 FROM coverage WHERE card_blind = %s AND status = 'active'", (blind,)
                ).fetchone()
            ):
                raise conflict("this insurance card already has an active Coverage; present it instead")
            conn.execute(
                f"INSERT INTO coverage (card_blind, {_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",  # noqa: S608
                (blind, coverage_id, patient, registration.status, registration.start, registration.end, ctx.hospital),
            )
            self.wf.save(ctx, resource)
            self.wf.audit(
                ctx,
                Interaction.CREATE,
                ok=True,
                description="insurance card registered",
                patient=patient,
                objects=[f"Coverage/{coverage_id}"],
            )
        row = CoverageRow(coverage_id, patient, registration.status, registration.start, registration.end, ctx.hospital)
        return coverage_out(resource, row)

    def present(self, ctx: Context, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        card = parse_card(token)
        blind = blind_index(self.wf.key, *card)
        with self.wf.db.connection() as conn:
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM coverage WHERE card_blind = %s "  # noqa: S608 - fixed column list
                "ORDER BY (status = 'active') DESC, created_at DESC LIMIT 1",
                (blind,),
            ).fetchone()
        row = CoverageRow(*found) if found else None
        problem = refusal(row, datetime.now(UTC))
        if problem is not None:
            self.wf.audit(
                ctx,
                Interaction.SEARCH,
                ok=False,
                description=f"insurance card refused: {problem.diagnostics}",
                patient=row.patient_id if row else None,
                query="beneficiary.identifier=<insurance card>",
            )
            raise problem
        assert row is not None
        objects = [f"Coverage/{row.id}"]
        if row.registered_by != ctx.hospital:
            self.wf.authorise(ctx, row.patient_id, row.registered_by, CATEGORY, objects, "Coverage")
        resource = self.wf.load(row.registered_by, "Coverage", row.id)
        self.wf.audit(
            ctx,
            Interaction.SEARCH,
            ok=True,
            description=f"insurance card presented; Coverage of {row.registered_by}",
            patient=row.patient_id,
            objects=objects,
            query="beneficiary.identifier=<insurance card>",
        )
        return coverage_out(resource, row)


router = APIRouter(tags=["insurance-card"])
CardParam = Annotated[
    str,
    Query(
        alias="beneficiary.identifier",
        max_length=256,
        description="The presented card: urn:medcloud:insurance-card:<province>|<card number>",
    ),
]


@router.post("/fhir/Coverage", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def register_card(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    """Register a province insurance card: a Coverage whose beneficiary is a contained Patient."""
    coverage, _patient = services(request).cards.register(ctx, body)
    return FhirResponse(
        coverage,
        status_code=201,
        headers={"Location": f"/fhir/Coverage/{coverage['id']}/_history/1"},
    )


@router.get("/fhir/Coverage", response_class=FhirResponse, responses=FHIR_ERRORS)
def present_card(request: Request, ctx: Reader, card: CardParam) -> FhirResponse:
    """Present a card: the consortium Patient (included) and its Coverage; unknown 404, expired 422, malformed 400."""
    coverage, patient = services(request).cards.present(ctx, card)
    return FhirResponse(bundle([coverage], [patient], "Coverage"))
