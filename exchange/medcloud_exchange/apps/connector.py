"""The exchange as a hospital-side app calls it: the hospital's service account, the caller's practitioner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FORWARDED = ("X-MedCloud-Practitioner", "X-MedCloud-Purpose-Of-Use", "X-MedCloud-Break-Glass-Reason", "If-Match")
"""What the hospital's system says and the exchange decides on; everything else it sent stays here."""
RELAYED = ("Content-Type", "Location", "ETag", "Content-Location")


def exchange_headers(hospital: str, token: str, incoming: Mapping[str, str]) -> dict[str, str]:
    """The headers of a call to the exchange: this app's identity and hospital, the caller's own headers.

    The caller's Authorization is never forwarded: the hospital's systems talk to their own app, and
    the exchange sees the app's service account, which RBAC ties to this hospital.
    """
    lowered = {k.lower(): v for k, v in incoming.items()}
    headers = {"Authorization": f"Bearer {token}", "X-MedCloud-Hospital": hospital}
    for name in FORWARDED:
        value = lowered.get(name.lower())
        if value:
            headers[name] = value
    if "content-type" in lowered:
        headers["Content-Type"] = lowered["content-type"]
    return headers


@dataclass(frozen=True)
class Answer:
    """The exchange's answer, relayed as it is (an OperationOutcome stays one)."""

    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Connector:
    """One HTTP client to the exchange; the token is read per call (kubelet rotates projected tokens)."""

    def __init__(self, base_url: str, hospital: str, token_file: Path, timeout: float) -> None:
        self.hospital = hospital
        self._token_file = token_file
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        incoming: Mapping[str, str],
        *,
        params: Any = None,
        body: bytes | None = None,
    ) -> Answer:
        token = self._token_file.read_text().strip()
        response = self._http.request(
            method, path, params=params, content=body, headers=exchange_headers(self.hospital, token, incoming)
        )
        kept = {name: response.headers[name] for name in RELAYED if name in response.headers}
        return Answer(response.status_code, response.content, kept)

    def as_job(self, practitioner: str, purpose: str) -> dict[str, str]:
        """The headers the app's own job sends: it acts for a named desk, for the given purpose of use."""
        return {"X-MedCloud-Practitioner": practitioner, "X-MedCloud-Purpose-Of-Use": purpose}
