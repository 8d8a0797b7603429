"""The FHIR facade an app offers the hospital's own systems: only its resources, relayed to the exchange.

The facade decides one thing, whether a request belongs to this app (resource type and method);
everything else (who may, consent, validation, the OperationOutcome of a refusal) is the exchange's
and comes back as the exchange answered it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from fastapi import FastAPI, Request, Response

from medcloud_exchange.apps.connector import Connector
from medcloud_exchange.apps.settings import AppSettings

FHIR_JSON = "application/fhir+json"


class Job(Protocol):
    """An app's own hospital-side work, run every interval; its report is shown at ``GET /job``."""

    def run_once(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class AppDefinition:
    """One catalog app: the FHIR resources it fronts, by method, and its job (None: a facade only)."""

    serves: Mapping[str, frozenset[str]]
    job: Any = None
    """A factory ``(settings, connector) -> Job``, or None."""
    summary: str = ""


def operation_outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def served(definition: AppDefinition, method: str, path: str) -> bool:
    """Whether ``method path`` (below /fhir/) is one of this app's: its first segment is the resource type."""
    resource = path.split("/", 1)[0]
    return method.upper() in definition.serves.get(resource, frozenset())


def serves_text(serves: Mapping[str, Iterable[str]]) -> str:
    return "; ".join(f"{r} ({', '.join(sorted(m))})" for r, m in sorted(serves.items()))


@dataclass
class JobRunner:
    """Runs a job every interval in a thread; keeps its last report (or error) for ``GET /job``."""

    job: Job
    interval: float
    last: Mapping[str, Any] = field(default_factory=dict)
    runs: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = {"ok": True, **self.job.run_once()}
            except Exception as error:  # a failed run is reported and retried, never fatal
                self.last = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            self.runs += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


def create_facade(settings: AppSettings, definition: AppDefinition, connector: Connector | None = None) -> FastAPI:
    """The app's HTTP server: ``/healthz``, ``/job`` and ``/fhir/<its resources>``."""
    exchange = connector or Connector(
        settings.exchange_base(), settings.hospital, settings.exchange_token_file, settings.exchange_timeout_seconds
    )
    runner = JobRunner(definition.job(settings, exchange), settings.job_interval_seconds) if definition.job else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=runner.loop, daemon=True) if runner else None
        if thread:
            thread.start()
        try:
            yield
        finally:
            if runner and thread:
                runner.stop()
                thread.join(timeout=10)
            exchange.close()

    app = FastAPI(title=f"MedCloud {settings.app.value} ({settings.hospital})", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "app": settings.app.value, "hospital": settings.hospital}

    @app.get("/job")
    def job() -> dict[str, Any]:
        if runner is None:
            return {"job": None}
        return {"job": definition.summary, "runs": runner.runs, "last": dict(runner.last)}

    @app.api_route("/fhir/{path:path}", methods=["GET", "POST", "PUT"])
    async def relay(path: str, request: Request) -> Response:
        if not served(definition, request.method, path):
            text = f"{settings.app.value} serves {serves_text(definition.serves)}; not {request.method} {path}"
            return Response(json.dumps(operation_outcome("not-supported", text)), 404, media_type=FHIR_JSON)
        body = await request.body()
        try:
            answer = exchange.call(
                request.method,
                f"/{path}",
                dict(request.headers),
                params=list(request.query_params.multi_items()),
                body=body or None,
            )
        except (httpx.HTTPError, OSError) as error:
            # The exchange unreachable (or the token not mounted yet): say so, never a 500.
            text = f"the exchange could not be reached: {type(error).__name__}"
            return Response(json.dumps(operation_outcome("transient", text)), 502, media_type=FHIR_JSON)
        return Response(answer.body, answer.status, headers=answer.headers)

    return app
