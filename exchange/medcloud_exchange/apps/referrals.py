"""``referrals``: the facade for both sides, and the receiver's job: poll the inbox, notify, acknowledge.

Every ``requested`` Task in this hospital's inbox is handed to the hospital's own system (a POST of
its summary to ``spec.config["notify.url"]``, when set, and listed at ``GET /job``) and then moved
to ``received`` at the exchange, the step that belongs to the receiver. A Task whose notification
failed stays ``requested`` and is tried again on the next run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from medcloud_exchange.apps.connector import Connector
from medcloud_exchange.apps.facade import AppDefinition
from medcloud_exchange.apps.settings import AppSettings

NOTIFY_URL_KEY = "notify.url"
PURPOSE = "COC"
"""Care coordination: the desk reads its inbox to hand referrals on, not to treat."""
Json = dict[str, Any]


def inbox_query(hospital: str) -> list[tuple[str, str]]:
    return [("owner", f"Organization/{hospital}"), ("status", "requested")]


def tasks_of(bundle: Json) -> list[Json]:
    return [e["resource"] for e in bundle.get("entry", []) if e.get("resource", {}).get("resourceType") == "Task"]


def notification(task: Json) -> Json:
    """What the hospital's system is told of a new referral: references only, no clinical text."""
    return {
        "task": f"Task/{task['id']}",
        "referral": (task.get("focus") or {}).get("reference"),
        "from": (task.get("requester") or {}).get("reference"),
        "authoredOn": task.get("authoredOn"),
    }


def received(task: Json) -> Json:
    return {**task, "status": "received"}


class InboxWatcher:
    def __init__(self, settings: AppSettings, exchange: Connector) -> None:
        self._exchange = exchange
        self._hospital = settings.hospital
        self._headers = exchange.as_job(settings.job_practitioner, PURPOSE)
        self._notify_url = settings.config(NOTIFY_URL_KEY)
        self.delivered: list[Json] = []

    def _notify(self, note: Json) -> bool:
        if self._notify_url is None:
            return True
        try:
            return httpx.post(self._notify_url, json=note, timeout=10).is_success
        except httpx.HTTPError:
            return False

    def run_once(self) -> Mapping[str, Any]:
        answer = self._exchange.call("GET", "/Task", self._headers, params=inbox_query(self._hospital))
        if answer.status != 200:
            raise RuntimeError(f"inbox: the exchange answered {answer.status}: {answer.body[:300]!r}")
        failed = 0
        for task in tasks_of(answer.json()):
            note = notification(task)
            if not self._notify(note):
                failed += 1
                continue
            headers = {**self._headers, "Content-Type": "application/fhir+json"}
            step = self._exchange.call("PUT", f"/Task/{task['id']}", headers, body=json.dumps(received(task)).encode())
            if step.status == 200:
                self.delivered.append(note)
            else:
                failed += 1
        return {"delivered": list(self.delivered[-50:]), "failed": failed}


DEFINITION = AppDefinition(
    serves={
        "ServiceRequest": frozenset({"GET", "POST"}),
        "Task": frozenset({"GET", "PUT"}),
        "DocumentReference": frozenset({"GET"}),
        "Appointment": frozenset({"GET", "POST"}),
    },
    job=InboxWatcher,
    summary="inbox: requested referrals handed to the hospital's system and marked received",
)
