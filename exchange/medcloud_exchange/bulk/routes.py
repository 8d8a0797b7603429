"""The ``$export`` routes of the exchange: kick-off at three levels, status, output, cancel.

Thin: they read the parameters, identify and authorise the caller (TokenReview, then
SubjectAccessReview on ``consortia/export``) and call :class:`BulkExports`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from medcloud_exchange.app import PRACTITIONER_HEADER, Credentials, FhirResponse, Practitioner
from medcloud_exchange.audit import Requester
from medcloud_exchange.bulk.protocol import (
    NDJSON,
    KickOff,
    KickOffError,
    Level,
    choose_purpose,
    manifest,
    parse_format,
    parse_since,
    parse_types,
)
from medcloud_exchange.bulk.service import BulkExports
from medcloud_exchange.outcomes import FHIR_JSON, forbidden, invalid, not_found, unauthenticated
from medcloud_exchange.service import Exchange

STATUS_PATH = "/fhir/$export-status"
OUTPUT_PATH = "/fhir/$export-output"

Types = Annotated[list[str] | None, Query(alias="_type", max_length=512, description="Resource types, comma-separated")]
Since = Annotated[str | None, Query(alias="_since", max_length=40, description="Only resources changed after")]
OutputFormat = Annotated[str | None, Query(alias="_outputFormat", max_length=64)]
Purpose = Annotated[
    str | None, Query(alias="purpose", max_length=63, description="The policy's export purpose (keys the pseudonyms)")
]
Prefer = Annotated[str | None, Header(alias="Prefer", max_length=64)]
JobId = Annotated[str, Path(max_length=64, description="The export job's id")]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"description": "OperationOutcome", "content": {FHIR_JSON: {}}} for code in (400, 401, 403, 404, 409, 503)
}


@dataclass
class KickOffQuery:
    """The parameters every kick-off takes, whatever its level."""

    request: Request
    credentials: Credentials
    practitioner: Practitioner = None
    types: Types = None
    since: Since = None
    output_format: OutputFormat = None
    purpose: Purpose = None
    prefer: Prefer = None


KickOffParameters = Annotated[KickOffQuery, Depends()]


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(f"export {raw} is not known") from None


def include(app: FastAPI, exchange: Exchange) -> None:
    """Mount the ``$export`` routes."""
    exports = BulkExports(exchange)
    app.state.bulk_exports = exports

    def requester(request: Request, credentials: Credentials, practitioner: str | None) -> Requester:
        if credentials is None or not credentials.credentials.strip():
            raise unauthenticated("a bearer token is required")
        caller = exchange.cluster.authenticate(credentials.credentials.strip())
        if caller is None:
            raise unauthenticated(f"the cluster did not accept the token for audience {exchange.settings.audience}")
        if not practitioner or not practitioner.strip():
            raise forbidden(f"an export must name the person it is made for ({PRACTITIONER_HEADER})")
        return exports.requester(caller, practitioner.strip(), request.client.host if request.client else None)

    def kick_off(asked: KickOffQuery, level: Level, group: str | None = None) -> Response:
        who = requester(asked.request, asked.credentials, asked.practitioner)
        if (asked.prefer or "").strip().lower() != "respond-async":
            raise invalid("an export is asynchronous: send Prefer: respond-async")
        policy = exports.policy()
        try:
            parse_format(asked.output_format)
            job = KickOff(
                level=level,
                types=parse_types(asked.types),
                since=parse_since(asked.since),
                purpose=choose_purpose(asked.purpose, [p.name for p in policy.purposes]),
                group=group,
            )
        except KickOffError as exc:
            raise invalid(str(exc)) from None
        if group is not None:
            spec = exchange.cluster.consortium()
            if spec is None or group not in spec.members:
                raise not_found(f"Group/{group} is not a member of Consortium {exchange.settings.consortium}")
        created = exports.kick_off(who, job, str(asked.request.url))
        return Response(status_code=202, headers={"Content-Location": f"{STATUS_PATH}/{created.id}"})

    @app.get("/fhir/$export", status_code=202, responses=_ERRORS, tags=["Bulk Data"])
    def system_export(asked: KickOffParameters) -> Response:
        """System-level export: every resource the exchange indexes, de-identified."""
        return kick_off(asked, Level.SYSTEM)

    @app.get("/fhir/Patient/$export", status_code=202, responses=_ERRORS, tags=["Bulk Data"])
    def patient_export(asked: KickOffParameters) -> Response:
        """Patient-level export: every patient's compartment (every type the exchange exports is in it)."""
        return kick_off(asked, Level.PATIENT)

    @app.get("/fhir/Group/{group}/$export", status_code=202, responses=_ERRORS, tags=["Bulk Data"])
    def group_export(
        asked: KickOffParameters,
        group: Annotated[str, Path(max_length=63, description="A member hospital: its patients")],
    ) -> Response:
        """Group-level export: the patients with a record held by one member hospital (Group/<member>)."""
        return kick_off(asked, Level.GROUP, group)

    @app.get(STATUS_PATH + "/{job}", response_class=FhirResponse, responses=_ERRORS, tags=["Bulk Data"])
    def status(request: Request, credentials: Credentials, job: JobId, practitioner: Practitioner = None) -> Response:
        """The job's manifest (the output is made when read, so a job is complete as soon as it exists)."""
        who = requester(request, credentials, practitioner)
        found = exports.job(who, _job_id(job))
        base = str(request.base_url).rstrip("/")
        outputs = [(t, f"{base}{OUTPUT_PATH}/{found.id}/{t}.ndjson", n) for t, n in exports.counts(found)]
        return FhirResponse(manifest(found.transaction_time, found.request, outputs))

    @app.delete(STATUS_PATH + "/{job}", status_code=202, responses=_ERRORS, tags=["Bulk Data"])
    def cancel(request: Request, credentials: Credentials, job: JobId, practitioner: Practitioner = None) -> Response:
        exports.cancel(requester(request, credentials, practitioner), _job_id(job))
        return Response(status_code=202)

    @app.get(
        OUTPUT_PATH + "/{job}/{resource_type}.ndjson",
        responses={200: {"content": {NDJSON: {}}}, **_ERRORS},
        tags=["Bulk Data"],
    )
    def output(
        request: Request,
        credentials: Credentials,
        job: JobId,
        resource_type: Annotated[str, Path(max_length=64)],
        practitioner: Practitioner = None,
    ) -> Response:
        """One output file: NDJSON of one type, de-identified as it is streamed."""
        who = requester(request, credentials, practitioner)
        found = exports.job(who, _job_id(job))
        lines = exports.output(who, found, resource_type)
        return StreamingResponse(lines, media_type=NDJSON, headers={"Cache-Control": "no-store"})
