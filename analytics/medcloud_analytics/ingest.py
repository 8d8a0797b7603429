"""From the exchange's ``$export`` into the analytics bucket: kick off, poll, download, write Parquet.

The analytics never sees identified data: what it downloads is already de-identified by the exchange,
and it holds no key of any record store. Each load is a batch named after the export's transaction time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from medcloud_analytics import flatten
from medcloud_analytics.lake import Lake

PRACTITIONER_HEADER = "X-MedCloud-Practitioner"


class ExportFailedError(RuntimeError):
    """The exchange refused or failed the export; the message is its OperationOutcome's diagnostics."""


@dataclass(frozen=True)
class Export:
    transaction_time: str
    files: dict[str, bytes]

    @property
    def batch(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "-", self.transaction_time)


@dataclass(frozen=True)
class BulkClient:
    """A FHIR Bulk Data client of the exchange, as the commission's service account."""

    http: httpx.Client
    token: str = field(repr=False)
    practitioner: str
    poll_seconds: float = 1.0
    max_polls: int = 600

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", PRACTITIONER_HEADER: self.practitioner}

    def export(self, since: str | None = None, types: str | None = None, purpose: str | None = None) -> Export:
        params = {k: v for k, v in {"_since": since, "_type": types, "purpose": purpose}.items() if v}
        started = self.http.get("/fhir/$export", params=params, headers={**self._headers(), "Prefer": "respond-async"})
        _check(started, 202)
        status_url = started.headers["Content-Location"]
        for _ in range(self.max_polls):
            status = self.http.get(status_url, headers=self._headers())
            if status.status_code == 200:
                manifest: dict[str, Any] = status.json()
                files = {}
                for output in manifest["output"]:
                    got = self.http.get(output["url"], headers=self._headers())
                    _check(got, 200)
                    files[output["type"]] = got.content
                return Export(str(manifest["transactionTime"]), files)
            _check(status, 202)
            time.sleep(self.poll_seconds)
        raise ExportFailedError(f"the export at {status_url} did not complete after {self.max_polls} polls")


def _check(response: httpx.Response, expected: int) -> None:
    if response.status_code == expected:
        return
    try:
        diagnostics = "; ".join(i.get("diagnostics", "") for i in response.json().get("issue", []))
    except ValueError:
        diagnostics = response.text[:200]
    raise ExportFailedError(f"the exchange answered {response.status_code}: {diagnostics}")


def load(lake: Lake, export: Export) -> int:
    """Write every file of ``export`` into the lake as one batch; the number of rows written."""
    resources = [r for data in export.files.values() for r in flatten.ndjson_resources(data)]
    if resources:
        lake.write(flatten.table(resources), export.batch)
    return len(resources)
