"""The pure parts of the catalog apps: headers sent to the exchange, what each facade serves, the jobs' decisions."""

from __future__ import annotations

import pytest

from medcloud.models import CatalogApp
from medcloud_exchange.apps import appointments, referrals
from medcloud_exchange.apps.catalog import APPS
from medcloud_exchange.apps.connector import exchange_headers
from medcloud_exchange.apps.facade import served


def test_the_exchange_sees_the_apps_identity_and_the_callers_practitioner_and_purpose() -> None:
    incoming = {
        "authorization": "Bearer the-his-own-token",
        "x-medcloud-practitioner": "Practitioner/dr-li",
        "x-medcloud-purpose-of-use": "TREAT",
        "x-medcloud-hospital": "someone-else",
        "cookie": "session=1",
        "content-type": "application/fhir+json",
    }
    headers = exchange_headers("county-people", "app-token", incoming)
    assert headers == {
        "Authorization": "Bearer app-token",
        "X-MedCloud-Hospital": "county-people",
        "X-MedCloud-Practitioner": "Practitioner/dr-li",
        "X-MedCloud-Purpose-Of-Use": "TREAT",
        "Content-Type": "application/fhir+json",
    }


def test_every_app_of_medclouds_own_code_has_a_definition_and_emr_sharing_is_not_one_of_them() -> None:
    assert set(APPS) == set(CatalogApp) - {CatalogApp.EMR_SHARING}


@pytest.mark.parametrize(
    ("app", "method", "path", "expected"),
    [
        (CatalogApp.INSURANCE_CARD, "GET", "Coverage", True),
        (CatalogApp.INSURANCE_CARD, "POST", "Coverage", True),
        (CatalogApp.INSURANCE_CARD, "GET", "DocumentReference", False),
        (CatalogApp.EXAM_MUTUAL_RECOGNITION, "GET", "DiagnosticReport/$recognised", True),
        (CatalogApp.EXAM_MUTUAL_RECOGNITION, "PUT", "Task/1", False),
        (CatalogApp.REFERRALS, "PUT", "Task/1", True),
        (CatalogApp.REFERRALS, "POST", "Coverage", False),
        (CatalogApp.APPOINTMENTS, "POST", "Slot", False),
        (CatalogApp.APPOINTMENTS, "PUT", "Appointment/1", True),
        (CatalogApp.REMOTE_CONSULTATION, "POST", "ServiceRequest/1/$consult-report", True),
        (CatalogApp.REMOTE_CONSULTATION, "POST", "Communication", True),
    ],
)
def test_a_facade_serves_its_own_resources_only(app: CatalogApp, method: str, path: str, expected: bool) -> None:
    assert served(APPS[app], method, path) is expected


def test_a_referral_notification_carries_references_only_and_the_step_is_received() -> None:
    task = {
        "resourceType": "Task",
        "id": "t1",
        "status": "requested",
        "focus": {"reference": "ServiceRequest/s1"},
        "requester": {"reference": "Organization/township-maple"},
        "authoredOn": "2026-12-01T08:00:00+08:00",
        "note": [{"text": "chest pain"}],
    }
    bundle = {"resourceType": "Bundle", "entry": [{"resource": task}, {"resource": {"resourceType": "Patient"}}]}
    assert referrals.tasks_of(bundle) == [task]
    assert referrals.notification(task) == {
        "task": "Task/t1",
        "referral": "ServiceRequest/s1",
        "from": "Organization/township-maple",
        "authoredOn": "2026-12-01T08:00:00+08:00",
    }
    assert referrals.received(task)["status"] == "received"
    assert referrals.inbox_query("county-people") == [("owner", "Organization/county-people"), ("status", "requested")]


def test_only_slots_not_yet_published_are_published_whatever_the_time_zone_spelling() -> None:
    comment, slots = appointments.wanted(
        {
            "comment": "Respiratory outpatients",
            "slots": [
                {"start": "2026-12-03T09:00:00+08:00", "end": "2026-12-03T09:30:00+08:00"},
                {"start": "2026-12-03T09:30:00+08:00", "end": "2026-12-03T10:00:00+08:00"},
            ],
        }
    )
    assert comment == "Respiratory outpatients"
    published = [{"resourceType": "Slot", "start": "2026-12-03T01:00:00Z"}]
    assert appointments.missing(slots, published) == [("2026-12-03T09:30:00+08:00", "2026-12-03T10:00:00+08:00")]
    assert appointments.missing(slots, []) == slots


@pytest.mark.parametrize("bad", [{}, {"comment": "", "slots": []}, {"comment": "x", "slots": "9:00"}])
def test_a_malformed_schedule_is_refused_with_its_format(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"schedule\.json must be"):
        appointments.wanted(bad)


def test_a_published_slot_is_free_and_belongs_to_the_schedule() -> None:
    slot = appointments.slot_resource("s1", "2026-12-03T09:00:00+08:00", "2026-12-03T09:30:00+08:00")
    assert slot["schedule"] == {"reference": "Schedule/s1"}
    assert slot["status"] == "free"
    schedule = appointments.schedule_resource("county-people", "Respiratory outpatients")
    assert schedule["actor"] == [{"reference": "Organization/county-people"}]
