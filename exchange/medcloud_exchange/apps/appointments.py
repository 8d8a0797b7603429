"""``appointments``: the facade for booking, and the job that publishes the hospital's schedule as Slots.

The hospital's schedule is ``spec.config["schedule.json"]``: ``{"comment": "...", "slots": [{"start":
..., "end": ...}]}`` (FHIR instants). The job finds this hospital's Schedule of that comment at the
exchange (publishing it when missing) and publishes each slot not there yet, so running it again,
or after a restart, publishes nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from medcloud_exchange.apps.connector import Answer, Connector
from medcloud_exchange.apps.facade import AppDefinition
from medcloud_exchange.apps.settings import AppSettings

SCHEDULE_KEY = "schedule.json"
PURPOSE = "HOPERAT"
"""Publishing free slots is healthcare operations: no patient is named."""
Json = dict[str, Any]


def wanted(schedule: Json) -> tuple[str, list[tuple[str, str]]]:
    """The schedule's comment and its slots as (start, end); a malformed file is refused with why."""
    comment = schedule.get("comment")
    slots = schedule.get("slots")
    if not isinstance(comment, str) or not comment or not isinstance(slots, list):
        raise ValueError(f'{SCHEDULE_KEY} must be {{"comment": "<text>", "slots": [{{"start": ..., "end": ...}}]}}')
    return comment, [(str(s["start"]), str(s["end"])) for s in slots]


def schedule_resource(hospital: str, comment: str) -> Json:
    return {"resourceType": "Schedule", "actor": [{"reference": f"Organization/{hospital}"}], "comment": comment}


def slot_resource(schedule_id: str, start: str, end: str) -> Json:
    return {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": "free",
        "start": start,
        "end": end,
    }


def resources(bundle: Json) -> list[Json]:
    return [e["resource"] for e in bundle.get("entry", [])]


def missing(slots: list[tuple[str, str]], published: list[Json]) -> list[tuple[str, str]]:
    """The slots not published yet (compared by start, as the exchange returns it)."""
    from datetime import datetime

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    have = {at(s["start"]) for s in published}
    return [(start, end) for start, end in slots if at(start) not in have]


def _ok(answer: Answer, what: str) -> Json:
    if answer.status not in (200, 201):
        raise RuntimeError(f"{what}: the exchange answered {answer.status}: {answer.body[:300]!r}")
    body: Json = answer.json()
    return body


class SlotPublisher:
    def __init__(self, settings: AppSettings, exchange: Connector) -> None:
        self._settings = settings
        self._exchange = exchange
        self._headers = exchange.as_job(settings.job_practitioner, PURPOSE)
        self._write = {**self._headers, "Content-Type": "application/fhir+json"}

    def _post(self, path: str, body: Json) -> Json:
        return _ok(self._exchange.call("POST", path, self._write, body=json.dumps(body).encode()), f"POST {path}")

    def run_once(self) -> Mapping[str, Any]:
        raw = self._settings.config(SCHEDULE_KEY)
        if raw is None:
            return {"schedule": None, "published": 0}
        comment, slots = wanted(json.loads(raw))
        hospital = self._settings.hospital
        found = _ok(
            self._exchange.call("GET", "/Schedule", self._headers, params={"actor": f"Organization/{hospital}"}),
            "GET /Schedule",
        )
        mine = [s for s in resources(found) if s.get("comment") == comment]
        schedule = mine[0] if mine else self._post("/Schedule", schedule_resource(hospital, comment))
        published = resources(
            _ok(
                self._exchange.call("GET", "/Slot", self._headers, params={"schedule": f"Schedule/{schedule['id']}"}),
                "GET /Slot",
            )
        )
        new = missing(slots, published)
        for start, end in new:
            self._post("/Slot", slot_resource(str(schedule["id"]), start, end))
        return {"schedule": f"Schedule/{schedule['id']}", "published": len(new), "slots": len(slots)}


DEFINITION = AppDefinition(
    serves={
        "Schedule": frozenset({"GET"}),
        "Slot": frozenset({"GET"}),
        "Appointment": frozenset({"GET", "POST", "PUT"}),
    },
    job=SlotPublisher,
    summary="the hospital's schedule (config schedule.json) published as Slots",
)
