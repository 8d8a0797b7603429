"""Which module each catalog app that is MedCloud's own code runs (``medcloud app <name>``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from medcloud.models import CatalogApp
from medcloud_exchange.apps import (
    appointments,
    exam_mutual_recognition,
    insurance_card,
    referrals,
    remote_consultation,
)
from medcloud_exchange.apps.facade import AppDefinition

APPS: Mapping[CatalogApp, AppDefinition] = MappingProxyType(
    {
        CatalogApp.INSURANCE_CARD: insurance_card.DEFINITION,
        CatalogApp.EXAM_MUTUAL_RECOGNITION: exam_mutual_recognition.DEFINITION,
        CatalogApp.REFERRALS: referrals.DEFINITION,
        CatalogApp.APPOINTMENTS: appointments.DEFINITION,
        CatalogApp.REMOTE_CONSULTATION: remote_consultation.DEFINITION,
    }
)
