"""Liveness and readiness, without authentication (probes carry no tokens)."""

from __future__ import annotations

from fastapi import APIRouter
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.models import Hospital
from medcloud_api import problems
from medcloud_api.deps import KubeDep
from medcloud_api.problems import ProblemError
from medcloud_api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="Liveness")
def healthz() -> Health:
    """The process serves requests. Says nothing about the cluster, so a Kubernetes outage restarts nothing."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness", responses=problems.responses(503))
def readyz(kube: KubeDep) -> Health:
    """The Kubernetes API answers and serves the Hospital resource, the API's database."""
    try:
        kube.list_page(Hospital, limit=1)
        version = client.VersionApi(kube.api_client).get_code(_request_timeout=kube.timeout)
    except (ApiException, HTTPError) as exc:
        reason = f"HTTP {exc.status}" if isinstance(exc, ApiException) else type(exc).__name__
        raise ProblemError(
            503, "kubernetes-unavailable", f"the Kubernetes API cannot serve hospitals ({reason})"
        ) from exc
    return Health(status="ok", kubernetes=version.git_version)
