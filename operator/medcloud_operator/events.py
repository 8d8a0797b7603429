"""Kubernetes Events on MedCloud resources, posted through Kopf's background poster.

Events are posted only for things that happened (a child created, repaired
or removed, a phase reached, a failure first seen), never for a reconcile
that found nothing to do: an idle operator posts nothing. Messages name
objects and reasons, never key material or spec values beyond names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

NORMAL = "Normal"
WARNING = "Warning"


def post(body: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
    """Queue an Event about ``body`` (the object as read from the API server)."""
    # Only the reference fields: Kopf needs nothing else, and the event queue
    # then holds no copy of the object.
    meta = body["metadata"]
    ref = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid") if key in meta},
    }
    kopf.event(kopf.Body(cast(kopf.RawBody, ref)), type=event_type, reason=reason, message=message)
