"""The clinical workflows on the exchange, one module each, and the one place that mounts them.

Each workflow is a catalog app of the same name (docs/apps/): ``insurance-card``,
``exam-mutual-recognition``, ``referrals``, ``appointments`` and ``remote-consultation``. They use the
exchange's own caller identity, decision point, audit, patient blind index, errors and migrations.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from medcloud_exchange.service import Exchange
from medcloud_exchange.workflows import insurance
from medcloud_exchange.workflows.common import Workflows


@dataclass(frozen=True)
class Services:
    cards: insurance.InsuranceCards


def include(app: FastAPI, exchange: Exchange) -> None:
    """Mount every workflow's routes on the exchange app and make their services."""
    workflows = Workflows(exchange)
    app.state.workflows = Services(cards=insurance.InsuranceCards(workflows))
    app.include_router(insurance.router)
