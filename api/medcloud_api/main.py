"""The FastAPI application: routers, problem handlers, audit and metrics middleware, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from kubernetes import client

from medcloud_api import problems
from medcloud_api.audit import AuditMiddleware
from medcloud_api.config import APISettings
from medcloud_api.kube import Kube, new_api_client
from medcloud_api.metrics import Metrics, MetricsMiddleware
from medcloud_api.routers import consortia, dashboard, devices, health, hospitals, progress

TITLE = "MedCloud control API"
VERSION = "0.1.0"
DESCRIPTION = """\
Onboard a hospital onto the city's medical cloud in one request and watch every
layer come up: the tenant (Hospital), its encrypted record stores, its device
gateways and its apps.

The API keeps no state: it reads and writes MedCloud's custom resources, so
`kubectl` and the API always agree. Callers send a Kubernetes bearer token
(`Authorization: Bearer <token>`); the cluster authenticates it (TokenReview)
and the cluster's RBAC authorizes every action (SubjectAccessReview). Errors
are `application/problem+json` (RFC 9457).
"""

TAGS = [
    {"name": "hospitals", "description": "Onboard, view, change and offboard hospitals."},
    {"name": "progress", "description": "Live onboarding progress (Server-Sent Events)."},
    {"name": "consortia", "description": "Medical alliances, their members and what they share."},
    {"name": "dashboard", "description": "The city health commission's indicators as charts."},
    {"name": "health", "description": "Probes; no authentication."},
]


def create_app(settings: APISettings | None = None, api_client: client.ApiClient | None = None) -> FastAPI:
    """The API, acting with ``api_client`` (default: the identity ``settings`` name) towards Kubernetes."""
    settings = settings or APISettings()
    owns_client = api_client is None
    kube_client = api_client if api_client is not None else new_api_client(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_client:
            kube_client.close()  # type: ignore[no-untyped-call]  # unannotated in the kubernetes library

    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, openapi_tags=TAGS, lifespan=lifespan)
    app.state.settings = settings
    app.state.kube = Kube(kube_client, settings.kube_timeout_seconds)
    metrics = Metrics()
    app.state.metrics = metrics

    problems.install(app)
    # Added last = outermost: metrics count what audit saw, including audit's own failures.
    app.add_middleware(AuditMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    app.include_router(health.router)
    app.include_router(hospitals.router)
    app.include_router(progress.router)
    app.include_router(consortia.router)
    app.include_router(devices.router)
    app.include_router(dashboard.router)
    app.add_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, routes=app.routes, tags=TAGS)
            # The problem responses refer to this schema; no route returns it as a model.
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            problem = problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(problem.pop("$defs", {}))
            components["Problem"] = problem
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
