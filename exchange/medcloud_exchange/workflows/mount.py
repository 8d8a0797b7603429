"""The one place that mounts the workflows on the exchange app and makes their services."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from medcloud_exchange.service import Exchange
from medcloud_exchange.workflows import appointments, consultation, exam_results, insurance, requests
from medcloud_exchange.workflows.common import Workflows


@dataclass(frozen=True)
class Services:
    workflows: Workflows
    cards: insurance.InsuranceCards
    requests: requests.Requests
    exams: exam_results.ExamResults
    appointments: appointments.Appointments
    consultations: consultation.Consultations


def include(app: FastAPI, exchange: Exchange) -> None:
    """Mount every workflow's routes on the exchange app and make their services."""
    workflows = Workflows(exchange)
    orders = requests.Requests(workflows)
    app.state.workflows = Services(
        workflows=workflows,
        cards=insurance.InsuranceCards(workflows),
        requests=orders,
        exams=exam_results.ExamResults(workflows, orders),
        appointments=appointments.Appointments(workflows),
        consultations=consultation.Consultations(workflows, orders),
    )
    for module in (insurance, exam_results, requests, appointments, consultation):
        app.include_router(module.router)
