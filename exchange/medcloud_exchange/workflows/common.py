"""What every clinical workflow shares, all of it the exchange's own: the caller's context, the decision point,
the BALP audit, the patient blind index, and FHIR resources kept encrypted in a member's RecordStore.

A workflow resource (Coverage, DiagnosticReport, ServiceRequest, Task, Appointment, Communication) is
stored whole only as an encrypted record in the store of the member that wrote it; PostgreSQL keeps the
few columns a workflow decides on (parties, status, codes, times, the opaque patient id), never a name,
an identifier or clinical text.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import Request
from psycopg import sql

from medcloud_exchange import index
from medcloud_exchange.audit import Interaction
from medcloud_exchange.outcomes import FHIR_JSON, FhirError, forbidden, invalid, not_found, unprocessable
from medcloud_exchange.resources import (
    ORGANIZATION,
    PATIENT,
    Identifier,
    _identifier,
    _validated,
    parse_patient_token,
    patient_id_of,
)
from medcloud_exchange.service import Context, Exchange

if TYPE_CHECKING:
    from medcloud_exchange.workflows.mount import Services

RECORD_FOLDER = "workflows"


def record_name(resource_type: str, resource_id: uuid.UUID, version: int | None = None) -> str:
    """Where a workflow resource (or one version of it) lives in its writer's RecordStore."""
    if version is None:
        return f"{RECORD_FOLDER}/{resource_type}/{resource_id}.json"
    return f"{RECORD_FOLDER}/{resource_type}/{resource_id}/_history/{version}.json"


def validated(model: type[Any], body: Mapping[str, Any], kind: str) -> Any:
    """The body as a FHIR R4 ``kind`` (422 when it is not one), exactly as the exchange checks its own."""
    return _validated(model, body, kind)


def dump(resource: Any) -> dict[str, Any]:
    return dict(resource.model_dump(mode="json", by_alias=True, exclude_none=True))


def organization_of(reference: str | None, members: Iterable[str], what: str) -> str:
    """The member hospital of ``Organization/<name>``; 422 for anything else."""
    name = (reference or "").removeprefix(ORGANIZATION)
    if not (reference or "").startswith(ORGANIZATION) or name not in set(members):
        raise unprocessable(f"{what} must be Organization/<member hospital>, got {reference!r}")
    return name


def reference_id(reference: str | None, kind: str, what: str) -> uuid.UUID:
    """The id of ``<kind>/<uuid>``; 422 for anything else."""
    raw = reference or ""
    if not raw.startswith(f"{kind}/"):
        raise unprocessable(f"{what} must be {kind}/<id>, got {reference!r}")
    try:
        return uuid.UUID(raw.removeprefix(f"{kind}/"))
    except ValueError:
        raise unprocessable(f"{what} {reference!r} is not a {kind} of this exchange") from None


@dataclass(frozen=True)
class Subject:
    """Who a workflow resource is about: a patient identifier, or ``Patient/<id>`` of the exchange."""

    identifier: Identifier | None
    reference: str | None


def subject_of(subject: Any, what: str) -> Subject:
    """The ``subject`` (or ``for``) of a resource: 422 unless it is an identifier or ``Patient/<id>``."""
    if subject is None:
        raise unprocessable(f"{what} must name the patient")
    if subject.identifier is not None:
        return Subject(_identifier(subject.identifier), None)
    if not (subject.reference or "").startswith(PATIENT):
        raise unprocessable(f"{what} is Patient/<id> of the exchange or a patient identifier")
    return Subject(None, str(subject.reference))


def path_id(raw: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(f"{kind}/{raw} is not known") from None


class Workflows:
    """The exchange, as the workflows use it: one object handed to every workflow's service."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.db = exchange.db
        self.key = exchange.settings.blind_key()

    # ------------------------------------------------------------------ records

    def save(self, ctx: Context, resource: Mapping[str, Any], version: int | None = None) -> None:
        """Write a workflow resource, encrypted, into the caller's RecordStore (its id names the record).

        The exchange holds the keys only of stores that ``spec.sharing`` shares from: a member outside every
        rule's ``from`` keeps no records here, and is told so (403) rather than the store's absence (503).
        """
        if ctx.hospital not in ctx.spec.publishers():
            raise forbidden(
                f"Consortium {self.exchange.settings.consortium} shares no records of {ctx.hospital}, so the "
                "exchange keeps none of its workflows: list it in a spec.sharing rule's from"
            )
        name = record_name(str(resource["resourceType"]), uuid.UUID(str(resource["id"])), version)
        self.exchange.stores.client(ctx.hospital).put_fhir(resource, name)

    def load(
        self, hospital: str, resource_type: str, resource_id: uuid.UUID, version: int | None = None
    ) -> dict[str, Any]:
        name = record_name(resource_type, resource_id, version)
        found: dict[str, Any] = self.exchange.stores.client(hospital).get_json(name)
        return found

    # ------------------------------------------------------------------ patients

    def patient_of_reference(self, conn: index.Conn, reference: str | None, what: str) -> uuid.UUID:
        """The exchange patient a resource names (``Patient/<id>``): 422 when it names none the exchange knows."""
        patient = reference_id(reference, PATIENT.rstrip("/"), what)
        if not index.patient_exists(conn, patient):
            raise unprocessable(f"{what} {reference} is not known to the exchange")
        return patient

    def patient_of_subject(self, conn: index.Conn, subject: Subject, what: str, *, create: bool) -> uuid.UUID:
        """The exchange patient of a subject; an unknown identifier is linked to a new patient when ``create``."""
        if subject.identifier is None:
            return self.patient_of_reference(conn, subject.reference, what)
        if create:
            return index.ensure_patient(conn, self.key, [subject.identifier])
        patient = index.patient_for(conn, self.key, [subject.identifier])
        if patient is None:
            raise unprocessable(f"{what} is not a patient known to the exchange")
        return patient

    def patient_of_selector(self, conn: index.Conn, reference: str | None, token: str | None) -> uuid.UUID | None:
        """The patient of a ``patient`` or ``patient.identifier`` parameter (exactly one); None when unknown."""
        if (reference is None) == (token is None):
            raise invalid("give exactly one of patient and patient.identifier")
        if token is not None:
            identifier: Identifier = parse_patient_token(token)
            return index.patient_for(conn, self.key, [identifier])
        patient = patient_id_of(str(reference))
        return patient if index.patient_exists(conn, patient) else None

    # ------------------------------------------------------------------ decision and audit

    def authorise(
        self, ctx: Context, patient: uuid.UUID, publisher: str, category: str, objects: list[str], action: str
    ) -> None:
        """The exchange's decision for reading ``publisher``'s ``category`` records of ``patient``, audited.

        Outside ``spec.sharing`` the object does not exist for the reader (404); shareable but refused by
        consent: 403. Either way the refusal is audited before it is answered.
        """
        with self.db.connection() as conn:
            consents = index.consents_of(conn, patient)
        decision = self.exchange.decide(ctx, patient, consents)
        pair = (publisher, category)
        if pair in decision.permitted:
            return
        shareable = pair in decision.shareable
        self.audit(
            ctx,
            Interaction.READ,
            ok=False,
            description=decision.reason if shareable else "not shared with this member",
            patient=patient,
            objects=objects,
        )
        if shareable:
            raise forbidden(f"consent refuses: {decision.reason}")
        raise not_found(f"{objects[0] if objects else action} is not known")

    def audit(
        self,
        ctx: Context,
        interaction: Interaction,
        *,
        ok: bool,
        description: str,
        patient: uuid.UUID | None,
        objects: Iterable[str] = (),
        query: str | None = None,
    ) -> None:
        """One BALP RESTful AuditEvent, through the exchange's own helper (written before the answer)."""
        self.exchange._audit(
            interaction, None, ctx, ok=ok, description=description, patient=patient, objects=objects, query=query
        )


FHIR_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": "OperationOutcome", "content": {FHIR_JSON: {}}}
    for code in (400, 401, 403, 404, 409, 412, 422, 503)
}


def bundle(matches: list[dict[str, Any]], includes: list[dict[str, Any]], self_url: str) -> dict[str, Any]:
    """A searchset: the matches (counted in total) and the resources they reference (search mode include)."""
    entries = [(r, "match") for r in matches] + [(r, "include") for r in includes]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
            for r, mode in entries
        ],
    }


def services(request: Request) -> Services:
    """The workflows' services of this app (made once by :func:`medcloud_exchange.workflows.mount.include`)."""
    found: Services = request.app.state.workflows
    return found


def steps_of(party: Any, *moves: tuple[Any, Any]) -> dict[tuple[Any, Any], Any]:
    """A step table's rows that belong to ``party``: each ``(current, target)`` move is ``party``'s."""
    return dict.fromkeys(moves, party)


def transition_problem(
    steps: Mapping[tuple[Any, Any], Any], current: Any, target: Any, roles: set[Any], anyone: Any, what: str
) -> tuple[int, str] | None:
    """Why a party with ``roles`` may not move a ``what`` from ``current`` to ``target`` under ``steps``
    (status code, diagnostic); None when it may. ``anyone`` is the role that either party holds."""
    if not roles:
        return 404, f"the {what} is not one of this member's"
    needed = steps.get((current, target))
    if needed is None:
        allowed = sorted(t.value for (c, t) in steps if c is current)
        return 409, f"a {current.value} {what} cannot become {target.value} (next: {', '.join(allowed) or 'none'})"
    if needed is not anyone and needed not in roles:
        return 403, f"only the {needed.value} may move a {current.value} {what} to {target.value}"
    return None


def refused(problem: tuple[int, str]) -> FhirError:
    status, diagnostics = problem
    return FhirError(status, {403: "forbidden", 404: "not-found"}.get(status, "conflict"), diagnostics)


@dataclass(frozen=True)
class Stepped:
    """A stateful workflow row (Task, Appointment) as its step found it, locked in the step's transaction."""

    table: str
    """``task`` or ``appointment``: the index table, which keeps status, writer and version."""
    what: str
    """The FHIR resource type, for diagnostics."""
    id: uuid.UUID
    version: int


def take_step(
    conn: index.Conn,
    row: Stepped,
    target: StrEnum,
    writer: str,
    *,
    problem: tuple[int, str] | None,
    expected_version: int | None,
    on_refused: Callable[[tuple[int, str]], None] | None = None,
) -> int:
    """Move the locked ``row`` to ``target`` as ``writer``, once the step table's ``problem`` is None and the
    caller's If-Match (``expected_version``) names the current version; the new version. A refused step
    is reported to ``on_refused`` (its audit) before it is raised; a stale one is 412."""
    if problem is not None:
        if on_refused is not None:
            on_refused(problem)
        raise refused(problem)
    if expected_version is not None and expected_version != row.version:
        raise FhirError(412, "conflict", f"{row.what}/{row.id} is at version {row.version}, not {expected_version}")
    version = row.version + 1
    conn.execute(
        sql.SQL("UPDATE {} SET status = %s, written_by = %s, version = %s, updated_at = now() WHERE id = %s").format(
            sql.Identifier(row.table)
        ),
        (target.value, writer, version, row.id),
    )
    return version


def if_match_version(if_match: str | None) -> int | None:
    """The version an ``If-Match: W/"<n>"`` header expects; None without one; 400 when malformed."""
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise invalid(f'If-Match must be W/"<versionId>", got {if_match!r}')
    return int(raw)
