"""Liveness and readiness, served by Kopf's ``--liveness`` endpoint (``/healthz``).

Kopf starts that endpoint only after every startup handler has succeeded, and
answers 500 when a probe below raises, so one endpoint serves as both probes:
it is ready once the operator is configured and connected, and alive while
it can still answer.
"""

from __future__ import annotations

from typing import Any

import kopf

from medcloud_operator import metrics
from medcloud_operator.context import get_context
from medcloud_operator.settings import OperatorSettings


def hospitals_by_phase(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Hospitals this replica has reconciled, by phase (fails if startup did not build the context)."""
    get_context(memo)
    return metrics.PHASES.counts("Hospital")


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    kopf.on.probe(id="hospitals", registry=registry)(hospitals_by_phase)
