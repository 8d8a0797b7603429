"""Kubernetes resource quantities as numbers."""

from __future__ import annotations

from decimal import Decimal
from typing import cast

from kubernetes.utils.quantity import parse_quantity


def quantity(value: str | int) -> Decimal:
    """The value of ``500m``, ``1Gi``, ``4``...; raises ValueError for anything else."""
    # The kubernetes library leaves this function unannotated.
    return cast(Decimal, parse_quantity(value))  # type: ignore[no-untyped-call]
