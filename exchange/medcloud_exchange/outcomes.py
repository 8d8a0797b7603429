"""Every refusal as a FHIR ``OperationOutcome`` with the status that says what went wrong."""

from __future__ import annotations

from typing import Any

FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    """An answer other than success: HTTP status, OperationOutcome issue code and a diagnostic for the caller."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}


def invalid(diagnostics: str) -> FhirError:
    """A request the server cannot make sense of (bad parameter, malformed JSON): 400."""
    return FhirError(400, "invalid", diagnostics)


def unprocessable(diagnostics: str) -> FhirError:
    """A resource that is well-formed JSON but not a valid FHIR R4 resource of the expected shape: 422."""
    return FhirError(422, "processing", diagnostics)


def unauthenticated(diagnostics: str) -> FhirError:
    return FhirError(401, "login", diagnostics, {"WWW-Authenticate": "Bearer"})


def forbidden(diagnostics: str) -> FhirError:
    return FhirError(403, "forbidden", diagnostics)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics)


def conflict(diagnostics: str) -> FhirError:
    return FhirError(409, "conflict", diagnostics)


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError(412, "conflict", diagnostics)


def unavailable(diagnostics: str, retry_after: int) -> FhirError:
    return FhirError(503, "transient", diagnostics, {"Retry-After": str(retry_after)})


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
