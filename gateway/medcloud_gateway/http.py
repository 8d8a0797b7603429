"""HTTPS: ``POST /v1/readings`` with a reading or a batch of them (array or FHIR Bundle), plus health and metrics.

Two apps: the readings app on the HTTPS port (it also answers the health
endpoints), and the health app on the plain health port that the kubelet probes
and Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from medcloud.models import DeviceProtocol
from medcloud_gateway.devicetls import DEVICE_SCOPE_KEY
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import Result
from medcloud_gateway.presence import DeviceState

MAX_BODY_BYTES = 2 * 1024 * 1024
"""A reading is a few hundred bytes (a batch of 5,000 about 1 MiB); a 12-lead, 10 s ECG strip at 500 Hz about
300 KiB. Anything larger is refused."""

Readiness = Callable[[], list[str]]
"""What is not ready yet (empty: ready)."""

_STATUS = {Result.STORED: 201, Result.REJECTED: 422, Result.FAILED: 503}
RETRY_AFTER_SECONDS = 5
"""What a 503 tells a device to wait: storage and the key service come back on their own (docs/drills.md)."""


def _health_router(ingestor: Ingestor, readiness: Readiness) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        waiting = readiness()
        if waiting:
            return JSONResponse({"status": "not ready", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ready"})

    @router.get("/devices")
    def devices() -> dict[str, Any]:
        """Devices this gateway stored readings from: lastSeen and Online / Stale / Offline, and the counts."""
        presence = ingestor.metrics.presence
        seen = presence.snapshot()
        counts = {state.value: sum(1 for s in seen if s.state is state) for state in DeviceState}
        return {"devices": [s.as_json() for s in seen], "counts": counts}

    @router.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(ingestor.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _readings_router(ingestor: Ingestor) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["readings"])

    @router.post(
        "/readings",
        status_code=201,
        responses={
            201: {"description": "Stored as encrypted FHIR Observations, one record for the request."},
            413: {"description": "Body too large."},
            422: {
                "description": "Not a reading this gateway takes, or a batch with one: `error` says why, `errors` "
                "names each bad reading's index. Nothing was stored."
            },
            503: {"description": "Good readings that could not be stored now; send them again after `Retry-After`."},
        },
    )
    async def post_reading(request: Request, content_length: Annotated[int | None, Header()] = None) -> JSONResponse:
        """Store one reading (a device reading, a FHIR Observation, an Open mHealth data point, an ECG strip)
        or a batch of them: a JSON array, or a FHIR Bundle whose entries are Observations. A batch is stored
        as one record, or refused whole."""
        if content_length is not None and content_length > MAX_BODY_BYTES:
            ingestor.reject(DeviceProtocol.HTTPS, "body too large")
            return JSONResponse({"result": "rejected", "error": "body too large"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            ingestor.reject(DeviceProtocol.HTTPS, "body too large")
            return JSONResponse({"result": "rejected", "error": "body too large"}, status_code=413)
        payload: Any = body
        try:
            decoded = json.loads(body)
        except ValueError:
            pass  # ingest_payload names the problem
        else:
            if isinstance(decoded, dict | list):
                payload = decoded
        # With device certificates, the readings must be the connected device's (its certificate's common name).
        device = request.scope.get(DEVICE_SCOPE_KEY)
        outcome = await asyncio.to_thread(ingestor.ingest_payload, DeviceProtocol.HTTPS, payload, device_id=device)
        batch = isinstance(payload, list) or (isinstance(payload, dict) and payload.get("resourceType") == "Bundle")
        answer = outcome.as_batch_json() if batch else outcome.as_json()
        # Good readings not stored now: the device is told it may send them again, and when (RFC 9110 Retry-After).
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if outcome.result is Result.FAILED else None
        return JSONResponse(answer, status_code=_STATUS[outcome.result], headers=retry)

    return router


def create_readings_app(ingestor: Ingestor, readiness: Readiness) -> FastAPI:
    app = FastAPI(title="MedCloud device gateway", version="v1", docs_url=None, redoc_url=None)
    app.include_router(_readings_router(ingestor))
    app.include_router(_health_router(ingestor, readiness))
    return app


def create_health_app(ingestor: Ingestor, readiness: Readiness) -> FastAPI:
    app = FastAPI(title="MedCloud device gateway health", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(_health_router(ingestor, readiness))
    return app
