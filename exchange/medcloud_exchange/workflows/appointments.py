"""Appointments (catalog app ``appointments``): Schedules and Slots published by members, Appointments booked
on them for a patient, and a virtual session for a consultation.

An Appointment moves proposed -> booked -> arrived -> fulfilled, or to cancelled (either party, before it
happens) or noshow (the host). Two bookings of one Slot never both succeed: the slot's row is locked for the
booking, and a partial unique index on the live appointments of a slot makes a second one impossible even
if the lock were bypassed (docs/apps/appointments.md). A booking may name the referral or consultation it
is for (``basedOn``), which is how a referral carries its appointment.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query, Request
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot

from medcloud.models.consortium import SharingCategory
from medcloud_exchange.app import FhirBody, FhirResponse, IfMatch, Reader, ResourceId, Writer
from medcloud_exchange.audit import Interaction
from medcloud_exchange.outcomes import conflict, forbidden, not_found, unprocessable
from medcloud_exchange.resources import ORGANIZATION, PATIENT, _aware
from medcloud_exchange.service import Context
from medcloud_exchange.workflows.common import (
    FHIR_ERRORS,
    Stepped,
    Workflows,
    bundle,
    dump,
    if_match_version,
    organization_of,
    path_id,
    reference_id,
    services,
    steps_of,
    take_step,
    transition_problem,
    validated,
)
from medcloud_exchange.workflows.requests import request_row

VIRTUAL = ("http://terminology.hl7.org/CodeSystem/location-physical-type", "vi")
CATEGORY = SharingCategory.EMR.value


class AppointmentStatus(StrEnum):
    PROPOSED = "proposed"
    BOOKED = "booked"
    ARRIVED = "arrived"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"


class Role(StrEnum):
    HOST = "host"
    """The member whose Slot (or session) it is."""
    BOOKER = "booker"
    EITHER = "either"


A = AppointmentStatus
APPOINTMENT_STEPS: dict[tuple[AppointmentStatus, AppointmentStatus], Role] = {
    **steps_of(Role.HOST, (A.PROPOSED, A.BOOKED), (A.BOOKED, A.ARRIVED), (A.BOOKED, A.NOSHOW)),
    **steps_of(Role.HOST, (A.BOOKED, A.FULFILLED), (A.ARRIVED, A.FULFILLED)),
    **steps_of(Role.EITHER, (A.PROPOSED, A.CANCELLED), (A.BOOKED, A.CANCELLED)),
}
FREES_THE_SLOT = (A.CANCELLED, A.NOSHOW)


def appointment_step_problem(
    current: AppointmentStatus, target: AppointmentStatus, roles: set[Role]
) -> tuple[int, str] | None:
    """Why a member with ``roles`` may not move an Appointment from ``current`` to ``target``; None: it may."""
    return transition_problem(APPOINTMENT_STEPS, current, target, roles, Role.EITHER, "Appointment")


# --------------------------------------------------------------------------- schedules and slots


def schedule_out(row: tuple[Any, ...]) -> dict[str, Any]:
    schedule_id, owner, system, code, display, comment = row
    out: dict[str, Any] = {
        "resourceType": "Schedule",
        "id": str(schedule_id),
        "active": True,
        "actor": [{"reference": f"{ORGANIZATION}{owner}"}],
    }
    if code:
        out["serviceType"] = [
            {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}
        ]
    if comment:
        out["comment"] = comment
    return out


def slot_out(row: tuple[Any, ...]) -> dict[str, Any]:
    slot_id, schedule_id, _owner, status, starts, ends = row
    return {
        "resourceType": "Slot",
        "id": str(slot_id),
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": status,
        "start": starts.isoformat(),
        "end": ends.isoformat(),
    }


@dataclass(frozen=True)
class Booking:
    status: AppointmentStatus
    slot: uuid.UUID | None
    patient_reference: str
    based_on: uuid.UUID | None
    starts: datetime | None
    ends: datetime | None
    virtual: bool
    resource: dict[str, Any]


def parse_booking(body: dict[str, Any]) -> Booking:
    appointment = validated(Appointment, body, "Appointment")
    try:
        status = AppointmentStatus(appointment.status)
    except ValueError:
        raise unprocessable("a new Appointment is proposed or booked") from None
    if status not in (A.PROPOSED, A.BOOKED):
        raise unprocessable("a new Appointment is proposed or booked")
    slots = [reference_id(s.reference, "Slot", "Appointment.slot") for s in appointment.slot or []]
    if len(slots) > 1:
        raise unprocessable("an Appointment books one Slot")
    patients = [
        p.actor.reference
        for p in appointment.participant or []
        if p.actor is not None and (p.actor.reference or "").startswith(PATIENT)
    ]
    if len(patients) != 1:
        raise unprocessable("Appointment.participant names exactly one Patient/<id> of the exchange")
    based = [reference_id(b.reference, "ServiceRequest", "Appointment.basedOn") for b in appointment.basedOn or []]
    if len(based) > 1:
        raise unprocessable("an Appointment is based on one ServiceRequest")
    locations = {c.id: c for c in appointment.contained or [] if c.get_resource_type() == "Location"}
    virtual = any(
        coding.system == VIRTUAL[0] and coding.code == VIRTUAL[1]
        for location in locations.values()
        for coding in (location.physicalType.coding or [] if location.physicalType else [])
    )
    if virtual and not any(t.system == "url" for loc in locations.values() for t in loc.telecom or []):
        raise unprocessable("a virtual Location carries the session's address (telecom system url)")
    starts = _aware(appointment.start) if appointment.start else None
    ends = _aware(appointment.end) if appointment.end else None
    if not slots and (starts is None or ends is None or ends <= starts):
        raise unprocessable("an Appointment without a Slot gives its start and end")
    return Booking(
        status,
        slots[0] if slots else None,
        str(patients[0]),
        based[0] if based else None,
        starts,
        ends,
        virtual,
        dump(appointment),
    )


@dataclass(frozen=True)
class AppointmentRow:
    id: uuid.UUID
    slot_id: uuid.UUID | None
    patient_id: uuid.UUID
    booked_by: str
    host: str
    service_request_id: uuid.UUID | None
    status: AppointmentStatus
    written_by: str
    version: int

    def roles(self, hospital: str) -> set[Role]:
        return {r for r, who in ((Role.HOST, self.host), (Role.BOOKER, self.booked_by)) if who == hospital}


_APPOINTMENT = "id, slot_id, patient_id, booked_by, host, service_request_id, status, written_by, version"


def _appointment_row(found: Any) -> AppointmentRow:
    return AppointmentRow(
        found[0], found[1], found[2], found[3], found[4], found[5], AppointmentStatus(found[6]), found[7], found[8]
    )


class Appointments:
    def __init__(self, workflows: Workflows) -> None:
        self.wf = workflows

    def publish_schedule(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        schedule = validated(Schedule, body, "Schedule")
        owners = [
            organization_of(a.reference, ctx.spec.members, "Schedule.actor")
            for a in schedule.actor
            if (a.reference or "").startswith(ORGANIZATION)
        ]
        if owners != [ctx.hospital]:
            raise forbidden(f"{ctx.hospital} publishes its own Schedules (one actor Organization/{ctx.hospital})")
        coding = next((c for t in schedule.serviceType or [] for c in t.coding or [] if c.code), None)
        row = (
            uuid.uuid4(),
            ctx.hospital,
            coding.system if coding else None,
            coding.code if coding else None,
            coding.display if coding else None,
            schedule.comment,
        )
        with self.wf.db.transaction() as conn:
            conn.execute(
                "INSERT INTO schedule (id, owner, service_system, service_code, service_display, comment) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                row,
            )
        return schedule_out(row)

    def schedules(self, owner: str | None) -> list[dict[str, Any]]:
        with self.wf.db.connection() as conn:
            rows = conn.execute(
                "SELECT id, owner, service_system, service_code, service_display, comment FROM schedule "
                "WHERE (%s::text IS NULL OR owner = %s) ORDER BY created_at LIMIT 200",
                (owner, owner),
            ).fetchall()
        return [schedule_out(r) for r in rows]

    def publish_slot(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        slot = validated(Slot, body, "Slot")
        schedule_id = reference_id(slot.schedule.reference, "Schedule", "Slot.schedule")
        if slot.status not in ("free", "busy-unavailable"):
            raise unprocessable("a new Slot is free or busy-unavailable")
        starts, ends = _aware(slot.start), _aware(slot.end)
        if ends <= starts:
            raise unprocessable("a Slot ends after it starts")
        row = (uuid.uuid4(), schedule_id, ctx.hospital, str(slot.status), starts, ends)
        with self.wf.db.transaction() as conn:
            owner = conn.execute("SELECT owner FROM schedule WHERE id = %s", (schedule_id,)).fetchone()
            if owner is None or owner[0] != ctx.hospital:
                raise forbidden(f"Schedule/{schedule_id} is not one of {ctx.hospital}'s")
            conn.execute(
                "INSERT INTO slot (id, schedule_id, owner, status, starts, ends) VALUES (%s, %s, %s, %s, %s, %s)", row
            )
        return slot_out(row)

    def slots(self, schedule: uuid.UUID, status: str | None) -> list[dict[str, Any]]:
        with self.wf.db.connection() as conn:
            rows = conn.execute(
                "SELECT id, schedule_id, owner, status, starts, ends FROM slot WHERE schedule_id = %s "
                "AND (%s::text IS NULL OR status = %s) ORDER BY starts LIMIT 500",
                (schedule, status, status),
            ).fetchall()
        return [slot_out(r) for r in rows]

    # ------------------------------------------------------------------ appointments

    def book(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        booking = parse_booking(body)
        appointment_id = uuid.uuid4()
        try:
            with self.wf.db.transaction() as conn:
                patient = self.wf.patient_of_reference(conn, booking.patient_reference, "Appointment.participant")
                host, starts, ends = ctx.hospital, booking.starts, booking.ends
                if booking.slot is not None:
                    slot = conn.execute(
                        "SELECT owner, status, starts, ends FROM slot WHERE id = %s FOR UPDATE", (booking.slot,)
                    ).fetchone()
                    if slot is None:
                        raise unprocessable(f"Slot/{booking.slot} is not known")
                    host, state, starts, ends = slot
                    if state != "free":
                        raise conflict(f"Slot/{booking.slot} is {state}: it is booked already")
                    conn.execute("UPDATE slot SET status = 'busy' WHERE id = %s", (booking.slot,))
                if booking.based_on is not None:
                    request = request_row(conn, booking.based_on)
                    if request is None or ctx.hospital not in (request.requester, request.performer):
                        raise unprocessable(f"ServiceRequest/{booking.based_on} is not one of {ctx.hospital}'s")
                    if request.patient_id != patient:
                        raise unprocessable("the Appointment's patient is not its ServiceRequest's")
                conn.execute(
                    f"INSERT INTO appointment ({_APPOINTMENT}, starts, ends) "  # noqa: S608 - fixed columns
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s)",
                    (
                        appointment_id,
                        booking.slot,
                        patient,
                        ctx.hospital,
                        host,
                        booking.based_on,
                        booking.status.value,
                        ctx.hospital,
                        starts,
                        ends,
                    ),
                )
                resource = {**booking.resource, "id": str(appointment_id), "meta": {"versionId": "1"}}
                # parse_booking: a booking without a Slot has both.
                assert starts is not None
                assert ends is not None
                resource["start"], resource["end"] = starts.isoformat(), ends.isoformat()
                participants = [
                    p
                    for p in resource.get("participant", [])
                    if not p.get("actor", {}).get("reference", "").startswith(ORGANIZATION)
                ]
                for member in dict.fromkeys((host, ctx.hospital)):
                    participants.append({"actor": {"reference": f"{ORGANIZATION}{member}"}, "status": "accepted"})
                resource["participant"] = participants
                self.wf.save(ctx, resource, 1)
                self.wf.audit(
                    ctx,
                    Interaction.CREATE,
                    ok=True,
                    description=f"appointment {booking.status.value} with {host}",
                    patient=patient,
                    objects=[f"Appointment/{appointment_id}", *([f"Slot/{booking.slot}"] if booking.slot else [])],
                )
        except psycopg.errors.UniqueViolation:
            raise conflict(f"Slot/{booking.slot} is booked already") from None
        return resource

    def _row(self, conn: Any, appointment_id: uuid.UUID, *, lock: bool = False) -> AppointmentRow | None:
        found = conn.execute(
            f"SELECT {_APPOINTMENT} FROM appointment WHERE id = %s" + (" FOR UPDATE" if lock else ""),  # noqa: S608
            (appointment_id,),
        ).fetchone()
        return _appointment_row(found) if found else None

    def read(self, ctx: Context, appointment_id: uuid.UUID) -> dict[str, Any]:
        with self.wf.db.connection() as conn:
            row = self._row(conn, appointment_id)
        if row is None or not row.roles(ctx.hospital):
            raise not_found(f"Appointment/{appointment_id} is not known")
        return self._load(ctx, row)

    def _load(self, ctx: Context, row: AppointmentRow) -> dict[str, Any]:
        objects = [f"Appointment/{row.id}"]
        if row.written_by != ctx.hospital:
            self.wf.authorise(ctx, row.patient_id, row.written_by, CATEGORY, objects, "Appointment")
        resource = self.wf.load(row.written_by, "Appointment", row.id, row.version)
        self.wf.audit(
            ctx, Interaction.READ, ok=True, description="appointment", patient=row.patient_id, objects=objects
        )
        return resource

    def for_request(self, ctx: Context, request_id: uuid.UUID) -> list[dict[str, Any]]:
        """The appointments a referral or consultation carries, for its parties."""
        with self.wf.db.connection() as conn:
            request = request_row(conn, request_id)
            if request is None or ctx.hospital not in (request.requester, request.performer):
                raise not_found(f"ServiceRequest/{request_id} is not known")
            rows = conn.execute(
                f"SELECT {_APPOINTMENT} FROM appointment WHERE service_request_id = %s ORDER BY starts",  # noqa: S608
                (request_id,),
            ).fetchall()
        return [self._load(ctx, _appointment_row(r)) for r in rows]

    def step(
        self, ctx: Context, appointment_id: uuid.UUID, body: dict[str, Any], expected: int | None
    ) -> dict[str, Any]:
        wanted = validated(Appointment, body, "Appointment")
        try:
            target = AppointmentStatus(wanted.status)
        except ValueError:
            raise unprocessable(
                f"Appointment.status {wanted.status!r} is not one of {', '.join(a.value for a in A)}"
            ) from None
        with self.wf.db.transaction() as conn:
            row = self._row(conn, appointment_id, lock=True)
            if row is None:
                raise not_found(f"Appointment/{appointment_id} is not known")
            version = take_step(
                conn,
                Stepped("appointment", "Appointment", appointment_id, row.version),
                target,
                ctx.hospital,
                problem=appointment_step_problem(row.status, target, row.roles(ctx.hospital)),
                expected_version=expected,
            )
            if target in FREES_THE_SLOT and row.slot_id is not None:
                conn.execute("UPDATE slot SET status = 'free' WHERE id = %s", (row.slot_id,))
            resource = self.wf.load(row.written_by, "Appointment", row.id, row.version)
            resource["status"] = target.value
            resource["meta"] = {"versionId": str(version)}
            if wanted.cancelationReason is not None:
                resource["cancelationReason"] = dump(wanted.cancelationReason)
            self.wf.save(ctx, resource, version)
            self.wf.audit(
                ctx,
                Interaction.UPDATE,
                ok=True,
                description=f"appointment {row.status.value} -> {target.value}",
                patient=row.patient_id,
                objects=[f"Appointment/{appointment_id}"],
            )
        return resource


router = APIRouter(tags=["appointments"])


@router.post("/fhir/Schedule", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def publish_schedule(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    return FhirResponse(services(request).appointments.publish_schedule(ctx, body), status_code=201)


@router.get("/fhir/Schedule", response_class=FhirResponse, responses=FHIR_ERRORS)
def find_schedules(
    request: Request, ctx: Reader, actor: Annotated[str | None, Query(max_length=80)] = None
) -> FhirResponse:
    """Every member's Schedules (no patient data), or one member's (``actor=Organization/<member>``)."""
    owner = actor.removeprefix(ORGANIZATION) if actor else None
    return FhirResponse(bundle(services(request).appointments.schedules(owner), [], "Schedule"))


@router.post("/fhir/Slot", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def publish_slot(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    return FhirResponse(services(request).appointments.publish_slot(ctx, body), status_code=201)


@router.get("/fhir/Slot", response_class=FhirResponse, responses=FHIR_ERRORS)
def find_slots(
    request: Request,
    ctx: Reader,
    schedule: Annotated[str, Query(max_length=80, description="Schedule/<id>")],
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> FhirResponse:
    schedule_id = reference_id(schedule, "Schedule", "schedule")
    return FhirResponse(bundle(services(request).appointments.slots(schedule_id, status), [], "Slot"))


@router.post("/fhir/Appointment", status_code=201, response_class=FhirResponse, responses=FHIR_ERRORS)
def book(request: Request, ctx: Writer, body: FhirBody) -> FhirResponse:
    """Propose or book a Slot (or a session without one) for a patient; a Slot already held: 409."""
    resource = services(request).appointments.book(ctx, body)
    return FhirResponse(
        resource, status_code=201, headers={"Location": f"/fhir/Appointment/{resource['id']}/_history/1"}
    )


@router.get("/fhir/Appointment", response_class=FhirResponse, responses=FHIR_ERRORS)
def appointments_of_request(
    request: Request,
    ctx: Reader,
    based_on: Annotated[str, Query(alias="based-on", max_length=80, description="ServiceRequest/<id>")],
) -> FhirResponse:
    request_id = reference_id(based_on, "ServiceRequest", "based-on")
    return FhirResponse(bundle(services(request).appointments.for_request(ctx, request_id), [], "Appointment"))


@router.get("/fhir/Appointment/{id}", response_class=FhirResponse, responses=FHIR_ERRORS)
def read_appointment(request: Request, ctx: Reader, id: ResourceId) -> FhirResponse:
    return FhirResponse(services(request).appointments.read(ctx, path_id(id, "Appointment")))


@router.put("/fhir/Appointment/{id}", response_class=FhirResponse, responses=FHIR_ERRORS)
def step_appointment(
    request: Request, ctx: Writer, id: ResourceId, body: FhirBody, if_match: IfMatch = None
) -> FhirResponse:
    """Confirm (booked), cancel, arrive, fulfil or mark a no-show: only the party the step belongs to."""
    expected = if_match_version(if_match)
    resource = services(request).appointments.step(ctx, path_id(id, "Appointment"), body, expected)
    return FhirResponse(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})
