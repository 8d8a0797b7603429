"""A month of consortium activity, driven through the public APIs only: the gateways (HTTPS, HL7 v2 over
MLLP, MQTT), the exchange (insurance card registration, consent) and its workflow endpoints (orders,
recognised results, referrals up and down, remote consultations and their messages, Schedules, Slots and
the Appointments booked on them: at home, or at a referral's receiver carried by the referral; some
cancelled, some no-shows).

``plan`` is pure and deterministic: the same seed and scale give the same month. ``Driver`` sends it.
The ledger it returns says what was sent (ids, months, who to whom), so a test can compute the indicators
independently of the export. Used by tests/integration/test_analytics_month.py (a small month) and
bench/bench_analytics.py (a large one); docs/analytics.md.

Every reading of a patient within one calendar month is on the same side of the control threshold: the
export reduces dates to the month, so "the last reading of the month" cannot be ordered after it, and
the independent count must not depend on which reading of the month DuckDB takes.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from medcloud.tenancy.mqtt import readings_topic
from medcloud_cli.demo.fhir import message
from medcloud_gateway.hl7v2 import MllpDecoder, frame
from tests.exchange_support import Caller, consent
from tests.workflows_data import INSURANCE_CARD, appointment, cbc_report, coverage, slot
from tests.workflows_requests import SNOMED, recognition_task, service_request

Json = dict[str, Any]
FHIR = {"Content-Type": "application/fhir+json"}
TIER_RANK = {"city": 3, "county": 2, "district": 2, "township": 1, "village": 1, "community": 1}
SPECIALTIES = ("394579002", "394583002")  # SNOMED cardiology, endocrinology
OUTCOMES = ("booked", "booked", "arrived", "fulfilled", "fulfilled", "fulfilled", "cancelled", "noshow")
"""What becomes of an appointment (drawn evenly from these): cancelled and no-show ones are no visit."""
HL7_DATA = Path(__file__).parent / "data" / "devices" / "hl7v2"


@dataclass(frozen=True)
class Scale:
    """How big the month is: the test's is small, the benchmark's large."""

    patients_per_member: int = 12
    readings_per_patient: int = 4
    days: int = 28
    """Device readings spread over the last ``days`` days."""
    visit_hours: float = 2
    """Workflow activity over the last ``visit_hours`` (recognition windows are days, counted from now)."""
    seed: int = 14


@dataclass(frozen=True)
class Reading:
    member: str
    patient: str
    """The hospital's own opaque id of the patient (PID-3, ``patient``)."""
    device: str
    kind: str
    """blood-pressure or glucose."""
    controlled: bool
    time: datetime
    transport: str
    """https, hl7v2 or mqtt."""


@dataclass(frozen=True)
class Visit:
    """One patient's workflow activity at their home member (exchange side)."""

    home: str
    card: str
    resident: str
    when: datetime
    referral_to: str | None
    order: bool
    """A blood count ordered at home; recognised: closed by the city's or county's result instead."""
    order_recognised: bool
    consultation: str | None
    """The specialty of a remote consultation the home member asks the city for."""
    appointment: str | None = None
    """Where the patient is booked: ``home`` (a Slot of the home member), ``referral`` (a Slot of the referral's
    receiver, booked by the home member and carried by the referral), or None."""
    outcome: str = "booked"
    """The appointment's last status: booked, arrived, fulfilled, cancelled (by the booker) or noshow (the host)."""
    replies: int = 0
    """Messages in the consultation's thread after the home member's first: the city and home by turns."""


@dataclass
class Month:
    readings: list[Reading]
    visits: list[Visit]


def _month_times(rng: random.Random, now: datetime, days: int, count: int) -> list[datetime]:
    start = now - timedelta(days=days)
    picks = sorted(rng.uniform(0, days * 86400 - 3600) for _ in range(count))
    return [(start + timedelta(seconds=s)).replace(microsecond=0) for s in picks]


def plan(tiers: Mapping[str, str], scale: Scale, now: datetime, mqtt_member: str | None = None) -> Month:
    """The month: per member ``patients_per_member`` device patients and as many exchange patients."""
    rng = random.Random(scale.seed)
    members = sorted(tiers)
    city = [m for m in members if tiers[m] == "city"]
    readings: list[Reading] = []
    visits: list[Visit] = []
    for member in members:
        higher = [m for m in members if TIER_RANK[tiers[m]] > TIER_RANK[tiers[member]]]
        lower = [m for m in members if TIER_RANK[tiers[m]] < TIER_RANK[tiers[member]]]
        for n in range(scale.patients_per_member):
            patient = f"p{scale.seed}-{n:05d}"
            device = f"{member[:20]}-{n:05d}"
            kind = "blood-pressure" if n % 3 else "glucose"
            steady: dict[str, bool] = {}
            for i, when in enumerate(_month_times(rng, now, scale.days, scale.readings_per_patient)):
                month = when.strftime("%Y-%m")
                controlled = steady.setdefault(month, rng.random() < 0.55)
                transports = ["https", "hl7v2"] + (["mqtt"] if member == mqtt_member else [])
                readings.append(
                    Reading(member, patient, device, kind, controlled, when, transports[(n + i) % len(transports)])
                )
            digits = f"{scale.seed:02d}{rng.randrange(10**8):08d}"
            referral = None
            if higher and rng.random() < 0.7:
                # Up to the nearest tier above (a clinic to the county, the county to the city).
                nearest = min(TIER_RANK[tiers[m]] for m in higher)
                referral = rng.choice(sorted(m for m in higher if TIER_RANK[tiers[m]] == nearest))
            elif lower and rng.random() < 0.5:
                referral = rng.choice(lower)
            order = rng.random() < 0.8
            booked = rng.random()
            where = "referral" if referral and booked < 0.5 else "home" if booked < 0.95 else None
            consultation = rng.choice(SPECIALTIES) if city and member not in city and rng.random() < 0.6 else None
            visits.append(
                Visit(
                    home=member,
                    card=f"RV{digits}{n:04d}",
                    resident=f"11010119{digits}{n % 100:02d}",
                    when=(now - timedelta(seconds=rng.uniform(60, scale.visit_hours * 3600))).replace(microsecond=0),
                    referral_to=referral,
                    order=order,
                    order_recognised=order and rng.random() < 0.6,
                    consultation=consultation,
                    appointment=where,
                    outcome=rng.choice(OUTCOMES),
                    replies=rng.randrange(3) if consultation else 0,
                )
            )
    return Month(readings, visits)


# --------------------------------------------------------------------------- device payloads


def _values(reading: Reading) -> Json:
    if reading.kind == "blood-pressure":
        systolic = 128 if reading.controlled else 152
        return {"systolic": systolic, "diastolic": 82 if reading.controlled else 96, "unit": "mmHg"}
    return {"value": 6.2 if reading.controlled else 8.4, "unit": "mmol/L"}


def reading_json(reading: Reading) -> Json:
    return {
        "deviceId": reading.device,
        "patient": f"Patient/{reading.patient}",
        "kind": reading.kind,
        **_values(reading),
        "time": reading.time.isoformat(),
    }


def _hl7_time(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S+0000")


def hl7_message(reading: Reading, control_id: str) -> str:
    """The public IPF Continua WAN example of its kind (tests/data/devices/SOURCES.md), this reading's values.

    The example's name of the patient (``Doe^John``) stays in PID-5: the gateway must not carry it on."""
    template = "ipf-continua-wan-bp.hl7" if reading.kind == "blood-pressure" else "ipf-continua-wan-glucose.hl7"
    lines = (HL7_DATA / template).read_text().replace("\r\n", "\r").replace("\n", "\r").split("\r")
    values = _values(reading)
    stamp = _hl7_time(reading.time)
    out = []
    for line in lines:
        fields = line.split("|")
        if fields[0] == "MSH":
            fields[9] = control_id
        elif fields[0] == "PID":
            fields[3] = f"{reading.patient}^^^{reading.member}^PI"
        elif fields[0] == "OBR":
            fields[7] = stamp
        elif fields[0] == "OBX" and len(fields) > 3:
            code = fields[3].split("^")[0]
            if len(fields) > 18 and fields[18]:
                fields[18] = f"{reading.device}^EUI-64"
            if code == "150021":
                fields[5] = str(values["systolic"])
            elif code == "150022":
                fields[5] = str(values["diastolic"])
            elif code == "150023":
                fields[5] = str(round((values["systolic"] + 2 * values["diastolic"]) / 3))
            elif code == "160184":
                fields[5], fields[6] = str(values["value"]), "266912^MDC_DIM_MILLI_MOLE_PER_L^MDC"
            if len(fields) > 14 and fields[14]:
                fields[14] = stamp
            if code == "67975":
                fields[5] = reading.time.strftime("%Y%m%d%H%M%S")
        out.append("|".join(fields))
    return "\r".join(line for line in out if line) + "\r"


# --------------------------------------------------------------------------- the driver


@dataclass
class GatewayAddress:
    """Where a member's gateway listens (its HTTPS CA to trust), and the MQTT device client if it takes MQTT."""

    https: str
    ca_file: Path
    hl7v2: tuple[str, int]
    mqtt: mqtt.Client | None = None


@dataclass
class Ledger:
    """What the driver sent, by exchange id: enough to compute the indicators without the export."""

    patients: dict[str, str] = field(default_factory=dict)
    """Visit card -> the exchange's Patient reference."""
    requests: dict[str, Json] = field(default_factory=dict)
    """ServiceRequest id -> kind, from, to, patient, month, specialty."""
    recognised: dict[str, Json] = field(default_factory=dict)
    """Task id -> order id, patient, month."""
    appointments: dict[str, Json] = field(default_factory=dict)
    """Appointment id -> host, booker, referral (its ServiceRequest id or None), status, patient, month."""
    messages: dict[str, Json] = field(default_factory=dict)
    """Communication id -> consultation id, sender."""
    readings: Counter[str] = field(default_factory=Counter)
    """Readings sent per transport."""
    secrets: list[str] = field(default_factory=list)
    """Every identifier and name the driver put in: none may be in an exported byte."""


def _created(response: httpx.Response) -> Json:
    if response.status_code != 201:
        raise AssertionError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    body: Json = response.json()
    return body


def _mllp(address: tuple[str, int], message: str) -> str:
    decoder = MllpDecoder()
    with socket.create_connection(address, timeout=30) as conn:
        conn.sendall(frame(message))
        while True:
            data = conn.recv(65536)
            if not data:
                raise AssertionError("the gateway closed the connection without an ACK")
            acks = decoder.feed(data)
            if acks:
                return acks[0].decode()


class Driver:
    """Sends a :class:`Month` through the gateways, the exchange and its workflow endpoints."""

    def __init__(
        self, exchange: httpx.Client, callers: Mapping[str, Caller], gateways: Mapping[str, GatewayAddress]
    ) -> None:
        self.exchange = exchange
        self.callers = callers
        self.gateways = gateways
        self.ledger = Ledger()
        self._https: dict[str, httpx.Client] = {}
        self._schedules: dict[str, str] = {}

    def close(self) -> None:
        for client in self._https.values():
            client.close()

    # ------------------------------------------------------------------ devices

    def send_reading(self, reading: Reading) -> None:
        address = self.gateways[reading.member]
        self.ledger.readings[reading.transport] += 1
        self.ledger.secrets += [reading.patient, reading.device]
        if reading.transport == "https":
            client = self._https.get(reading.member)
            if client is None:
                context = ssl.create_default_context(cafile=str(address.ca_file))
                client = self._https[reading.member] = httpx.Client(base_url=address.https, verify=context, timeout=30)
            _created(client.post("/v1/readings", json=reading_json(reading)))
        elif reading.transport == "hl7v2":
            ack = _mllp(address.hl7v2, hl7_message(reading, f"M{uuid.uuid4().hex[:12]}"))
            if "MSA|AA|" not in ack:
                raise AssertionError(f"HL7 reading refused: {ack}")
        else:
            assert address.mqtt is not None, f"{reading.member}'s gateway takes no MQTT"
            info = address.mqtt.publish(
                readings_topic(reading.member, reading.device), json.dumps(reading_json(reading)), qos=1
            )
            info.wait_for_publish(timeout=30)

    # ------------------------------------------------------------------ exchange and workflows

    def _post(self, caller: Caller, path: str, body: Json) -> Json:
        return _created(self.exchange.post(path, content=json.dumps(body), headers={**caller.headers(), **FHIR}))

    def _put(self, caller: Caller, path: str, body: Json) -> Json:
        response = self.exchange.put(path, content=json.dumps(body), headers={**caller.headers(), **FHIR})
        if response.status_code != 200:
            raise AssertionError(f"PUT {path}: {response.status_code} {response.text}")
        moved: Json = response.json()
        return moved

    def _request(self, caller: Caller, body: Json, when: datetime, **ledger: Any) -> str:
        body["authoredOn"] = when.isoformat()
        made = self._post(caller, "/fhir/ServiceRequest", body)
        self.ledger.requests[str(made["id"])] = {**ledger, "month": when.strftime("%Y-%m")}
        return str(made["id"])

    def _recognise(self, visit: Visit, patient: str, order: str, tiers: Mapping[str, str]) -> None:
        """A blood count at the city or county (recognised everywhere) closes the home member's order."""
        producer = next(m for m in sorted(tiers) if tiers[m] in ("city", "county"))
        issued = (visit.when - timedelta(hours=6)).isoformat()
        report = self._post(
            self.callers[producer], "/fhir/DiagnosticReport", cbc_report(producer, {"reference": patient}, issued)
        )
        task = recognition_task(order, str(report["id"]), patient)
        task["authoredOn"] = visit.when.isoformat()
        made = self._post(self.callers[visit.home], "/fhir/Task", task)
        self.ledger.recognised[str(made["id"])] = {
            "order": order,
            "patient": patient,
            "month": visit.when.strftime("%Y-%m"),
        }

    def _free_slot(self, host: str, when: datetime) -> str:
        """A Slot the host publishes on its outpatient Schedule (made on its first Slot) at ``when``."""
        caller = self.callers[host]
        schedule = self._schedules.get(host)
        if schedule is None:
            made = self._post(
                caller,
                "/fhir/Schedule",
                {
                    "resourceType": "Schedule",
                    "actor": [{"reference": f"Organization/{host}"}],
                    "comment": "Outpatients",
                },
            )
            schedule = self._schedules[host] = str(made["id"])
        ends = when + timedelta(minutes=20)
        return str(
            self._post(caller, "/fhir/Slot", slot(f"Schedule/{schedule}", when.isoformat(), ends.isoformat()))["id"]
        )

    def _book(self, visit: Visit, patient: str, referral: str | None) -> None:
        """Book the visit's Slot (at home, or at the referral's receiver with the referral carrying it), then
        move it to its outcome: the host marks arrivals, visits done and no-shows, the booker cancels."""
        booker = visit.home
        host = visit.referral_to if referral and visit.referral_to else visit.home
        where = self._free_slot(host, visit.when)
        body = appointment(patient, slot=f"Slot/{where}", based_on=f"ServiceRequest/{referral}" if referral else None)
        booked = self._post(self.callers[booker], "/fhir/Appointment", body)
        self.ledger.secrets += ["Jane", "Smith"]  # the public example's patient display, which the exporter drops
        if visit.outcome != "booked":
            mover = booker if visit.outcome == "cancelled" else host
            step = {**booked, "status": visit.outcome}
            if visit.outcome == "cancelled":
                step["cancelationReason"] = {"text": f"patient {visit.card} moved away"}
            self._put(self.callers[mover], f"/fhir/Appointment/{booked['id']}", step)
        self.ledger.appointments[str(booked["id"])] = {
            "host": host,
            "booker": booker,
            "referral": referral,
            "status": visit.outcome,
            "patient": patient,
            "month": visit.when.strftime("%Y-%m"),
        }

    def _discuss(self, visit: Visit, consultation: str, city: str) -> None:
        """The consultation's thread: the home member's question, then ``replies`` more by turns."""
        for n in range(1 + visit.replies):
            sender = visit.home if n % 2 == 0 else city
            text = f"Case of card {visit.card}: home readings attached, question {n + 1}."
            said = self._post(
                self.callers[sender], "/fhir/Communication", message(f"ServiceRequest/{consultation}", text)
            )
            self.ledger.messages[str(said["id"])] = {"consultation": consultation, "sender": sender}
            self.ledger.secrets.append(text)

    def send_visit(self, visit: Visit, tiers: Mapping[str, str]) -> None:
        home = self.callers[visit.home]
        self.ledger.secrets += [visit.card, visit.resident]
        cover = self._post(home, "/fhir/Coverage", coverage(visit.card, visit.resident))
        patient = str(cover["beneficiary"]["reference"])
        self.ledger.patients[visit.card] = patient
        body = consent({"identifier": {"system": INSURANCE_CARD, "value": visit.card}}, actors=(), purposes=("TREAT",))
        self._post(home, "/fhir/Consent", body)
        if visit.order:
            order = self._request(
                home,
                service_request("laboratory", visit.home, None, patient),
                visit.when,
                kind="laboratory",
                patient=patient,
            )
            if visit.order_recognised:
                self._recognise(visit, patient, order, tiers)
        referral = None
        if visit.referral_to:
            referral = self._request(
                home,
                service_request("referral", visit.home, visit.referral_to, patient),
                visit.when,
                kind="referral",
                source=visit.home,
                target=visit.referral_to,
                patient=patient,
            )
        if visit.consultation:
            city = next(m for m in sorted(tiers) if tiers[m] == "city")
            ask = service_request("consultation", visit.home, city, patient, code=(SNOMED, "11429006"))
            ask["performerType"] = {"coding": [{"system": SNOMED, "code": visit.consultation}]}
            asked = self._request(
                home, ask, visit.when, kind="consultation", specialty=visit.consultation, patient=patient
            )
            self._discuss(visit, asked, city)
        if visit.appointment:
            self._book(visit, patient, referral if visit.appointment == "referral" else None)

    def send(self, month: Month, tiers: Mapping[str, str], progress: Callable[[str], None] | None = None) -> Ledger:
        for n, reading in enumerate(month.readings):
            self.send_reading(reading)
            if progress and n % 1000 == 999:
                progress(f"{n + 1} readings sent")
        for visit in month.visits:
            self.send_visit(visit, tiers)
        return self.ledger


def readings_of(month: Month, members: Iterable[str]) -> int:
    wanted = set(members)
    return sum(1 for r in month.readings if r.member in wanted)
