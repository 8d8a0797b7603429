"""Appointment steps and what a booking must carry, without servers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.workflows.appointments import (
    AppointmentStatus,
    Role,
    appointment_step_problem,
    parse_booking,
)
from tests.workflows_data import appointment

A = AppointmentStatus
PATIENT = f"Patient/{uuid.uuid4()}"


def test_the_host_confirms_and_marks_no_shows_either_party_cancels() -> None:
    assert appointment_step_problem(A.PROPOSED, A.BOOKED, {Role.HOST}) is None
    assert appointment_step_problem(A.PROPOSED, A.BOOKED, {Role.BOOKER}) == (
        403,
        "only the host may move a proposed Appointment to booked",
    )
    assert appointment_step_problem(A.BOOKED, A.NOSHOW, {Role.HOST}) is None
    assert appointment_step_problem(A.BOOKED, A.NOSHOW, {Role.BOOKER}) is not None
    assert appointment_step_problem(A.BOOKED, A.CANCELLED, {Role.BOOKER}) is None
    assert appointment_step_problem(A.BOOKED, A.CANCELLED, {Role.HOST}) is None
    assert appointment_step_problem(A.CANCELLED, A.BOOKED, {Role.HOST, Role.BOOKER}) == (
        409,
        "a cancelled Appointment cannot become booked (next: none)",
    )
    assert appointment_step_problem(A.BOOKED, A.CANCELLED, set()) == (
        404,
        "the Appointment is not one of this member's",
    )


def test_a_booking_names_one_patient_one_slot_and_its_referral() -> None:
    slot = uuid.uuid4()
    referral = uuid.uuid4()
    parsed = parse_booking(appointment(PATIENT, slot=f"Slot/{slot}", based_on=f"ServiceRequest/{referral}"))
    assert parsed.slot == slot
    assert parsed.based_on == referral
    assert parsed.patient_reference == PATIENT
    assert parsed.status is A.BOOKED
    assert not parsed.virtual

    with pytest.raises(FhirError, match="proposed or booked"):
        parse_booking(appointment(PATIENT, slot=f"Slot/{slot}", status="fulfilled"))
    with pytest.raises(FhirError, match="start and end"):
        parse_booking(appointment(PATIENT))
    nobody = appointment(PATIENT, slot=f"Slot/{slot}")
    nobody["participant"][0]["actor"] = {"reference": "Practitioner/dr-li"}
    with pytest.raises(FhirError, match="exactly one Patient"):
        parse_booking(nobody)


def test_a_virtual_session_carries_its_address() -> None:
    session = appointment(PATIENT)
    session.update({"start": "2026-12-03T09:00:00+08:00", "end": "2026-12-03T09:30:00+08:00"})
    room: dict[str, Any] = {
        "resourceType": "Location",
        "id": "room",
        "name": "Video consultation",
        "physicalType": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/location-physical-type", "code": "vi"}]
        },
    }
    session["contained"] = [room]
    with pytest.raises(FhirError, match="telecom system url"):
        parse_booking(session)
    room["telecom"] = [{"system": "url", "value": "https://consult.city-general.riverton.example/room/42"}]
    assert parse_booking(session).virtual
