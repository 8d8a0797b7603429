"""The one step helper every stateful workflow resource (Task, Appointment) moves through, without a server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from medcloud_exchange.outcomes import FhirError
from medcloud_exchange.workflows.common import Stepped, take_step
from medcloud_exchange.workflows.requests import TaskStatus


class Untouchable:
    """Where the step's connection would be: any use of it fails the test (a refused step writes nothing).
    The write itself is proven against PostgreSQL in tests/integration/test_workflows.py."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused step used the connection ({name})")


ROW = Stepped("task", "Task", uuid.UUID(int=7), 3)


def test_a_refused_step_is_reported_then_raised_and_writes_nothing() -> None:
    seen: list[tuple[int, str]] = []
    with pytest.raises(FhirError) as raised:
        take_step(
            Untouchable(),
            ROW,
            TaskStatus.ACCEPTED,
            "village",
            problem=(403, "only the receiver may move a requested Task to accepted"),
            expected_version=None,
            on_refused=seen.append,
        )
    assert raised.value.status == 403
    assert seen == [(403, "only the receiver may move a requested Task to accepted")]


def test_a_stale_if_match_is_412_and_writes_nothing() -> None:
    with pytest.raises(FhirError) as raised:
        take_step(Untouchable(), ROW, TaskStatus.ACCEPTED, "county", problem=None, expected_version=1)
    assert raised.value.status == 412
    assert "Task/00000000-0000-0000-0000-000000000007 is at version 3, not 1" in str(raised.value.diagnostics)
