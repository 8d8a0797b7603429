"""Install MedCloud's CRDs into a cluster and wait until the API server serves them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from kubernetes import client

from medcloud.crdgen import all_crds

FIELD_MANAGER = "medcloud"


class CRDNotEstablishedError(RuntimeError):
    """A CRD did not become Established (or its names were not accepted) in time."""


def _condition(crd: Any, type_: str) -> tuple[str | None, str]:
    for condition in (crd.status.conditions if crd.status else None) or []:
        if condition.type == type_:
            return condition.status, condition.message or ""
    return None, ""


def apply_crds(api_client: client.ApiClient, crds: Iterable[dict[str, Any]]) -> list[str]:
    """Server-side apply each CRD; return their names. Re-applying an unchanged CRD is a no-op."""
    api = client.ApiextensionsV1Api(api_client)
    names = []
    for crd in crds:
        name = crd["metadata"]["name"]
        api.patch_custom_resource_definition(
            name,
            crd,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        names.append(name)
    return names


def wait_established(api_client: client.ApiClient, names: Iterable[str], timeout: float = 60.0) -> None:
    """Block until every named CRD is Established; raise with the API server's reason otherwise."""
    api = client.ApiextensionsV1Api(api_client)
    pending = list(names)
    deadline = time.monotonic() + timeout
    while pending:
        crd = api.read_custom_resource_definition(pending[0])
        names_accepted, why = _condition(crd, "NamesAccepted")
        if names_accepted == "False":
            raise CRDNotEstablishedError(f"{pending[0]}: names not accepted: {why}")
        established, why = _condition(crd, "Established")
        if established == "True":
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            why = why or "no condition yet"
            raise CRDNotEstablishedError(f"{pending[0]}: not Established after {timeout:.0f}s: {why}")
        time.sleep(0.2)


def install_crds(api_client: client.ApiClient, timeout: float = 60.0) -> list[str]:
    """Apply the CRDs generated from the models and wait until all are Established."""
    names = apply_crds(api_client, all_crds())
    wait_established(api_client, names, timeout)
    return names


def api_error_message(exc: Exception) -> str:
    """The ``message`` of the Status an API server error carries, or the exception's text."""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str):
            return message
    return str(exc)
