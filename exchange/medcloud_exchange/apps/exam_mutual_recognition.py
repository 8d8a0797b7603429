"""``exam-mutual-recognition``: publish final results, ask ``$recognised`` before ordering, close the order."""

from __future__ import annotations

from medcloud_exchange.apps.facade import AppDefinition

DEFINITION = AppDefinition(
    serves={
        "DiagnosticReport": frozenset({"GET", "POST"}),
        "ServiceRequest": frozenset({"GET", "POST"}),
        "Task": frozenset({"POST"}),
    }
)
