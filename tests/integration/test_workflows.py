"""The clinical workflows on the exchange, across the four institutions of examples/, against the real
API server, MinIO, PostgreSQL, operator and key service.

The Consortium is examples/consortium.yaml and the Hospitals' tiers and accreditation those of
examples/hospital-*.yaml, renamed with a suffix so the run leaves other tests' objects alone
(tests/exchange_harness.py ExampleAlliance; the fixtures are tests/integration/conftest.py's).
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from typer.testing import CliRunner

from medcloud.models.consortium import ConsortiumSpec
from medcloud_cli.demo.scenario import (
    Cast,
    Scenario,
    ScenarioStepError,
    exchange_desks,
    not_repeated_total,
    publish_free_slot,
    run_scenario,
)
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.postgres import bin_dir
from medcloud_cli.main import app as medcloud
from tests.exchange_harness import ExampleAlliance, raw_objects
from tests.exchange_support import (
    FHIR,
    Caller,
    ago,
    consent,
    created,
    new_patient,
    outcome_of,
    post,
)
from tests.workflows_data import INSURANCE_CARD, RESIDENT_ID, appointment, cbc_report, coverage, slot
from tests.workflows_requests import recognition_task, service_request

pytestmark = [pytest.mark.cluster, pytest.mark.minio]

# The example alliance, stood up by the fixtures of tests/integration/conftest.py.
ALLIANCE = ExampleAlliance("wf")
CITY, COUNTY, TOWNSHIP, COMMUNITY, VILLAGE = (
    ALLIANCE[e] for e in ("city-general", "county-people", "township-maple", "community-eastgate", "village-willow")
)
LOINC = "http://loinc.org"
Json = dict[str, Any]


def test_the_operator_grants_the_exchange_the_consortiums_publishers(exchange_grant: Json) -> None:
    assert exchange_grant["publishers"] == ConsortiumSpec.model_validate(ALLIANCE.consortium_spec()).publishers()


# --------------------------------------------------------------------------- helpers


def entries(response: httpx.Response, resource_type: str | None = None) -> list[Json]:
    assert response.status_code in (200, 201), response.text
    body = response.json()
    Bundle.model_validate(body)
    return [
        e["resource"]
        for e in body.get("entry", [])
        if resource_type is None or e["resource"]["resourceType"] == resource_type
    ]


def card_token(card: str) -> str:
    return f"{INSURANCE_CARD}|{card}"


def present(http: httpx.Client, caller: Caller, card: str) -> httpx.Response:
    return http.get("/fhir/Coverage", params={"beneficiary.identifier": card}, headers=caller.headers())


def everyone_consents(http: httpx.Client, caller: Caller, card: str) -> str:
    """The patient consents, at ``caller``, to every member reading their records for treatment."""
    body = consent({"identifier": {"system": INSURANCE_CARD, "value": card}}, actors=(), purposes=("TREAT",))
    return str(created(post(http, caller, "/fhir/Consent", body))["id"])


# --------------------------------------------------------------------------- insurance card


def test_a_card_registered_once_is_the_patients_key_at_every_member(
    exchange: httpx.Client, callers: dict[str, Caller], database: str
) -> None:
    card, resident = new_patient()
    county, township = callers[COUNTY], callers[TOWNSHIP]
    registered = created(post(exchange, county, "/fhir/Coverage", coverage(card, resident)))
    Coverage.model_validate(registered)
    patient = registered["beneficiary"]["reference"]

    # Another member, without the patient's consent: refused, and told why.
    refused = exchange.get(
        "/fhir/Coverage", params={"beneficiary.identifier": card_token(card)}, headers=township.headers()
    )
    assert refused.status_code == 403, refused.text
    assert "consent" in outcome_of(refused)

    everyone_consents(exchange, county, card)
    found = exchange.get(
        "/fhir/Coverage", params={"beneficiary.identifier": card_token(card)}, headers=township.headers()
    )
    (cover,) = entries(found, "Coverage")
    (person,) = entries(found, "Patient")
    Coverage.model_validate(cover)
    Patient.model_validate(person)
    assert cover["beneficiary"]["reference"] == patient == f"Patient/{person['id']}"
    assert cover["payor"][0]["display"] == "Riverton Province Medical Insurance Bureau"
    assert cover["class"][0]["value"] == "urban-employee"
    assert cover["period"] == {"start": "2026-01-01", "end": "2026-12-31"}
    assert person["name"][0]["family"] == "Chen"
    assert {"system": RESIDENT_ID, "value": resident} in person["identifier"]

    # Registering the same card again is a conflict; the card is nowhere in the database in plaintext.
    again = post(exchange, county, "/fhir/Coverage", coverage(card, resident))
    assert again.status_code == 409, again.text
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT to_jsonb(c)::text FROM coverage c").fetchall()
        identifiers = conn.execute("SELECT encode(blind, 'hex') FROM patient_identifier").fetchall()
    dumped = " ".join(r[0] for r in rows + identifiers)
    assert card not in dumped
    assert resident not in dumped


def test_unknown_expired_and_malformed_cards_get_a_clear_refusal(
    exchange: httpx.Client, callers: dict[str, Caller]
) -> None:
    county = callers[COUNTY]
    expired_card, resident = new_patient()
    created(
        post(exchange, county, "/fhir/Coverage", coverage(expired_card, resident, start="2024-01-01", end="2024-12-31"))
    )

    unknown = present(exchange, county, card_token(new_patient()[0]))
    assert unknown.status_code == 404
    assert "no Coverage" in outcome_of(unknown)
    expired = present(exchange, county, card_token(expired_card))
    assert expired.status_code == 422
    assert "expired on 2024-12-31" in outcome_of(expired)
    malformed = present(exchange, county, f"{INSURANCE_CARD}|12-34")
    assert malformed.status_code == 400
    assert "malformed insurance card" in outcome_of(malformed)
    not_a_card = post(exchange, county, "/fhir/Coverage", coverage("12-34", resident))
    assert not_a_card.status_code == 422
    assert "malformed insurance card" in outcome_of(not_a_card)


# --------------------------------------------------------------------------- exam-result mutual recognition


def recognised_for(http: httpx.Client, caller: Caller, patient: str, test: str = "58410-2") -> list[Json]:
    response = http.get(
        "/fhir/DiagnosticReport/$recognised",
        params={"patient": patient, "code": f"{LOINC}|{test}"},
        headers=caller.headers(),
    )
    return entries(response, "DiagnosticReport")


def not_repeated(http: httpx.Client, producer: str) -> float:
    return not_repeated_total(http.get("/metrics").text, producer)


def registered(http: httpx.Client, caller: Caller) -> tuple[str, str]:
    """A fresh patient registered by card at ``caller``: (card, Patient/<id>)."""
    card, resident = new_patient()
    cover = created(post(http, caller, "/fhir/Coverage", coverage(card, resident)))
    return card, str(cover["beneficiary"]["reference"])


def test_a_recognised_blood_count_closes_the_new_order_instead_of_repeating_it(
    exchange: httpx.Client, callers: dict[str, Caller]
) -> None:
    county, township = callers[COUNTY], callers[TOWNSHIP]
    card, patient = registered(exchange, county)
    report = created(
        post(exchange, county, "/fhir/DiagnosticReport", cbc_report(COUNTY, {"reference": patient}, ago(2)))
    )
    DiagnosticReport.model_validate(report)
    created(post(exchange, county, "/fhir/DiagnosticReport", cbc_report(COUNTY, {"reference": patient}, ago(8))))
    # The township's own count: the township is not a tier the Consortium recognises.
    created(post(exchange, township, "/fhir/DiagnosticReport", cbc_report(TOWNSHIP, {"reference": patient}, ago(1))))

    without_consent = exchange.get(
        "/fhir/DiagnosticReport/$recognised", params={"patient": patient, "code": "58410-2"}, headers=township.headers()
    )
    assert without_consent.status_code == 403, without_consent.text
    assert "consent" in outcome_of(without_consent)

    everyone_consents(exchange, county, card)
    (found,) = recognised_for(exchange, township, patient)
    assert found["id"] == report["id"]
    assert found["performer"] == [{"reference": f"Organization/{COUNTY}"}]
    assert found["contained"][0]["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    # The county, asking itself, does not recognise the township's count either.
    assert [r["id"] for r in recognised_for(exchange, county, patient)] == [report["id"]]
    assert recognised_for(exchange, township, patient, test="24627-2") == []

    order = created(
        post(exchange, township, "/fhir/ServiceRequest", service_request("laboratory", TOWNSHIP, None, patient))
    )
    before = not_repeated(exchange, COUNTY)
    use = recognition_task(order["id"], report["id"], patient)
    task = created(post(exchange, township, "/fhir/Task", use))
    Task.model_validate(task)
    assert task["focus"] == {"reference": f"ServiceRequest/{order['id']}"}
    assert task["output"][0]["valueReference"] == {"reference": f"DiagnosticReport/{report['id']}"}
    assert not_repeated(exchange, COUNTY) == before + 1
    closed = exchange.get(f"/fhir/ServiceRequest/{order['id']}", headers=township.headers())
    assert closed.json()["status"] == "completed"
    # An order is closed once; a result outside its window closes none.
    assert post(exchange, township, "/fhir/Task", use).status_code == 409
    again = created(
        post(exchange, township, "/fhir/ServiceRequest", service_request("laboratory", TOWNSHIP, None, patient))
    )
    old = created(post(exchange, county, "/fhir/DiagnosticReport", cbc_report(COUNTY, {"reference": patient}, ago(9))))
    stale = {**use, "focus": {"reference": f"ServiceRequest/{again['id']}"}}
    stale["output"] = [{**use["output"][0], "valueReference": {"reference": f"DiagnosticReport/{old['id']}"}}]
    refused = post(exchange, township, "/fhir/Task", stale)
    assert refused.status_code == 409
    assert "outside its 7-day window" in outcome_of(refused)


# --------------------------------------------------------------------------- referrals


def step(http: httpx.Client, caller: Caller, task: Json, status: str, **extra: Any) -> httpx.Response:
    body = {**task, "status": status, **extra}
    return http.put(f"/fhir/Task/{task['id']}", content=json.dumps(body), headers={**caller.headers(), **FHIR})


def task_of(http: httpx.Client, caller: Caller, hospital: str, request_id: str, box: str) -> Json:
    me = f"Organization/{hospital}"
    (task,) = entries(
        http.get("/fhir/Task", params={box: me, "focus": f"ServiceRequest/{request_id}"}, headers=caller.headers())
    )
    return task


def test_a_referral_moves_only_by_its_parties_and_only_where_sharing_allows(
    exchange: httpx.Client, callers: dict[str, Caller]
) -> None:
    township, county, community = callers[TOWNSHIP], callers[COUNTY], callers[COMMUNITY]
    card, patient = registered(exchange, township)

    # Clinic to clinic is not a flow of the Consortium.
    sideways = post(
        exchange, township, "/fhir/ServiceRequest", service_request("referral", TOWNSHIP, COMMUNITY, patient)
    )
    assert sideways.status_code == 403, sideways.text
    assert "does not allow referrals" in outcome_of(sideways)

    referral = created(
        post(
            exchange,
            township,
            "/fhir/ServiceRequest",
            service_request("referral", TOWNSHIP, COUNTY, patient, reason="persistent fever"),
        )
    )
    ServiceRequest.model_validate(referral)
    task = task_of(exchange, county, COUNTY, referral["id"], "owner")
    assert task["status"] == "requested"
    assert task_of(exchange, township, TOWNSHIP, referral["id"], "requester")["id"] == task["id"]
    # Nobody else sees it, in a box or by id.
    assert (
        entries(exchange.get("/fhir/Task", params={"owner": f"Organization/{COMMUNITY}"}, headers=community.headers()))
        == []
    )
    assert exchange.get(f"/fhir/Task/{task['id']}", headers=community.headers()).status_code == 404
    assert (
        exchange.get("/fhir/Task", params={"owner": f"Organization/{COUNTY}"}, headers=township.headers()).status_code
        == 403
    )

    # The receiver reads the referral only under the patient's consent.
    assert exchange.get(f"/fhir/ServiceRequest/{referral['id']}", headers=county.headers()).status_code == 403
    everyone_consents(exchange, township, card)
    read = exchange.get(f"/fhir/ServiceRequest/{referral['id']}", headers=county.headers())
    assert read.status_code == 200
    assert read.json()["reasonCode"] == [{"text": "persistent fever"}]

    # Each step by its party only.
    wrong = step(exchange, township, task, "accepted")
    assert wrong.status_code == 403
    assert "only the receiver" in outcome_of(wrong)
    received = step(exchange, county, task, "received")
    assert received.status_code == 200, received.text
    accepted = step(exchange, county, received.json(), "accepted")
    assert accepted.status_code == 200
    too_late = step(exchange, township, accepted.json(), "cancelled")
    assert too_late.status_code == 409
    assert "cannot become cancelled" in outcome_of(too_late)
    stale = exchange.put(
        f"/fhir/Task/{task['id']}",
        content=json.dumps({**task, "status": "in-progress"}),
        headers={**county.headers(), **FHIR, "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    started = step(exchange, county, accepted.json(), "in-progress")
    done = step(exchange, county, started.json(), "completed")
    assert done.status_code == 200
    Task.model_validate(done.json())
    assert done.json()["meta"]["versionId"] == "5"
    assert (
        exchange.get(f"/fhir/ServiceRequest/{referral['id']}", headers=township.headers()).json()["status"]
        == "completed"
    )

    # The sender may cancel before acceptance.
    second = created(
        post(exchange, township, "/fhir/ServiceRequest", service_request("referral", TOWNSHIP, COUNTY, patient))
    )
    pending = task_of(exchange, township, TOWNSHIP, second["id"], "requester")
    cancelled = step(exchange, township, pending, "cancelled", statusReason={"text": "patient recovered"})
    assert cancelled.status_code == 200
    assert cancelled.json()["statusReason"] == {"text": "patient recovered"}


# --------------------------------------------------------------------------- appointments


def later(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat(timespec="seconds")


def schedule_with_slots(http: httpx.Client, caller: Caller, hospital: str, count: int) -> tuple[str, list[str]]:
    schedule = created(
        post(
            http,
            caller,
            "/fhir/Schedule",
            {
                "resourceType": "Schedule",
                "actor": [{"reference": f"Organization/{hospital}"}],
                "comment": "Respiratory outpatients",
            },
        )
    )
    slots = [
        created(post(http, caller, "/fhir/Slot", slot(f"Schedule/{schedule['id']}", later(24 + i), later(24.5 + i))))[
            "id"
        ]
        for i in range(count)
    ]
    return str(schedule["id"]), [str(s) for s in slots]


def test_two_bookings_of_one_slot_never_both_succeed(
    exchange: httpx.Client, callers: dict[str, Caller], database: str
) -> None:
    county = callers[COUNTY]
    schedule, (contested, other) = schedule_with_slots(exchange, county, COUNTY, 2)
    patients = [registered(exchange, callers[h])[1] for h in (TOWNSHIP, COMMUNITY, CITY, COUNTY)]
    bookers = [callers[h] for h in (TOWNSHIP, COMMUNITY, CITY, COUNTY)]

    def book(i: int) -> int:
        return post(
            exchange, bookers[i % 4], "/fhir/Appointment", appointment(patients[i % 4], slot=f"Slot/{contested}")
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(book, range(16)))
    assert sorted(codes) == [201] + [409] * 15, codes
    free = entries(
        exchange.get(
            "/fhir/Slot", params={"schedule": f"Schedule/{schedule}", "status": "free"}, headers=county.headers()
        )
    )
    assert [s["id"] for s in free] == [other]

    # Proposed, then booked by the host; a no-show frees the slot for the next patient.
    proposed = created(
        post(
            exchange,
            callers[TOWNSHIP],
            "/fhir/Appointment",
            appointment(patients[0], slot=f"Slot/{other}", status="proposed"),
        )
    )
    Appointment.model_validate(proposed)
    assert (
        post(exchange, callers[CITY], "/fhir/Appointment", appointment(patients[2], slot=f"Slot/{other}")).status_code
        == 409
    )

    def move(caller: Caller, status: str) -> httpx.Response:
        return exchange.put(
            f"/fhir/Appointment/{proposed['id']}",
            content=json.dumps({**proposed, "status": status}),
            headers={**caller.headers(), **FHIR},
        )

    assert move(callers[TOWNSHIP], "booked").status_code == 403
    assert move(county, "booked").status_code == 200
    assert move(callers[TOWNSHIP], "noshow").status_code == 403
    assert move(county, "noshow").status_code == 200
    rebooked = post(exchange, callers[CITY], "/fhir/Appointment", appointment(patients[2], slot=f"Slot/{other}"))
    assert rebooked.status_code == 201, rebooked.text
    # The booker cancels: the slot is free again.
    cancel = {**rebooked.json(), "status": "cancelled", "cancelationReason": {"text": "patient moved"}}
    headers = {**callers[CITY].headers(), **FHIR}
    moved = exchange.put(f"/fhir/Appointment/{cancel['id']}", content=json.dumps(cancel), headers=headers)
    assert moved.status_code == 200, moved.text
    free_again = exchange.get(
        "/fhir/Slot", params={"schedule": f"Schedule/{schedule}", "status": "free"}, headers=county.headers()
    )
    assert [s["id"] for s in entries(free_again)] == [other]

    # Underneath the row lock, the database itself refuses a second live booking of a slot.
    with psycopg.connect(database) as conn:
        patient_id = patients[0].removeprefix("Patient/")
        with pytest.raises(psycopg.errors.UniqueViolation, match="appointment_one_per_slot"):
            conn.execute(
                "INSERT INTO appointment (id, slot_id, patient_id, booked_by, host, status, starts, ends, written_by) "
                "VALUES (%s, %s, %s, 'x', 'y', 'booked', now(), now(), 'x')",
                (uuid.uuid4(), contested, patient_id),
            )


# --------------------------------------------------------------------------- the scenario across four institutions


def test_the_village_clinic_to_county_to_city_scenario(exchange: httpx.Client, callers: dict[str, Caller]) -> None:
    """The issue's scenario, as the driver `medcloud demo scenario` runs it (cli/medcloud_cli/demo/scenario.py),
    every app of a member being the exchange with the member's token; each step checks itself."""
    cast = Cast(village=VILLAGE, county=COUNTY, city=CITY, community=COMMUNITY)
    desk, close = exchange_desks(str(exchange.base_url), {h: c.token for h, c in callers.items()})
    # The county's own system has published its outpatient schedule (the appointments app's job, in a pod).
    publish_free_slot(desk, COUNTY)
    said: list[str] = []
    try:
        run = run_scenario(cast, desk, say=said.append, metrics=lambda: exchange.get("/metrics").text)
    finally:
        close()

    assert [line.split(".", 1)[0] for line in said] == [str(n) for n in range(8)]
    assert said == run.steps
    assert run.not_repeated is not None
    assert run.not_repeated[1] == run.not_repeated[0] + 1
    closed = exchange.get(f"/fhir/ServiceRequest/{run.order}", headers=callers[VILLAGE].headers())
    assert closed.json()["status"] == "completed"
    assert run.thread == [
        (f"Organization/{CITY}", "Any recent travel? Please add a peripheral smear."),
        (f"Organization/{COUNTY}", "No travel; smear shows microcytosis."),
    ]
    # Nobody outside the consultation reads its thread; the report's content is the county's to read.
    outsider = exchange.get(
        "/fhir/Communication",
        params={"based-on": f"ServiceRequest/{run.consultation}"},
        headers=callers[VILLAGE].headers(),
    )
    assert outsider.status_code == 404
    content = exchange.get(f"/fhir/Binary/{run.consult_report}", headers=callers[COUNTY].headers())
    assert content.content.startswith(b"Consult: iron-deficiency anaemia")
    assert run.readers >= {VILLAGE, COUNTY, CITY}
    assert COMMUNITY not in run.readers
    assert TOWNSHIP not in run.readers


def test_medcloud_demo_scenario_runs_it_and_says_each_step(
    exchange: httpx.Client, callers: dict[str, Caller], tmp_path: Path
) -> None:
    tokens = []
    for hospital in (VILLAGE, COUNTY, CITY, COMMUNITY):
        (tmp_path / hospital).write_text(callers[hospital].token)
        tokens += ["--token", f"{hospital}={tmp_path / hospital}"]
    cast = ["--village", VILLAGE, "--county", COUNTY, "--city", CITY, "--community", COMMUNITY]
    result = CliRunner().invoke(
        medcloud, ["demo", "scenario", "--exchange-url", str(exchange.base_url), *tokens, *cast]
    )
    assert result.exit_code == 0, result.output
    said = result.stdout.splitlines()
    assert [line.split(".", 1)[0] for line in said[:-1]] == [str(n) for n in range(8)]
    assert said[-1] == "scenario complete"
    assert "7. the patient's access disclosure lists every institution that read the record: " in result.stdout


def test_a_scenario_step_that_goes_otherwise_fails_with_the_servers_answer(
    exchange: httpx.Client, callers: dict[str, Caller]
) -> None:
    """The driver checks what it is told: once the patient has consented, the refusal step 1 expects is not
    there, and it says so; a member that has published no free Slot fails step 4 and says why."""
    cast = Cast(village=VILLAGE, county=COUNTY, city=CITY, community=COMMUNITY)
    desk, close = exchange_desks(str(exchange.base_url), {h: c.token for h, c in callers.items()})
    try:
        scenario = Scenario(cast, desk, say=lambda _: None)
        scenario.seen_at_the_county()
        scenario.registers_by_card()
        with pytest.raises(ScenarioStepError, match="answered 200, not 403"):
            scenario.registers_by_card()
        with pytest.raises(ScenarioStepError, match=f"{COMMUNITY} has published no free Slot"):
            scenario.free_slot(COMMUNITY, "4.")
    finally:
        close()


# --------------------------------------------------------------------------- at rest


def test_no_card_identifier_or_clinical_text_of_the_workflows_at_rest(
    exchange: httpx.Client, callers: dict[str, Caller], database: str, minio_server: MinioInfo
) -> None:
    township, county = callers[TOWNSHIP], callers[COUNTY]
    card, resident = new_patient()
    marker = f"haemoptysis-{uuid.uuid4().hex[:8]}"
    cover = created(post(exchange, county, "/fhir/Coverage", coverage(card, resident)))
    patient = cover["beneficiary"]["reference"]
    everyone_consents(exchange, county, card)
    report = cbc_report(COUNTY, {"reference": patient}, ago(1))
    report["conclusion"] = f"conclusion {marker}"
    created(post(exchange, county, "/fhir/DiagnosticReport", report))
    referral = created(
        post(
            exchange,
            township,
            "/fhir/ServiceRequest",
            service_request("referral", TOWNSHIP, COUNTY, patient, reason=f"reason {marker}"),
        )
    )
    thread = {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{referral['id']}"}],
        "payload": [{"contentString": f"message {marker}"}],
    }
    created(post(exchange, county, "/fhir/Communication", thread))
    # Read back, so the records really hold what the markers say.
    assert marker in exchange.get(f"/fhir/ServiceRequest/{referral['id']}", headers=county.headers()).text

    markers = [card.encode(), resident.encode(), marker.encode(), base64.b64encode(marker.encode())]
    dump = subprocess.run([str(bin_dir() / "pg_dump"), "--data-only", database], capture_output=True, check=True).stdout
    for table in (b"coverage", b"exam_result", b"service_request", b"task", b"communication"):
        assert b"COPY public." + table in dump
    for value in markers:
        assert value not in dump
    seen = 0
    for body in raw_objects(minio_server):
        seen += 1
        for value in markers:
            assert value not in body
    assert seen > 0
