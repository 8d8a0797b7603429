"""A month of consortium activity in the form the de-identified export has (pseudonyms, months, member
organisations), for the indicator tests: referrals up, down and across, lab orders and recognised results,
remote consultations, blood pressures and glucose at two institutions."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

SNOMED = "http://snomed.info/sct"
TIERS = {"city-general": "city", "county-people": "county", "township-maple": "township", "community-east": "community"}
_ids = itertools.count()


def service_request(category: str, src: str, dst: str, patient: str, month: str, **extra: Any) -> dict[str, Any]:
    """A de-identified ServiceRequest of a SNOMED category (a referral, an order, a consultation) from src to dst."""
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{next(_ids)}",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": category}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": f"Organization/{src}"},
        "performer": [{"reference": f"Organization/{dst}"}],
        "authoredOn": month,
        **extra,
    }


def _bp(org: str, patient: str, month: str, day: int, systolic: float, diastolic: float) -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        quantity = {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "valueQuantity": quantity}

    return {
        "resourceType": "Observation",
        "id": f"o{next(_ids)}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": f"Organization/{org}"}],
        "effectiveDateTime": f"{month}-{day:02d}T08:00:00Z",
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


def _glucose(org: str, patient: str, month: str, mmol: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"g{next(_ids)}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": f"Organization/{org}"}],
        "effectiveDateTime": f"{month}-10T07:00:00Z",
        "valueQuantity": {"value": mmol, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }


def activity() -> Iterator[dict[str, Any]]:
    month = "2026-11"
    for i in range(7):  # township -> county: up, 7 patients, one of them twice
        yield service_request("3457005", "township-maple", "county-people", f"up{i}", month)
    yield service_request("3457005", "township-maple", "county-people", "up0", month)
    for i in range(3):  # county -> township: down, 3 patients: suppressed
        yield service_request("3457005", "county-people", "township-maple", f"down{i}", month)
    for i in range(6):  # township -> community: across
        yield service_request("3457005", "township-maple", "community-east", f"across{i}", month)
    orders = [service_request("108252007", "township-maple", "county-people", f"lab{i}", month) for i in range(8)]
    yield from orders  # lab orders, 6 of them closed by a recognised result (2 repeated: a small rest)
    for i in range(6):
        # As the exchange writes them: no date of their own; the order they close gives the month.
        yield {
            "resourceType": "Task",
            "id": f"t{i}",
            "status": "completed",
            "intent": "order",
            "focus": {"reference": f"ServiceRequest/{orders[i]['id']}"},
            "for": {"reference": f"Patient/lab{i}"},
            "output": [
                {"type": {"coding": [{"code": "x"}]}, "valueReference": {"reference": f"DiagnosticReport/d{i}"}}
            ],
        }
    for i in range(5):  # consultations: cardiology (5 patients) and dermatology (2: suppressed)
        yield service_request(
            "11429006",
            "county-people",
            "city-general",
            f"c{i}",
            month,
            performerType={"coding": [{"code": "394579002"}]},
        )
    for i in range(2):
        yield service_request(
            "11429006",
            "county-people",
            "city-general",
            f"d{i}",
            month,
            performerType={"coding": [{"code": "394582007"}]},
        )
    for i in range(12):  # 12 monitored at the county; the last reading counts: 7 controlled
        yield _bp("county-people", f"m{i}", month, 1, 160, 100)
        yield _bp("county-people", f"m{i}", month, 20, 130 if i < 7 else 150, 80)
    for i in range(12):
        yield _glucose("county-people", f"m{i}", month, 6.0 if i < 6 else 8.5)
    for i in range(3):  # a small clinic's three monitored patients: suppressed
        yield _bp("community-east", f"s{i}", month, 3, 120, 70)
