"""``remote-consultation``: the request, its thread, a virtual session and the consult report."""

from __future__ import annotations

from medcloud_exchange.apps.facade import AppDefinition

DEFINITION = AppDefinition(
    serves={
        "ServiceRequest": frozenset({"GET", "POST"}),
        "Task": frozenset({"GET", "PUT"}),
        "Communication": frozenset({"GET", "POST"}),
        "Appointment": frozenset({"GET", "POST", "PUT"}),
        "DocumentReference": frozenset({"GET"}),
    }
)
