"""The issue's scenario across the example alliance, one step after another, each step checked and said.

A village clinic registers a patient by insurance card, sees a recognised blood count from the county
hospital and does not repeat it, refers the patient up with the result attached; the county hospital
accepts and books an appointment, asks the city hospital for a remote consultation; the consult report
comes back; the patient's access disclosure lists every institution that read the record.

Every request goes to a ``Desk``: where one institution sends one catalog app's requests. Against the
exchange itself (``exchange_desks``) every app of a member is the exchange with that member's token;
against the catalog apps, each app is its own facade (``medcloud app <name>``), which relays to the
exchange as the app's service account. The driver is the same either way; so are its checks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from medcloud_cli.demo import fhir

Json = dict[str, Any]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
# The staff member and purpose every desk request names (the exchange audits both).
STAFF = {"X-MedCloud-Practitioner": "Practitioner/dr-li", "X-MedCloud-Purpose-Of-Use": "TREAT"}
# What no catalog app fronts: the patient's Consent and their access disclosure are the EMR-sharing
# integration's, which talks to the exchange directly.
EMR_SHARING = "emr-sharing"
REVIEW_TEST = "58410-2"  # complete blood count panel


class Desk(Protocol):
    """The HTTP client ``hospital`` uses for ``app``'s requests (paths below ``/fhir``)."""

    def __call__(self, hospital: str, app: str) -> httpx.Client: ...


class ScenarioStepError(RuntimeError):
    """A step did not go as the scenario says: which step, and what the server answered."""


@dataclass(frozen=True)
class Cast:
    """The four institutions of the scenario, by their Hospital names."""

    village: str
    county: str
    city: str
    community: str

    @classmethod
    def of_examples(cls, rename: Callable[[str], str] = lambda name: name) -> Cast:
        """examples/'s village clinic, county and city hospitals and community clinic (``rename``: a test's)."""
        return cls(
            rename("village-willow"), rename("county-people"), rename("city-general"), rename("community-eastgate")
        )


@dataclass
class ScenarioRun:
    """What the scenario made, for a caller to look at; ``steps`` is what it said, in order."""

    card: str
    patient: str = ""
    blood_count: str = ""
    order: str = ""
    referral: str = ""
    referral_task: str = ""
    appointment: str = ""
    consultation: str = ""
    consult_report: str = ""
    thread: list[tuple[str, str]] = field(default_factory=list)
    readers: set[str] = field(default_factory=set)
    not_repeated: tuple[float, float] | None = None
    steps: list[str] = field(default_factory=list)


def exchange_desks(url: str, tokens: Mapping[str, str], timeout: float = 60) -> tuple[Desk, Callable[[], None]]:
    """Every app of every member is the exchange at ``url`` with the member's bearer token; and a closer."""
    clients: dict[str, httpx.Client] = {}

    def desk(hospital: str, app: str) -> httpx.Client:
        if hospital not in clients:
            headers = {"Authorization": f"Bearer {tokens[hospital]}", **STAFF}
            clients[hospital] = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        return clients[hospital]

    def close() -> None:
        for client in clients.values():
            client.close()

    return desk, close


def app_desks(
    apps: Mapping[tuple[str, str], str], direct: Desk, timeout: float = 60
) -> tuple[Desk, Callable[[], None]]:
    """Each ``(hospital, app)`` is that catalog app's facade at its URL (no token: the app holds its own
    service account's); what no app fronts (``emr-sharing``: Consent, the disclosure) goes to ``direct``."""
    clients: dict[tuple[str, str], httpx.Client] = {}

    def desk(hospital: str, app: str) -> httpx.Client:
        if app == EMR_SHARING:
            return direct(hospital, app)
        if (hospital, app) not in apps:
            raise ScenarioStepError(f"{hospital} runs no {app} app (an AppInstance of examples/)")
        if (hospital, app) not in clients:
            clients[hospital, app] = httpx.Client(base_url=apps[hospital, app], headers=STAFF, timeout=timeout)
        return clients[hospital, app]

    def close() -> None:
        for client in clients.values():
            client.close()

    return desk, close


def new_card() -> tuple[str, str]:
    """A fresh patient's province insurance card number and resident identity card number."""
    digits = str(uuid.uuid4().int)[:10]
    return f"RV{digits}", f"11010119{digits}"


def _at(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


def _diagnostics(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    issues = body.get("issue") if isinstance(body, dict) else None
    return str(issues[0].get("diagnostics", "")) if issues else json.dumps(body)[:300]


def entries(response: httpx.Response, resource_type: str) -> list[Json]:
    body: Json = response.json()
    return [e["resource"] for e in body.get("entry", []) if e["resource"]["resourceType"] == resource_type]


def readers_in(events: list[Json]) -> set[str]:
    """The member organisations that read or searched (BALP read/search-type, success) in a disclosure."""
    out = set()
    for event in events:
        codes = {s.get("code") for s in event.get("subtype", [])}
        if event.get("outcome") == "0" and codes & {"read", "search-type"}:
            for agent in event["agent"]:
                reference = (agent.get("who") or {}).get("reference", "")
                if reference.startswith("Organization/"):
                    out.add(reference.removeprefix("Organization/"))
    return out


def not_repeated_total(metrics: str, producer: str) -> float:
    """``medcloud_exchange_tests_not_repeated_total`` of ``producer`` in the exchange's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "medcloud_exchange_tests_not_repeated_total" and sample.labels["producer"] == producer:
                return float(sample.value)
    return 0.0


class Scenario:
    """Runs the scenario's steps through ``desk``; says each one through ``say``."""

    def __init__(
        self, cast: Cast, desk: Desk, *, say: Callable[[str], None] = print, metrics: Callable[[], str] | None = None
    ) -> None:
        self.cast, self.desk, self._say, self._metrics = cast, desk, say, metrics
        self.run = ScenarioRun(card="")

    # ----------------------------------------------------------------- plumbing

    def say(self, text: str) -> None:
        self.run.steps.append(text)
        self._say(text)

    def call(
        self,
        hospital: str,
        app: str,
        method: str,
        path: str,
        expect: int,
        step: str,
        body: Json | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One request of ``hospital`` through its ``app``; anything but ``expect`` fails the step."""
        content = json.dumps(body) if body is not None else None
        headers = FHIR_JSON if body is not None else {}
        response = self.desk(hospital, app).request(method, path, content=content, headers=headers, params=params)
        if response.status_code != expect:
            raise ScenarioStepError(
                f"{step}: {method} {path} at {hospital}'s {app} answered {response.status_code}, not {expect}: "
                f"{_diagnostics(response)}"
            )
        return response

    def _not_repeated(self) -> float | None:
        return not_repeated_total(self._metrics(), self.cast.county) if self._metrics else None

    # ----------------------------------------------------------------- the steps

    def seen_at_the_county(self) -> None:
        """Before: the patient was seen at the county hospital, card registered and a blood count done."""
        c = self.cast
        card, resident = new_card()
        self.run.card = card
        step = "0. the county registers the card and publishes a blood count"
        cover = self.call(
            c.county, "insurance-card", "POST", "/fhir/Coverage", 201, step, fhir.coverage(card, resident)
        )
        self.run.patient = str(cover.json()["beneficiary"]["reference"])
        report = fhir.cbc_report(c.county, {"reference": self.run.patient}, _at(-2))
        made = self.call(c.county, "exam-mutual-recognition", "POST", "/fhir/DiagnosticReport", 201, step, report)
        self.run.blood_count = str(made.json()["id"])
        self.say(f"{step}: {self.run.patient}, DiagnosticReport/{self.run.blood_count} two days ago")

    def registers_by_card(self) -> None:
        c, run = self.cast, self.run
        step = "1. the village clinic registers the patient by insurance card"
        presented = {"beneficiary.identifier": f"{fhir.INSURANCE_CARD}|{run.card}"}
        refused = self.call(c.village, "insurance-card", "GET", "/fhir/Coverage", 403, step, params=presented)
        self.call(c.village, EMR_SHARING, "POST", "/fhir/Consent", 201, step, fhir.treatment_consent(run.card))
        found = self.call(c.village, "insurance-card", "GET", "/fhir/Coverage", 200, step, params=presented)
        (person,) = entries(found, "Patient")
        if f"Patient/{person['id']}" != run.patient:
            raise ScenarioStepError(f"{step}: the card found Patient/{person['id']}, not {run.patient}")
        self.say(f"{step}: refused until the patient consents ({_diagnostics(refused)}); then {run.patient}")

    def uses_the_recognised_result(self) -> None:
        c, run = self.cast, self.run
        step = "2. the village clinic sees the county's recognised blood count and does not repeat it"
        app = "exam-mutual-recognition"
        asked = {"patient": run.patient, "code": f"{fhir.LOINC}|{REVIEW_TEST}"}
        found = self.call(c.village, app, "GET", "/fhir/DiagnosticReport/$recognised", 200, step, params=asked)
        if [r["id"] for r in entries(found, "DiagnosticReport")] != [run.blood_count]:
            raise ScenarioStepError(f"{step}: recognised {found.text[:300]}, not DiagnosticReport/{run.blood_count}")
        order = fhir.service_request("laboratory", c.village, None, run.patient)
        run.order = str(self.call(c.village, app, "POST", "/fhir/ServiceRequest", 201, step, order).json()["id"])
        before = self._not_repeated()
        closing = fhir.recognition_task(run.order, run.blood_count, run.patient)
        self.call(c.village, app, "POST", "/fhir/Task", 201, step, closing)
        after = self._not_repeated()
        if before is not None and after is not None:
            run.not_repeated = (before, after)
        counted = f"; tests not repeated {before:g} -> {after:g}" if before is not None and after is not None else ""
        self.say(f"{step}: ServiceRequest/{run.order} closed by DiagnosticReport/{run.blood_count}{counted}")

    def refers_up(self) -> None:
        c, run = self.cast, self.run
        step = "3. the village clinic refers the patient up with the result attached"
        sideways = fhir.service_request("referral", c.village, c.community, run.patient)
        refused = self.call(c.village, "referrals", "POST", "/fhir/ServiceRequest", 403, step, sideways)
        up = fhir.service_request(
            "referral",
            c.village,
            c.county,
            run.patient,
            reason="fever 5 days, Hb 10.2 g/dL",
            supporting=(f"DiagnosticReport/{run.blood_count}",),
        )
        run.referral = str(
            self.call(c.village, "referrals", "POST", "/fhir/ServiceRequest", 201, step, up).json()["id"]
        )
        self.say(f"{step}: ServiceRequest/{run.referral} to the county (to a clinic: {_diagnostics(refused)})")

    def _task(self, hospital: str, app: str, request: str, box: str, step: str) -> Json:
        params = {box: f"Organization/{hospital}", "focus": f"ServiceRequest/{request}"}
        found = entries(self.call(hospital, app, "GET", "/fhir/Task", 200, step, params=params), "Task")
        if len(found) != 1:
            raise ScenarioStepError(f"{step}: {len(found)} Tasks of ServiceRequest/{request} in {hospital}'s {box} box")
        return found[0]

    def _step(self, hospital: str, app: str, task: Json, status: str, expect: int, step: str, **extra: Any) -> Json:
        body = {**task, "status": status, **extra}
        moved: Json = self.call(hospital, app, "PUT", f"/fhir/Task/{task['id']}", expect, step, body).json()
        return moved

    def _received(self, hospital: str, request: str, step: str) -> Json:
        """The receiver's Task of ``request``, acknowledged (received) by ``hospital`` unless its referrals app's
        job did so first: the job marks new referrals received, and may do it between our read and our step,
        in which case our step answers 409 and the Task, read again, is received."""
        task = self._task(hospital, "referrals", request, "owner", step)
        if task["status"] != "requested":
            return task
        try:
            return self._step(hospital, "referrals", task, "received", 200, step)
        except ScenarioStepError:
            again = self._task(hospital, "referrals", request, "owner", step)
            if again["status"] != "received":
                raise
            return again

    def free_slot(self, hospital: str, step: str) -> str:
        actor = {"actor": f"Organization/{hospital}"}
        schedules = entries(
            self.call(hospital, "appointments", "GET", "/fhir/Schedule", 200, step, params=actor), "Schedule"
        )
        for schedule in schedules:
            free = {"schedule": f"Schedule/{schedule['id']}", "status": "free"}
            slots = entries(self.call(hospital, "appointments", "GET", "/fhir/Slot", 200, step, params=free), "Slot")
            if slots:
                return str(slots[0]["id"])
        raise ScenarioStepError(f"{step}: {hospital} has published no free Slot (its appointments app's schedule.json)")

    def accepts_and_books(self) -> None:
        c, run = self.cast, self.run
        step = "4. the county accepts the referral and books an appointment"
        task = self._task(c.county, "referrals", run.referral, "owner", step)
        run.referral_task = str(task["id"])
        self._step(c.village, "referrals", task, "accepted", 403, step)  # the receiver's step, not the sender's
        read = self.call(c.county, "referrals", "GET", f"/fhir/ServiceRequest/{run.referral}", 200, step).json()
        for supporting in read.get("supportingInfo", []):
            self.call(c.county, "exam-mutual-recognition", "GET", f"/fhir/{supporting['reference']}", 200, step)
        task = self._received(c.county, run.referral, step)
        accepted = self._step(c.county, "referrals", task, "accepted", 200, step)
        visit = self.free_slot(c.county, step)
        booking = fhir.appointment(run.patient, slot=f"Slot/{visit}", based_on=f"ServiceRequest/{run.referral}")
        run.appointment = str(
            self.call(c.county, "appointments", "POST", "/fhir/Appointment", 201, step, booking).json()["id"]
        )
        twice = fhir.appointment(run.patient, slot=f"Slot/{visit}")
        self.call(c.village, "appointments", "POST", "/fhir/Appointment", 409, step, twice)
        output = [{"type": {"text": "Appointment"}, "valueReference": {"reference": f"Appointment/{run.appointment}"}}]
        self._step(c.county, "referrals", accepted, "in-progress", 200, step, output=output)
        outbox = self._task(c.village, "referrals", run.referral, "requester", step)
        carried = {"based-on": f"ServiceRequest/{run.referral}"}
        booked = entries(
            self.call(c.village, "referrals", "GET", "/fhir/Appointment", 200, step, params=carried), "Appointment"
        )
        if outbox["status"] != "in-progress" or [a["id"] for a in booked] != [run.appointment]:
            raise ScenarioStepError(f"{step}: the village's outbox shows {outbox['status']} and {booked}")
        self.say(f"{step}: Task/{run.referral_task} in-progress, Appointment/{run.appointment} (a second booking: 409)")

    def asks_the_city(self) -> None:
        c, run = self.cast, self.run
        step = "5. the county asks the city hospital for a remote consultation"
        app = "remote-consultation"
        ask = fhir.service_request(
            "consultation",
            c.county,
            c.city,
            run.patient,
            code=(fhir.SNOMED, "11429006"),
            reason="anaemia with fever: haematology opinion",
            supporting=(f"DiagnosticReport/{run.blood_count}",),
        )
        run.consultation = str(self.call(c.county, app, "POST", "/fhir/ServiceRequest", 201, step, ask).json()["id"])
        request = f"ServiceRequest/{run.consultation}"
        self._step(c.city, app, self._task(c.city, app, run.consultation, "owner", step), "accepted", 200, step)
        self.call(c.city, app, "GET", f"/fhir/{request}", 200, step)
        self.call(c.city, "exam-mutual-recognition", "GET", f"/fhir/DiagnosticReport/{run.blood_count}", 200, step)
        self.call(
            c.city,
            app,
            "POST",
            "/fhir/Communication",
            201,
            step,
            fhir.message(request, "Any recent travel? Please add a peripheral smear."),
        )
        self.call(
            c.county,
            app,
            "POST",
            "/fhir/Communication",
            201,
            step,
            fhir.message(request, "No travel; smear shows microcytosis."),
        )
        thread = entries(
            self.call(c.county, app, "GET", "/fhir/Communication", 200, step, params={"based-on": request}),
            "Communication",
        )
        run.thread = [(m["sender"]["reference"], m["payload"][0]["contentString"]) for m in thread]
        room = f"https://consult.{c.city}.riverton.example/room/{run.consultation[:8]}"
        session = fhir.virtual_session(run.patient, request, _at(2 / 24), _at(2.5 / 24), room)
        self.call(c.city, app, "POST", "/fhir/Appointment", 201, step, session)
        self.say(f"{step}: {request} accepted by the city, {len(run.thread)} messages, a video session booked")

    def reports_back(self) -> None:
        c, run = self.cast, self.run
        step = "6. the consult report comes back into the county's record"
        app = "remote-consultation"
        note = fhir.consult_note(run.patient, b"Consult: iron-deficiency anaemia; oral iron, recheck CBC in 4 weeks.")
        path = f"/fhir/ServiceRequest/{run.consultation}/$consult-report"
        reported = self.call(c.city, app, "POST", path, 201, step, note)
        (report,) = entries(reported, "DocumentReference")
        (done,) = entries(reported, "Task")
        run.consult_report = str(report["id"])
        own = {"patient": run.patient, "type": f"{fhir.LOINC}|11488-4"}
        found = entries(
            self.call(c.county, app, "GET", "/fhir/DocumentReference", 200, step, params=own), "DocumentReference"
        )
        if report.get("custodian") != {"reference": f"Organization/{c.county}"} or done["status"] != "completed":
            raise ScenarioStepError(f"{step}: custodian {report.get('custodian')}, consultation {done['status']}")
        if [d["id"] for d in found] != [run.consult_report]:
            raise ScenarioStepError(f"{step}: the county's record shows {[d['id'] for d in found]}")
        self.say(f"{step}: DocumentReference/{run.consult_report} kept by the county, consultation completed")

    def discloses_the_readers(self) -> None:
        c, run = self.cast, self.run
        step = "7. the patient's access disclosure lists every institution that read the record"
        asked = {"patient": run.patient, "_count": 200}
        events = entries(
            self.call(c.village, EMR_SHARING, "GET", "/fhir/AuditEvent", 200, step, params=asked), "AuditEvent"
        )
        run.readers = readers_in(events)
        if not {c.village, c.county, c.city} <= run.readers or c.community in run.readers:
            raise ScenarioStepError(f"{step}: the disclosure names {sorted(run.readers)}")
        self.say(f"{step}: {', '.join(sorted(run.readers))}")

    def steps(self) -> Iterator[Callable[[], None]]:
        yield from (
            self.seen_at_the_county,
            self.registers_by_card,
            self.uses_the_recognised_result,
            self.refers_up,
            self.accepts_and_books,
            self.asks_the_city,
            self.reports_back,
            self.discloses_the_readers,
        )


def publish_free_slot(desk: Desk, hospital: str, *, in_days: float = 1) -> str:
    """What a hospital's own system does before it can book (the appointments app's job, in a pod): publish a
    Schedule with one free Slot at the exchange, ``in_days`` from now; the Slot's id."""
    http = desk(hospital, EMR_SHARING)
    schedule = {"resourceType": "Schedule", "actor": [{"reference": f"Organization/{hospital}"}], "comment": "Demo"}
    made = http.post("/fhir/Schedule", content=json.dumps(schedule), headers=FHIR_JSON)
    if made.status_code != 201:
        raise ScenarioStepError(f"publishing {hospital}'s schedule: {made.status_code} {_diagnostics(made)}")
    free = fhir.slot(f"Schedule/{made.json()['id']}", _at(in_days), _at(in_days + 1 / 48))
    slot = http.post("/fhir/Slot", content=json.dumps(free), headers=FHIR_JSON)
    if slot.status_code != 201:
        raise ScenarioStepError(f"publishing {hospital}'s slot: {slot.status_code} {_diagnostics(slot)}")
    return str(slot.json()["id"])


def run_scenario(
    cast: Cast, desk: Desk, *, say: Callable[[str], None] = print, metrics: Callable[[], str] | None = None
) -> ScenarioRun:
    """Every step in order; the first that does not go as the scenario says raises ScenarioStepError."""
    scenario = Scenario(cast, desk, say=say, metrics=metrics)
    for step in scenario.steps():
        step()
    return scenario.run
