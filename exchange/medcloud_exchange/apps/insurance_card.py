"""``insurance-card``: the registration desk presents a province card and gets the patient and Coverage."""

from __future__ import annotations

from medcloud_exchange.apps.facade import AppDefinition

DEFINITION = AppDefinition(serves={"Coverage": frozenset({"GET", "POST"})})
