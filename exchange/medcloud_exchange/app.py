"""The exchange as an ASGI app: FHIR R4 routes under ``/fhir``, every refusal an OperationOutcome.

Routes are thin: they read parameters, build the caller's :class:`Context`
(TokenReview, purpose of use, SubjectAccessReview) and call :class:`Exchange`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
import urllib3
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kubernetes.client.exceptions import ApiException
from minio.error import MinioException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from medcloud.records.envelope import RecordIntegrityError
from medcloud.records.keys import KeyUnavailableError
from medcloud_exchange.audit import AuditStore, Requester
from medcloud_exchange.capability import capability_statement
from medcloud_exchange.cluster import Cluster, hospital_of, namespace_of, new_api_client
from medcloud_exchange.database import Database
from medcloud_exchange.decision import CATEGORIES, Purpose
from medcloud_exchange.metrics import REQUESTS, exchange_registry
from medcloud_exchange.outcomes import (
    FHIR_JSON,
    FhirError,
    forbidden,
    invalid,
    not_found,
    operation_outcome,
    unauthenticated,
    unavailable,
)
from medcloud_exchange.resources import CATEGORY_SYSTEM, ORGANIZATION, parse_patient_token, patient_id_of, searchset
from medcloud_exchange.s3 import minio_client
from medcloud_exchange.service import Context, Exchange, PatientSelector, SearchFilters
from medcloud_exchange.settings import ExchangeSettings
from medcloud_exchange.stores import PublisherStores, StoreUnavailableError

log = logging.getLogger("medcloud_exchange")

PRACTITIONER_HEADER = "X-MedCloud-Practitioner"
PURPOSE_HEADER = "X-MedCloud-Purpose-Of-Use"
HOSPITAL_HEADER = "X-MedCloud-Hospital"
BREAK_GLASS_HEADER = "X-MedCloud-Break-Glass-Reason"

# What is down when these are raised: the database, MinIO, the key service or the API server.
UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    MinioException,
    urllib3.exceptions.HTTPError,
    KeyUnavailableError,
    StoreUnavailableError,
    ApiException,
    OSError,
)


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


bearer = HTTPBearer(auto_error=False, description="A service account token issued for the audience medcloud-exchange.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
Practitioner = Annotated[
    str | None,
    Header(alias=PRACTITIONER_HEADER, max_length=256, description="The practitioner on whose behalf the system calls."),
]
PurposeOfUse = Annotated[
    str | None,
    Header(alias=PURPOSE_HEADER, max_length=16, description="HL7 v3 PurposeOfUse: TREAT, ETREAT, COC, PATRQT, ..."),
]
ActingFor = Annotated[
    str | None,
    Header(alias=HOSPITAL_HEADER, max_length=63, description="The member hospital the caller acts for."),
]
BreakGlassReason = Annotated[
    str | None,
    Header(alias=BREAK_GLASS_HEADER, max_length=512, description="Why the glass is broken (with ETREAT)."),
]


def _context_dependency(verb: str) -> Callable[..., Context]:
    def dependency(
        request: Request,
        credentials: Credentials,
        practitioner: Practitioner = None,
        purpose: PurposeOfUse = None,
        hospital: ActingFor = None,
        reason: BreakGlassReason = None,
    ) -> Context:
        exchange: Exchange = request.app.state.exchange
        if credentials is None or not credentials.credentials.strip():
            raise unauthenticated("a bearer token is required")
        caller = exchange.cluster.authenticate(credentials.credentials.strip())
        if caller is None:
            raise unauthenticated(f"the cluster did not accept the token for audience {exchange.settings.audience}")
        try:
            if not purpose or not purpose.strip():
                raise forbidden(f"every request must state its purpose of use ({PURPOSE_HEADER})")
            try:
                purpose_of_use = Purpose(purpose.strip())
            except ValueError:
                raise invalid(
                    f"{PURPOSE_HEADER} must be one of {', '.join(p.value for p in Purpose)}, got {purpose!r}"
                ) from None
            if not practitioner or not practitioner.strip():
                raise forbidden(f"every request must name the practitioner it is made for ({PRACTITIONER_HEADER})")
            spec = exchange.cluster.consortium()
            if spec is None:
                raise unavailable(
                    f"Consortium {exchange.settings.consortium} does not exist", exchange.settings.retry_after_seconds
                )
            acting_for = (hospital or "").strip() or hospital_of(namespace_of(caller))
            if not acting_for or acting_for not in spec.members:
                raise forbidden(
                    f"{caller.username} does not act for a member of Consortium {exchange.settings.consortium}; "
                    f"name the hospital in {HOSPITAL_HEADER}"
                )
            if not exchange.cluster.may_act_for(caller, acting_for, verb):
                raise forbidden(
                    f"{caller.username} may not {verb} consortia/exchange {exchange.settings.consortium} in the "
                    f"namespace of {acting_for}: bind the ClusterRole medcloud-exchange-client there"
                )
        except FhirError as refused:
            if refused.status == 403:
                # An authenticated caller refused before any patient is named: a security event of its own.
                exchange.audit_refusal(
                    Requester(
                        username=caller.username,
                        hospital=(hospital or "").strip(),
                        practitioner=(practitioner or "").strip()[:256],
                        purpose=(purpose or "").strip()[:16],
                        address=request.client.host if request.client else None,
                    ),
                    verb,
                    refused.diagnostics,
                )
            raise
        requester = Requester(
            username=caller.username,
            hospital=acting_for,
            practitioner=practitioner.strip(),
            purpose=purpose_of_use.value,
            address=request.client.host if request.client else None,
            break_glass_reason=(reason or "").strip() or None,
        )
        return Context(requester=requester, spec=spec, purpose=purpose_of_use)

    return dependency


Reader = Annotated[Context, Depends(_context_dependency("get"))]
Writer = Annotated[Context, Depends(_context_dependency("create"))]
FhirBody = Annotated[dict[str, Any], Body(media_type=FHIR_JSON, description="A FHIR R4 resource, JSON.")]
ResourceId = Annotated[str, Path(max_length=64, description="The resource's id (a UUID).")]
PatientParam = Annotated[str | None, Query(alias="patient", max_length=128, description="Patient/<id>")]
PatientIdentifierParam = Annotated[
    str | None, Query(alias="patient.identifier", max_length=256, description="system|value of a patient identifier")
]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=32, description='W/"<versionId>"')]


def _id(raw: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(f"{kind}/{raw} is not known") from None


def _selector(patient: str | None, identifier: str | None) -> PatientSelector:
    if (patient is None) == (identifier is None):
        raise invalid("give exactly one of patient and patient.identifier")
    if identifier is not None:
        return PatientSelector(identifier=parse_patient_token(identifier))
    assert patient is not None
    return PatientSelector(reference=patient_id_of(patient))


def _version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    try:
        return int(raw)
    except ValueError:
        raise invalid(f'If-Match must be W/"<versionId>", got {if_match!r}') from None


def _tokens(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _categories(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    found = []
    for token in _tokens(values):
        system, sep, code = token.rpartition("|")
        if sep and system and system != CATEGORY_SYSTEM:
            continue
        if code in CATEGORIES:
            found.append(code)
    return tuple(found)


def _authors(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(t.removeprefix(ORGANIZATION) for t in _tokens(values))


def _dates(values: list[str] | None) -> tuple[tuple[str, datetime], ...]:
    out: list[tuple[str, datetime]] = []
    for value in values or []:
        op, raw = (value[:2], value[2:]) if value[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", value)
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise invalid(f"date {value!r} is not [eq|ge|le|gt|lt]YYYY-MM-DD[Thh:mm:ss[+zz:zz]]") from None
        day_only = len(raw) == 10
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        if day_only and op == "eq":
            out += [("ge", when), ("lt", when + timedelta(days=1))]
        elif day_only and op in ("le", "gt"):
            out.append(("lt" if op == "le" else "ge", when + timedelta(days=1)))
        else:
            out.append((op, when))
    return tuple(out)


def _type(value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    system, sep, code = value.rpartition("|")
    if not code:
        raise invalid("type must be system|code or code")
    return (system or None) if sep else None, code


def _outcome(status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> FhirResponse:
    return FhirResponse(operation_outcome(code, diagnostics), status_code=status, headers=headers)


def create_app(settings: ExchangeSettings | None = None, exchange: Exchange | None = None) -> FastAPI:
    """The exchange app; without ``exchange``, one is built from ``settings`` (database, cluster, stores, audit)."""
    settings = settings or ExchangeSettings()
    if exchange is None:
        database = Database(settings.database_url.get_secret_value(), settings.database_timeout_seconds)
        cluster = Cluster(new_api_client(settings), settings)
        audit = AuditStore(
            minio_client(
                settings.audit_endpoint,
                settings.audit_access_key,
                settings.audit_secret_key.get_secret_value(),
                settings.audit_secure,
            ),
            settings.audit_bucket,
        )
        exchange = Exchange(settings, database, cluster, PublisherStores(cluster, settings), audit)
    retry = str(settings.retry_after_seconds)
    own_series = exchange_registry(settings.consortium, exchange.db.reachable)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        exchange.db.open()
        try:
            yield
        finally:
            exchange.db.close()

    app = FastAPI(
        title="MedCloud consortium exchange",
        summary="FHIR R4 (IHE MHD) exchange of a Consortium's records under consent, every access audited.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.exchange = exchange

    @app.exception_handler(FhirError)
    def _fhir_error(_request: Request, exc: FhirError) -> FhirResponse:
        return _outcome(exc.status, exc.code, exc.diagnostics, exc.headers)

    @app.exception_handler(RequestValidationError)
    def _bad_request(_request: Request, exc: RequestValidationError) -> FhirResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _outcome(400, "invalid", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_request: Request, exc: StarletteHTTPException) -> FhirResponse:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "invalid")
        return _outcome(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    for kind in UNAVAILABLE:

        @app.exception_handler(kind)
        def _unavailable(_request: Request, exc: Exception) -> FhirResponse:
            log.error("a dependency is unavailable: %s", type(exc).__name__)
            return _outcome(
                503,
                "transient",
                "the exchange's database, storage, key service or cluster is unavailable; nothing was changed",
                {"Retry-After": retry},
            )

    @app.exception_handler(Exception)
    def _bug(_request: Request, exc: Exception) -> FhirResponse:
        # A defect, never the caller's fault: still a FHIR answer, and nothing about the request in it.
        log.exception("unexpected error: %s", type(exc).__name__)
        return _outcome(500, "exception", "internal error; the request was not completed")

    @app.exception_handler(RecordIntegrityError)
    def _integrity(_request: Request, exc: RecordIntegrityError) -> FhirResponse:
        log.error("stored record failed its integrity check: %s", exc)
        return _outcome(503, "exception", "a stored record failed its integrity check", {"Retry-After": retry})

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        REQUESTS.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> dict[str, str]:
        """Ready when PostgreSQL and the audit bucket answer; else 503 naming which (the operator shows it)."""
        try:
            with exchange.db.connection() as conn:
                conn.execute("SELECT 1")
        except UNAVAILABLE as exc:
            log.warning("not ready: PostgreSQL: %s", type(exc).__name__)
            raise unavailable("PostgreSQL (the index) does not answer", settings.retry_after_seconds) from None
        try:
            reachable = exchange.audit.reachable()
        except UNAVAILABLE as exc:
            log.warning("not ready: the audit store: %s", type(exc).__name__)
            raise unavailable("MinIO (the audit store) does not answer", settings.retry_after_seconds) from None
        if not reachable:
            raise unavailable("the audit bucket does not exist", settings.retry_after_seconds)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest() + generate_latest(own_series), media_type=CONTENT_TYPE_LATEST)

    @app.get("/fhir/metadata", response_class=FhirResponse, tags=["conformance"])
    def metadata() -> FhirResponse:
        """The CapabilityStatement (no token needed, as FHIR expects)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return FhirResponse(capability_statement(settings.consortium, now))

    fhir_errors: dict[int | str, dict[str, Any]] = {
        code: {"description": "OperationOutcome", "content": {FHIR_JSON: {}}}
        for code in (400, 401, 403, 404, 409, 412, 422, 503)
    }

    @app.post(
        "/fhir/DocumentReference", status_code=201, response_class=FhirResponse, responses=fhir_errors, tags=["MHD"]
    )
    def publish(ctx: Writer, body: FhirBody) -> FhirResponse:
        """ITI-105 Simplified Publish: a DocumentReference with its content inline (attachment.data)."""
        resource = exchange.publish(ctx, body)
        return FhirResponse(
            resource, status_code=201, headers={"Location": f"/fhir/DocumentReference/{resource['id']}/_history/1"}
        )

    @app.post("/fhir", response_class=FhirResponse, responses=fhir_errors, tags=["MHD"])
    def provide(ctx: Writer, body: FhirBody) -> FhirResponse:
        """ITI-65 Provide Document Bundle: a transaction Bundle (SubmissionSet List, DocumentReferences, their
        Binary, optionally the Patient), stored whole or not at all; answers the transaction-response Bundle."""
        return FhirResponse(exchange.provide(ctx, body))

    @app.get("/fhir/List/{id}", response_class=FhirResponse, responses=fhir_errors, tags=["MHD"])
    def read_submission_set(ctx: Reader, id: ResourceId) -> FhirResponse:
        """An ITI-65 SubmissionSet (ITI-66 read), listing only the documents the caller may see."""
        return FhirResponse(exchange.read_submission_set(ctx, _id(id, "List")))

    @app.get("/fhir/Patient", response_class=FhirResponse, responses=fhir_errors, tags=["Patient"])
    def find_patients(
        request: Request,
        ctx: Reader,
        identifier: Annotated[
            str | None, Query(max_length=256, description="system|value of a patient identifier")
        ] = None,
        patient_id: Annotated[str | None, Query(alias="_id", max_length=64, description="the Patient's id")] = None,
    ) -> FhirResponse:
        """ITI-78 by identifier (blind-indexed) or _id; names, birth dates and the like are not indexed (they are
        only inside the members' encrypted records), so they are refused as search parameters."""
        unsupported = sorted(set(request.query_params) - {"identifier", "_id"})
        if unsupported:
            raise invalid(
                f"Patient search supports only identifier=system|value and _id; not {', '.join(unsupported)} "
                "(demographics are kept only encrypted, in the members' stores, and are not indexed)"
            )
        if (identifier is None) == (patient_id is None):
            raise invalid("give exactly one of identifier and _id")
        if patient_id is not None:
            try:
                patients = [exchange.read_patient(ctx, _id(patient_id, "Patient"))]
            except FhirError as missing:
                # A search that matches nothing is an empty Bundle, not a 404.
                if missing.status != 404:
                    raise
                patients = []
        else:
            assert identifier is not None
            patients = exchange.find_patients(ctx, parse_patient_token(identifier))
        return FhirResponse(searchset(patients, len(patients), "Patient"))

    @app.get("/fhir/DocumentReference", response_class=FhirResponse, responses=fhir_errors, tags=["MHD"])
    def find(
        request: Request,
        ctx: Reader,
        patient: PatientParam = None,
        patient_identifier: PatientIdentifierParam = None,
        category: Annotated[list[str] | None, Query(max_length=256)] = None,
        type: Annotated[str | None, Query(max_length=256)] = None,
        date: Annotated[list[str] | None, Query(max_length=40)] = None,
        author: Annotated[list[str] | None, Query(max_length=256)] = None,
        count: Annotated[int, Query(alias="_count", ge=0, le=100)] = 20,
        offset: Annotated[int, Query(alias="_offset", ge=0, le=10000)] = 0,
    ) -> FhirResponse:
        """ITI-67 Find Document References of one patient, limited to what the decision permits."""
        selector = _selector(patient, patient_identifier)
        type_system, type_code = _type(type)
        filters = SearchFilters(
            categories=_categories(category),
            publishers=_authors(author),
            type_system=type_system,
            type_code=type_code,
            dates=_dates(date),
            count=count,
            offset=offset,
        )
        # The query as audited: everything but the patient's identifier (the patient is its own entity).
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("patient", "patient.identifier")]
        resources, total = exchange.find(ctx, selector, filters, urlencode(kept))
        return FhirResponse(searchset(resources, total, "DocumentReference"))

    @app.get("/fhir/DocumentReference/{id}", response_class=FhirResponse, responses=fhir_errors, tags=["MHD"])
    def read_document(ctx: Reader, id: ResourceId) -> FhirResponse:
        return FhirResponse(exchange.read_document(ctx, _id(id, "DocumentReference")))

    @app.get(
        "/fhir/Binary/{id}",
        responses={200: {"content": {"application/octet-stream": {}}}, **fhir_errors},
        tags=["MHD"],
    )
    def retrieve(ctx: Reader, id: ResourceId) -> Response:
        """ITI-68 Retrieve Document: the document's bytes, decrypted from the publisher's RecordStore."""
        data, content_type = exchange.retrieve(ctx, _id(id, "Binary"))
        return Response(data, media_type=content_type, headers={"Cache-Control": "no-store"})

    @app.post("/fhir/Consent", status_code=201, response_class=FhirResponse, responses=fhir_errors, tags=["Consent"])
    def create_consent(ctx: Writer, body: FhirBody) -> FhirResponse:
        resource = exchange.create_consent(ctx, body)
        return FhirResponse(
            resource,
            status_code=201,
            headers={"Location": f"/fhir/Consent/{resource['id']}/_history/1", "ETag": 'W/"1"'},
        )

    @app.get("/fhir/Consent/{id}", response_class=FhirResponse, responses=fhir_errors, tags=["Consent"])
    def read_consent(ctx: Reader, id: ResourceId) -> FhirResponse:
        resource = exchange.read_consent(ctx, _id(id, "Consent"))
        return FhirResponse(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})

    @app.put("/fhir/Consent/{id}", response_class=FhirResponse, responses=fhir_errors, tags=["Consent"])
    def update_consent(ctx: Writer, id: ResourceId, body: FhirBody, if_match: IfMatch = None) -> FhirResponse:
        """Replace a Consent; with If-Match only from that version (else 412). Counts from the next request."""
        resource = exchange.update_consent(ctx, _id(id, "Consent"), body, _version(if_match))
        return FhirResponse(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})

    @app.delete("/fhir/Consent/{id}", status_code=204, responses=fhir_errors, tags=["Consent"])
    def revoke_consent(ctx: Writer, id: ResourceId, if_match: IfMatch = None) -> Response:
        """Revoke: the Consent becomes inactive (kept for the record); the next request is decided without it."""
        exchange.revoke_consent(ctx, _id(id, "Consent"), _version(if_match))
        return Response(status_code=204)

    @app.get("/fhir/AuditEvent", response_class=FhirResponse, responses=fhir_errors, tags=["Audit"])
    def disclosure(
        ctx: Reader,
        patient: PatientParam = None,
        patient_identifier: PatientIdentifierParam = None,
        count: Annotated[int, Query(alias="_count", ge=1, le=200)] = 50,
    ) -> FhirResponse:
        """A patient's access disclosure: every AuditEvent about them, newest first."""
        events = exchange.disclosure(ctx, _selector(patient, patient_identifier), count)
        return FhirResponse(searchset(events, len(events), "AuditEvent"))

    # The workflows' routes use this module's caller dependencies, so they are imported once it is loaded.
    from medcloud_exchange.workflows.mount import include

    include(app, exchange)
    from medcloud_exchange.bulk import routes as bulk_routes

    bulk_routes.include(app, exchange)

    # After the bulk routes: /fhir/Patient/$export must not be read as a patient id.
    @app.get("/fhir/Patient/{id}", response_class=FhirResponse, responses=fhir_errors, tags=["Patient"])
    def read_patient(ctx: Reader, id: ResourceId) -> FhirResponse:
        """A patient of the consortium index, with the demographics the caller may see."""
        return FhirResponse(exchange.read_patient(ctx, _id(id, "Patient")))

    return app
