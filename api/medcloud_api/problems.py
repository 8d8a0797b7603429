"""Every error as RFC 9457 ``application/problem+json``: type, title, status, detail, instance.

Handlers here turn everything that can go wrong in a request (our own
refusals, request validation, the Kubernetes API's answers, and bugs) into a
problem document. A response never carries a stack trace or a request body:
bugs are logged server-side and answered with a fixed text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

import urllib3.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://medcloud.io/problems/"

# One entry per problem type the API answers with; docs/control-api.md lists the same.
TITLES: dict[str, str] = {
    "unauthorized": "Authentication required",
    "forbidden": "Not allowed",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "validation-failed": "The request is not valid",
    "rejected-by-kubernetes": "The Kubernetes API rejected the object",
    "conflict": "Conflicts with what exists",
    "institution-code-taken": "The institution code belongs to another hospital",
    "records-under-retention": "Records are under retention",
    "onboarding-failed": "Onboarding failed part-way",
    "tenant-namespace-missing": "The tenant namespace did not appear",
    "tenant-failed": "The operator cannot provision the tenant",
    "invalid-continue-token": "Invalid continue token",
    "expired-continue-token": "The continue token has expired",
    "kubernetes-forbidden": "The Kubernetes API refused the request",
    "kubernetes-unavailable": "The Kubernetes API is unavailable",
    "kubernetes-error": "Unexpected answer from the Kubernetes API",
    "dashboard-unavailable": "The dashboard's indicators are unavailable",
    "internal-error": "Internal error",
}

_SLUG_BY_STATUS = {
    400: "validation-failed",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    422: "validation-failed",
}


class FieldError(BaseModel):
    """One invalid field of a request."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="Dotted path of the field, e.g. spec.institutionCode or limit.")
    detail: str = Field(description="What is wrong with it.")
    pointer: str | None = Field(
        default=None, description="JSON Pointer (RFC 6901) into the request body, e.g. #/spec/tier."
    )
    location: str | None = Field(default=None, description="Where the field is: body, query, path or header.")


class Problem(BaseModel):
    """An RFC 9457 problem document; extension members carry the details of some problem types."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": TYPE_BASE + "forbidden",
                    "title": TITLES["forbidden"],
                    "status": 403,
                    "detail": 'system:serviceaccount:tenants:admin-a may not get hospitals.medcloud.io "b"',
                    "instance": "/v1/hospitals/b",
                }
            ]
        },
    )

    type: str = Field(description="URI naming the problem type.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What went wrong in this request, for a person to read.")
    instance: str = Field(description="Path of the request that failed.")
    errors: list[FieldError] | None = Field(default=None, description="Each invalid field, for validation problems.")


class ProblemError(Exception):
    """Raise to answer with a problem document; ``extensions`` become extra members."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        if slug not in TITLES:
            raise ValueError(f"unknown problem type {slug!r}")
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.errors = list(errors) if errors is not None else None
        self.extensions = extensions

    def to_document(self, instance: str) -> dict[str, Any]:
        problem = Problem(
            type=TYPE_BASE + self.slug,
            title=TITLES[self.slug],
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=self.errors,
        )
        document = problem.model_dump(mode="json", exclude_none=True)
        # Extensions may hold models (differences, object references): dump them the same way.
        for key, value in self.extensions.items():
            document[key] = _jsonable(value)
        return document


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def problem_response(request: Request, problem: ProblemError) -> JSONResponse:
    return JSONResponse(
        problem.to_document(request.url.path),
        status_code=problem.status,
        headers=problem.headers,
        media_type=MEDIA_TYPE,
    )


# ---------------------------------------------------------------------------
# Common problems
# ---------------------------------------------------------------------------


def unauthorized(detail: str) -> ProblemError:
    # RFC 9110: a 401 names the scheme the client should use.
    return ProblemError(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="medcloud"'})


def not_found(what: str) -> ProblemError:
    return ProblemError(404, "not-found", f"{what} does not exist")


# ---------------------------------------------------------------------------
# Request validation
# ---------------------------------------------------------------------------


def pointer(path: Iterable[str | int]) -> str:
    """RFC 6901 JSON Pointer (as a URI fragment) to ``path``."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "#/" + "/".join(parts) if parts else "#"


def dotted(path: Iterable[str | int]) -> str:
    """``spec.sharing[0].category`` style path, as the Kubernetes API writes them."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_errors(errors: Sequence[Any]) -> list[FieldError]:
    """FastAPI/pydantic errors as field errors; never echoes the input (it may be medical data)."""
    out = []
    for error in errors:
        loc = [p for p in error.get("loc", ()) if isinstance(p, str | int)]
        location = str(loc[0]) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else None
        path = loc[1:] if location else loc
        if error.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
            path = []
        else:
            message = str(error.get("msg", "invalid value"))
        out.append(
            FieldError(
                field=dotted(path) or (location or "body"),
                detail=message,
                pointer=pointer(path) if location == "body" else None,
                location=location,
            )
        )
    return out


def invalid_request(errors: list[FieldError], detail: str | None = None) -> ProblemError:
    summary = detail or "; ".join(f"{e.field}: {e.detail}" for e in errors[:5])
    return ProblemError(422, "validation-failed", summary, errors=errors)


# ---------------------------------------------------------------------------
# Answers of the Kubernetes API
# ---------------------------------------------------------------------------


def kubernetes_status(exc: ApiException) -> dict[str, Any]:
    """The Status object an API server error carries (empty when the body is not one)."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def kubernetes_message(exc: ApiException) -> str:
    message = kubernetes_status(exc).get("message")
    return message if isinstance(message, str) and message else (exc.reason or f"HTTP {exc.status}")


_FIELD_INDEX = re.compile(r"\[(\d+)\]")


def kubernetes_causes(exc: ApiException, body_prefix: Sequence[str | int] | None = None) -> list[FieldError]:
    """The field-level causes of a rejection, pointed into the request body under ``body_prefix`` (if known)."""
    details = kubernetes_status(exc).get("details") or {}
    out = []
    for cause in details.get("causes") or []:
        field = str(cause.get("field") or "")
        path: list[str | int] = []
        for part in field.split(".") if field else []:
            name, *indexes = _FIELD_INDEX.split(part)
            if name:
                path.append(name)
            path.extend(int(i) for i in indexes if i)
        out.append(
            FieldError(
                field=field or "object",
                detail=str(cause.get("message") or cause.get("reason") or "invalid"),
                pointer=pointer([*body_prefix, *path]) if body_prefix is not None and path else None,
                location="body" if body_prefix is not None else None,
            )
        )
    return out


def from_kubernetes(exc: ApiException, body_prefix: Sequence[str | int] | None = None) -> ProblemError:
    """Map an API server error onto the problem a caller of this API should see."""
    status = int(exc.status or 0)
    message = kubernetes_message(exc)
    if status in (400, 422):
        errors = kubernetes_causes(exc, body_prefix)
        return ProblemError(422, "rejected-by-kubernetes", message, errors=errors or None)
    if status == 404:
        return ProblemError(404, "not-found", message)
    if status == 409:
        return ProblemError(409, "conflict", message)
    if status == 410:
        return ProblemError(
            410,
            "expired-continue-token",
            "the list changed too much since the token was issued; start again without a continue token",
        )
    if status == 403:
        return ProblemError(403, "kubernetes-forbidden", message)
    if status == 429 or status >= 500:
        return ProblemError(503, "kubernetes-unavailable", message, headers={"Retry-After": "5"})
    return ProblemError(502, "kubernetes-error", f"HTTP {status}: {message}")


# ---------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Register the handlers that make every error a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = validation_errors(exc.errors())
        if any(error.get("type") == "json_invalid" for error in exc.errors()):
            # Not a request that fails the models but no JSON at all: the client's bug, 400.
            problem = ProblemError(400, "validation-failed", "the request body is not valid UTF-8 JSON", errors=errors)
            return problem_response(request, problem)
        return problem_response(request, invalid_request(errors))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        slug = _SLUG_BY_STATUS.get(status, "internal-error" if status >= 500 else "validation-failed")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        if status == 400 and request.method in ("POST", "PATCH"):
            # Starlette's words for a body it cannot even decode.
            detail = "the request body is not valid UTF-8 JSON"
        elif status == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        problem = ProblemError(status, slug, detail, headers=dict(exc.headers or {}))
        return problem_response(request, problem)

    async def on_kubernetes(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiException)
        problem = from_kubernetes(exc)
        if problem.status >= 500:
            log.warning("Kubernetes API error on %s %s: %s", request.method, request.url.path, problem.detail)
        return problem_response(request, problem)

    async def on_unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Kubernetes API unreachable on %s %s: %s", request.method, request.url.path, exc)
        problem = ProblemError(
            503, "kubernetes-unavailable", "the Kubernetes API could not be reached", headers={"Retry-After": "5"}
        )
        return problem_response(request, problem)

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only; the caller gets a fixed text.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        problem = ProblemError(500, "internal-error", "the control API failed to handle the request; see its log")
        return problem_response(request, problem)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ApiException, on_kubernetes)
    app.add_exception_handler(urllib3.exceptions.HTTPError, on_unreachable)
    app.add_exception_handler(Exception, on_bug)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: each status answered with a problem document."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
