"""The ``emr-sharing`` catalog app: the hospital-side connector of its consortium's exchange (docs/emr-sharing.md).

Two halves, one process (``medcloud app emr-sharing``):

- the publisher: every ``interval`` it lists the hospital's EMR documents in its RecordStore
  (FHIR ``DocumentReference`` records under ``fhir/DocumentReference/``, as
  ``RecordClient.put_fhir`` writes them, content inline) and publishes each new record
  version to the exchange (ITI-65 simplified). What it published is remembered in the store
  itself, encrypted like every record (``emr-sharing/published.json``), keyed by a SHA-256 of
  record name and version: no document text and no patient identifier in the state. A
  document the exchange refuses (4xx) is remembered as refused, with its diagnostic, and not
  retried until a new version is written; 5xx and network errors are retried next round.
- the facade: ``GET /fhir/DocumentReference``, ``GET /fhir/DocumentReference/{id}`` and
  ``GET /fhir/Binary/{id}`` for the hospital's clinicians, forwarded to the exchange with the
  connector's own token and the clinician's ``X-MedCloud-Practitioner`` and
  ``X-MedCloud-Purpose-Of-Use`` (both required; the exchange audits them), answers as the
  exchange gave them (FHIR JSON, OperationOutcome on refusal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from minio import Minio
from minio.error import S3Error
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from medcloud.records.client import RecordClient
from medcloud.records.keyclient import HttpKeyProvider

LOG = logging.getLogger("medcloud.emr_sharing")

DOCUMENTS_PREFIX = "fhir/DocumentReference/"
STATE_RECORD = "emr-sharing/published.json"
FHIR_JSON = "application/fhir+json"
PRACTITIONER_HEADER = "X-MedCloud-Practitioner"
PURPOSE_HEADER = "X-MedCloud-Purpose-Of-Use"
PUBLISHER = "Device/medcloud-emr-sharing"
"""Who publishes, in the audit: the connector itself, unless the document names a Practitioner author."""


class EmrSharingSettings(BaseSettings):
    """``MEDCLOUD_EMR_SHARING_*``, and the store's credentials Secret's own keys (the pod's ``envFrom``)."""

    model_config = SettingsConfigDict(env_prefix="MEDCLOUD_EMR_SHARING_", extra="ignore", populate_by_name=True)

    exchange_url: str = Field(
        validation_alias=AliasChoices("exchange_url", "MEDCLOUD_EXCHANGE_URL"),
        description="Base URL of the consortium's exchange (without /fhir).",
    )
    exchange_token_file: Path = Field(
        validation_alias=AliasChoices("exchange_token_file", "MEDCLOUD_EXCHANGE_TOKEN_FILE"),
        description="Token for the exchange's audience (projected; read on every request).",
    )
    keyservice_token_file: Path = Field(
        validation_alias=AliasChoices("keyservice_token_file", "MEDCLOUD_KEY_SERVICE_TOKEN_FILE"),
        description="Token for the key service's audience (projected).",
    )
    namespace: str = Field(
        validation_alias=AliasChoices("namespace", "MEDCLOUD_NAMESPACE"), description="The hospital's namespace."
    )
    bucket: str = Field(validation_alias=AliasChoices("bucket", "BUCKET_NAME"))
    s3_host: str = Field(validation_alias=AliasChoices("s3_host", "BUCKET_HOST"))
    s3_port: int = Field(validation_alias=AliasChoices("s3_port", "BUCKET_PORT"))
    s3_secure: bool = Field(default=True, validation_alias=AliasChoices("s3_secure", "MEDCLOUD_S3_SECURE"))
    access_key: str = Field(validation_alias=AliasChoices("access_key", "AWS_ACCESS_KEY_ID"))
    secret_key: SecretStr = Field(validation_alias=AliasChoices("secret_key", "AWS_SECRET_ACCESS_KEY"))
    store: str = Field(default="emr", validation_alias=AliasChoices("store", "MEDCLOUD_RECORDSTORE"))
    key_service_url: str = Field(validation_alias=AliasChoices("key_service_url", "MEDCLOUD_KEY_SERVICE_URL"))
    interval_seconds: float = Field(default=30.0, gt=0, description="Pause between publishing rounds.")
    host: str = Field(default="0.0.0.0", description="Address the facade binds.")  # noqa: S104 - the pod's own
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("port", "MEDCLOUD_HTTP_PORT"),
        description="Port of the facade (the catalog's app port).",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each request to the exchange.")


def record_key(name: str, version_id: str | None) -> str:
    """What the state remembers of a record version: a digest, so names never reach the state in clear."""
    return hashlib.sha256(f"{name}\0{version_id or ''}".encode()).hexdigest()


@dataclass
class PublishRound:
    """What one round did, for the log and the tests."""

    published: list[str] = field(default_factory=list)
    """Exchange ids of the documents published this round."""
    refused: list[str] = field(default_factory=list)
    """Diagnostics of the documents the exchange refused."""
    skipped: int = 0
    failed: int = 0


def _practitioner(document: Mapping[str, Any]) -> str:
    for author in document.get("author") or []:
        reference = str((author or {}).get("reference") or "")
        if reference.startswith("Practitioner/"):
            return reference
    return PUBLISHER


def _diagnostic(response: httpx.Response) -> str:
    try:
        issues = response.json().get("issue") or []
        return f"{response.status_code}: {issues[0].get('diagnostics') or issues[0].get('code')}"
    except (ValueError, AttributeError, IndexError):
        return f"{response.status_code}: {response.reason_phrase}"


class Publisher:
    """Publishes the store's new document versions; one round at a time (the state is read and written whole)."""

    def __init__(self, records: RecordClient, exchange: httpx.Client, token_file: Path) -> None:
        self.records = records
        self.exchange = exchange
        self.token_file = token_file
        self._lock = threading.Lock()

    def _state(self) -> dict[str, Any]:
        try:
            state = self.records.get_json(STATE_RECORD)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return {"published": {}, "refused": {}}
            raise
        return {"published": dict(state.get("published") or {}), "refused": dict(state.get("refused") or {})}

    def _documents(self) -> Iterator[tuple[str, str | None]]:
        for info in self.records.list(DOCUMENTS_PREFIX):
            if info.is_record:
                yield info.name, info.version_id

    def run_once(self) -> PublishRound:
        with self._lock:
            state = self._state()
            done = {**state["published"], **state["refused"]}
            result = PublishRound()
            for name, version in self._documents():
                key = record_key(name, version)
                if key in done:
                    result.skipped += 1
                    continue
                document = self.records.get_json(name, version_id=version)
                headers = {
                    "Authorization": f"Bearer {self.token_file.read_text().strip()}",
                    PRACTITIONER_HEADER: _practitioner(document),
                    PURPOSE_HEADER: "TREAT",
                    "Content-Type": FHIR_JSON,
                }
                try:
                    response = self.exchange.post("/fhir/DocumentReference", json=document, headers=headers)
                except httpx.HTTPError as exc:
                    LOG.warning("the exchange is unreachable (%s); retrying next round", type(exc).__name__)
                    result.failed += 1
                    break
                if response.status_code == 201:
                    exchange_id = str(response.json().get("id"))
                    state["published"][key] = exchange_id
                    result.published.append(exchange_id)
                elif 400 <= response.status_code < 500 and response.status_code not in (401, 408, 429):
                    diagnostic = _diagnostic(response)
                    state["refused"][key] = diagnostic
                    result.refused.append(diagnostic)
                    LOG.warning("the exchange refused a document: %s", diagnostic)
                else:
                    LOG.warning("the exchange failed a publish (%s); retrying next round", response.status_code)
                    result.failed += 1
                    continue
                # Written after each publish: a crash re-publishes at most the one document in flight.
                self.records.put_json(STATE_RECORD, state)
            return result


def records_of(settings: EmrSharingSettings) -> RecordClient:
    keys = HttpKeyProvider(
        settings.key_service_url, settings.namespace, settings.store, token_file=settings.keyservice_token_file
    )
    minio = Minio(
        f"{settings.s3_host}:{settings.s3_port}",
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.s3_secure,
    )
    return RecordClient(minio, settings.bucket, keys)


Practitioner = Annotated[str, Header(alias=PRACTITIONER_HEADER, min_length=1, max_length=256)]
Purpose = Annotated[str, Header(alias=PURPOSE_HEADER, min_length=1, max_length=16)]


def _outcome(status: int, code: str, diagnostics: str) -> Response:
    issue = {"severity": "error", "code": code, "diagnostics": diagnostics}
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Response(json.dumps(body), status_code=status, media_type=FHIR_JSON)


def create_facade(settings: EmrSharingSettings, publisher: Publisher | None = None) -> FastAPI:
    """The clinicians' FHIR facade; with ``publisher``, its rounds run in a thread for the app's life."""
    exchange = httpx.Client(base_url=settings.exchange_url.rstrip("/"), timeout=settings.timeout_seconds)
    stop = threading.Event()

    def publishing() -> None:
        assert publisher is not None
        while not stop.is_set():
            try:
                result = publisher.run_once()
                if result.published or result.refused:
                    LOG.info("published %d, refused %d", len(result.published), len(result.refused))
            except Exception:  # a round that fails (store, key service) is retried, never fatal
                LOG.exception("a publishing round failed; retrying")
            stop.wait(settings.interval_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        thread = threading.Thread(target=publishing, daemon=True) if publisher is not None else None
        if thread is not None:
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        exchange.close()

    app = FastAPI(title="MedCloud EMR sharing", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    def _bad_request(_request: Request, exc: RequestValidationError) -> Response:
        missing = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors())
        return _outcome(400, "required", f"every request names the practitioner and the purpose of use: {missing}")

    def forward(path: str, request: Request, practitioner: str, purpose: str) -> Response:
        headers = {
            "Authorization": f"Bearer {settings.exchange_token_file.read_text().strip()}",
            PRACTITIONER_HEADER: practitioner,
            PURPOSE_HEADER: purpose,
            "Accept": FHIR_JSON,
        }
        for optional in ("X-MedCloud-Break-Glass-Reason",):
            if optional in request.headers:
                headers[optional] = request.headers[optional]
        try:
            answer = exchange.get(path, params=list(request.query_params.multi_items()), headers=headers)
        except httpx.HTTPError:
            return _outcome(503, "transient", "the consortium exchange is unreachable; retry")
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fhir/DocumentReference")
    def find(request: Request, practitioner: Practitioner, purpose: Purpose) -> Response:
        return forward("/fhir/DocumentReference", request, practitioner, purpose)

    @app.get("/fhir/DocumentReference/{id}")
    def read(id: str, request: Request, practitioner: Practitioner, purpose: Purpose) -> Response:
        return forward(f"/fhir/DocumentReference/{id}", request, practitioner, purpose)

    @app.get("/fhir/Binary/{id}")
    def retrieve(id: str, request: Request, practitioner: Practitioner, purpose: Purpose) -> Response:
        return forward(f"/fhir/Binary/{id}", request, practitioner, purpose)

    return app
