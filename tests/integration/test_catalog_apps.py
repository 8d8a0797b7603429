"""Each catalog app of MedCloud's own code, run as its own process (``medcloud app <name>``) for its hospital,
against the real exchange (tests/exchange_harness.py: API server, MinIO, PostgreSQL, operator, key service).

Every app calls the exchange as its own service account, bound in its hospital's namespace to the
shipped medcloud-exchange-client ClusterRole, as the operator binds it. The hospital's systems are
this test: they talk to their own app only, with no token, and name the practitioner and purpose.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from medcloud_cli.demo.scenario import Cast, app_desks, exchange_desks, run_scenario
from medcloud_cli.localcluster.process import free_port
from tests.exchange_harness import ExampleAlliance, admitted_callers
from tests.exchange_support import FHIR, ago, consent, created, new_patient, outcome_of
from tests.operator_support import ClusterAdmin
from tests.support import wait_for
from tests.workflows_data import INSURANCE_CARD, appointment, cbc_report, coverage
from tests.workflows_requests import service_request

pytestmark = [pytest.mark.cluster, pytest.mark.minio]

# The example alliance, stood up by the fixtures of tests/integration/conftest.py.
ALLIANCE = ExampleAlliance("apps")
SUFFIX = ALLIANCE.suffix
CITY, COUNTY, VILLAGE = (ALLIANCE[e] for e in ("city-general", "county-people", "village-willow"))
DESK = {"X-MedCloud-Practitioner": "Practitioner/dr-li", "X-MedCloud-Purpose-Of-Use": "TREAT"}
MEDCLOUD = str(Path(sys.executable).parent / "medcloud")
Json = dict[str, Any]


@pytest.fixture(scope="module")
def exchange_url(exchange: httpx.Client) -> str:
    return str(exchange.base_url)


class Notifications:
    """The hospital's own system: an HTTP endpoint that records what the referrals app posts to it."""

    def __init__(self) -> None:
        self.received: list[Json] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/referrals"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def notifications() -> Iterator[Notifications]:
    hook = Notifications()
    yield hook
    hook.close()


class Apps:
    """Starts ``medcloud app <name>`` processes for hospitals, each with its own service account's token: one
    process per app and hospital, as the operator runs one Deployment per AppInstance (a second start of the
    same app for the same hospital is the one already running, with the config it started with)."""

    def __init__(self, admin: ClusterAdmin, exchange_url: str, members: list[str], folder: Path) -> None:
        self.admin, self.exchange_url, self.members, self.folder = admin, exchange_url, members, folder
        self.processes: list[subprocess.Popen[bytes]] = []
        self.clients: list[httpx.Client] = []
        self.running: dict[tuple[str, str], httpx.Client] = {}

    def start(self, app: str, hospital: str, config: dict[str, str] | None = None) -> httpx.Client:
        if (hospital, app) in self.running:
            return self.running[hospital, app]
        account = f"app-{app}"
        with httpx.Client(base_url=self.exchange_url, timeout=60) as exchange:
            (caller,) = admitted_callers(self.admin, exchange, [hospital], account).values()
        home = self.folder / f"{app}-{hospital}"
        (home / "config").mkdir(parents=True)
        token = home / "token"
        token.write_text(caller.token)
        for key, value in (config or {}).items():
            (home / "config" / key).write_text(value)
        port = free_port()
        env = {
            "PATH": str(Path(sys.executable).parent),
            "MEDCLOUD_HOSPITAL": hospital,
            "MEDCLOUD_HOST": "127.0.0.1",
            "MEDCLOUD_HTTP_PORT": str(port),
            "MEDCLOUD_CONFIG_DIR": str(home / "config"),
            "MEDCLOUD_EXCHANGE_URL": self.exchange_url,
            "MEDCLOUD_EXCHANGE_TOKEN_FILE": str(token),
            "MEDCLOUD_JOB_INTERVAL_SECONDS": "0.5",
        }
        log = (home / "log").open("wb")
        process = subprocess.Popen([MEDCLOUD, "app", app], env=env, stdout=log, stderr=log)
        self.processes.append(process)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.clients.append(http)

        def up() -> bool:
            assert process.poll() is None, f"{app} of {hospital} exited: {(home / 'log').read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                return http.get("/healthz").status_code == 200
            return False

        wait_for(up, f"{app} of {hospital} to listen", timeout=60)
        self.running[hospital, app] = http
        return http

    def close(self) -> None:
        for http in self.clients:
            http.close()
        for process in self.processes:
            process.terminate()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def apps(
    admin: ClusterAdmin, exchange_url: str, members: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Apps]:
    runner = Apps(admin, exchange_url, members, tmp_path_factory.mktemp("apps"))
    yield runner
    runner.close()


def post(http: httpx.Client, path: str, body: Json, **headers: str) -> httpx.Response:
    return http.post(path, content=json.dumps(body), headers={**DESK, **FHIR, **headers})


def resources(response: httpx.Response, resource_type: str) -> list[Json]:
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["resource"]["resourceType"] == resource_type]


def job_report(http: httpx.Client, *, runs: int) -> Json:
    def report() -> Json | None:
        body: Json = http.get("/job").json()
        return body if body["runs"] >= runs and body["last"].get("ok") else None

    return wait_for(report, "the app's job to run", timeout=60)


def test_apps_of_medclouds_own_code_do_their_jobs_end_to_end_for_their_hospitals(
    apps: Apps, exchange_url: str, notifications: Notifications
) -> None:
    village_card = apps.start("insurance-card", VILLAGE)
    county_card = apps.start("insurance-card", COUNTY)

    # insurance-card: registered once at the county's desk, presented at the village clinic's.
    card, resident = new_patient()
    patient = created(post(county_card, "/fhir/Coverage", coverage(card, resident)))["beneficiary"]["reference"]
    presented = {"beneficiary.identifier": f"{INSURANCE_CARD}|{card}"}
    refused = village_card.get("/fhir/Coverage", params=presented, headers=DESK)
    assert refused.status_code == 403, refused.text  # the exchange's refusal, relayed: no consent yet
    assert "consent" in outcome_of(refused)
    with httpx.Client(base_url=exchange_url, timeout=60) as exchange:
        body = consent({"identifier": {"system": INSURANCE_CARD, "value": card}}, actors=(), purposes=("TREAT",))
        # Consent is the EMR-sharing app's resource: recorded here straight at the exchange, as the county.
        county_desk = admitted_callers(apps.admin, exchange, [COUNTY], "app-emr-sharing")[COUNTY]
        assert (
            exchange.post(
                "/fhir/Consent", content=json.dumps(body), headers={**county_desk.headers(), **FHIR}
            ).status_code
            == 201
        )
    (cover,) = resources(village_card.get("/fhir/Coverage", params=presented, headers=DESK), "Coverage")
    assert cover["beneficiary"]["reference"] == patient
    # Only its own resources; and no practitioner, no answer (the exchange's rule, relayed).
    other = village_card.get("/fhir/DocumentReference", params={"patient": patient}, headers=DESK)
    assert other.status_code == 404
    assert other.json()["resourceType"] == "OperationOutcome"
    anonymous = village_card.get("/fhir/Coverage", params=presented)
    assert anonymous.status_code in (400, 403), anonymous.text
    assert anonymous.json()["resourceType"] == "OperationOutcome"

    # exam-mutual-recognition: the county publishes a blood count; the village clinic finds it before ordering.
    county_exam = apps.start("exam-mutual-recognition", COUNTY)
    village_exam = apps.start("exam-mutual-recognition", VILLAGE)
    issued = ago(1)
    report = created(post(county_exam, "/fhir/DiagnosticReport", cbc_report(COUNTY, {"reference": patient}, issued)))
    found = village_exam.get(
        "/fhir/DiagnosticReport/$recognised", params={"patient": patient, "code": "58410-2"}, headers=DESK
    )
    assert [r["id"] for r in resources(found, "DiagnosticReport")] == [report["id"]]

    # referrals: the village clinic refers up; the county's app finds it in its inbox, tells the county's
    # system and acknowledges it (received), with nobody at the county touching anything.
    apps.start("referrals", COUNTY, {"notify.url": notifications.url})
    village_referrals = apps.start("referrals", VILLAGE)
    referral = created(
        post(
            village_referrals,
            "/fhir/ServiceRequest",
            service_request("referral", VILLAGE, COUNTY, patient, reason="persistent fever"),
        )
    )

    def acknowledged() -> Json | None:
        outbox = village_referrals.get(
            "/fhir/Task",
            params={"requester": f"Organization/{VILLAGE}", "focus": f"ServiceRequest/{referral['id']}"},
            headers=DESK,
        )
        (task,) = resources(outbox, "Task")
        return task if task["status"] == "received" else None

    task = wait_for(acknowledged, "the county's referrals app to acknowledge the referral", timeout=60)
    assert {"task": f"Task/{task['id']}", "referral": f"ServiceRequest/{referral['id']}"}.items() <= (
        notifications.received[-1].items()
    )
    assert notifications.received[-1]["from"] == f"Organization/{VILLAGE}"
    assert "persistent fever" not in json.dumps(notifications.received)

    # appointments: the county's schedule is published as Slots, once; the village clinic books one.
    start = datetime.now(UTC) + timedelta(days=2)
    slots = [
        {
            "start": (start + timedelta(minutes=30 * i)).isoformat(timespec="seconds"),
            "end": (start + timedelta(minutes=30 * (i + 1))).isoformat(timespec="seconds"),
        }
        for i in range(2)
    ]
    schedule = json.dumps({"comment": f"Respiratory outpatients {SUFFIX}", "slots": slots})
    county_appointments = apps.start("appointments", COUNTY, {"schedule.json": schedule})
    first = job_report(county_appointments, runs=1)
    assert first["last"]["published"] == 2
    later = job_report(county_appointments, runs=first["runs"] + 2)
    assert later["last"]["published"] == 0
    assert later["last"]["schedule"] == first["last"]["schedule"]
    village_appointments = apps.start("appointments", VILLAGE)
    free = resources(
        village_appointments.get("/fhir/Slot", params={"schedule": first["last"]["schedule"]}, headers=DESK), "Slot"
    )
    assert len(free) == 2
    booked = created(
        post(village_appointments, "/fhir/Appointment", appointment(patient, slot=f"Slot/{free[0]['id']}"))
    )
    assert booked["status"] == "booked"
    again = post(village_appointments, "/fhir/Appointment", appointment(patient, slot=f"Slot/{free[0]['id']}"))
    assert again.status_code == 409, again.text
    # Slots come from the hospital's schedule through the job, not from callers of the facade.
    assert post(village_appointments, "/fhir/Slot", {"resourceType": "Slot"}).status_code == 404

    # remote-consultation: the county asks the city; the city answers in the thread.
    county_consult = apps.start("remote-consultation", COUNTY)
    city_consult = apps.start("remote-consultation", CITY)
    ask = created(post(county_consult, "/fhir/ServiceRequest", service_request("consultation", COUNTY, CITY, patient)))
    inbox = city_consult.get(
        "/fhir/Task",
        params={"owner": f"Organization/{CITY}", "focus": f"ServiceRequest/{ask['id']}"},
        headers=DESK,
    )
    (consult_task,) = resources(inbox, "Task")
    accepted = city_consult.put(
        f"/fhir/Task/{consult_task['id']}",
        content=json.dumps({**consult_task, "status": "accepted"}),
        headers={**DESK, **FHIR},
    )
    assert accepted.status_code == 200, accepted.text
    message = {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{ask['id']}"}],
        "payload": [{"contentString": "Please send the chest CT."}],
    }
    created(post(city_consult, "/fhir/Communication", message))
    thread = resources(
        county_consult.get("/fhir/Communication", params={"based-on": f"ServiceRequest/{ask['id']}"}, headers=DESK),
        "Communication",
    )
    assert [(m["sender"]["reference"], m["payload"][0]["contentString"]) for m in thread] == [
        (f"Organization/{CITY}", "Please send the chest CT.")
    ]


def test_the_scenario_runs_through_the_catalog_apps_each_hospital_runs(apps: Apps, exchange_url: str) -> None:
    """The issue's scenario by the driver of `medcloud demo scenario`, every step through the app that fronts it
    at its hospital (the AppInstances of examples/), the apps calling the exchange as their own accounts."""
    cast = Cast(village=VILLAGE, county=COUNTY, city=CITY, community=ALLIANCE["community-eastgate"])
    start = datetime.now(UTC) + timedelta(days=3)
    slot = {"start": start.isoformat(timespec="seconds"), "end": (start + timedelta(minutes=30)).isoformat()}
    schedule = json.dumps({"comment": f"Haematology outpatients {SUFFIX}", "slots": [slot]})
    running = {
        (COUNTY, "appointments"): apps.start("appointments", COUNTY, {"schedule.json": schedule}),
        **{
            (hospital, app): apps.start(app, hospital)
            for hospital, app in (
                (COUNTY, "insurance-card"),
                (COUNTY, "exam-mutual-recognition"),
                (COUNTY, "referrals"),
                (COUNTY, "remote-consultation"),
                (VILLAGE, "insurance-card"),
                (VILLAGE, "exam-mutual-recognition"),
                (VILLAGE, "referrals"),
                (VILLAGE, "appointments"),
                (CITY, "exam-mutual-recognition"),
                (CITY, "remote-consultation"),
            )
        },
    }
    job_report(running[COUNTY, "appointments"], runs=1)  # the county's schedule is published
    with httpx.Client(base_url=exchange_url, timeout=60) as exchange:
        # Consent and the disclosure are the EMR-sharing integration's: straight at the exchange, as its account.
        emr = admitted_callers(apps.admin, exchange, [VILLAGE], "app-emr-sharing")
        direct, close_direct = exchange_desks(exchange_url, {h: c.token for h, c in emr.items()})
        desk, close = app_desks({key: str(http.base_url) for key, http in running.items()}, direct)
        said: list[str] = []
        try:
            run = run_scenario(cast, desk, say=said.append, metrics=lambda: exchange.get("/metrics").text)
        finally:
            close()
            close_direct()
    assert len(said) == 8
    assert run.not_repeated is not None
    assert run.not_repeated[1] == run.not_repeated[0] + 1
    assert {VILLAGE, COUNTY, CITY} <= run.readers
