"""The FHIR Bulk Data Access (v2) protocol's pure parts: kick-off parameters and the completion manifest.

https://hl7.org/fhir/uv/bulkdata/export.html: a kick-off (``GET [base]/$export``, ``/Patient/$export``,
``/Group/[id]/$export``) with ``Prefer: respond-async`` answers 202 with ``Content-Location``: the status
URL, which answers 202 while in progress and 200 with this manifest when complete; each output file is
NDJSON of one resource type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from medcloud_exchange.bulk.sources import RESOURCE_TYPES

NDJSON = "application/fhir+ndjson"
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"
BULK_DATA_SERVER = f"{BULK_DATA}/CapabilityStatement/bulk-data"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})


class Level(StrEnum):
    SYSTEM = "system"
    PATIENT = "patient"
    GROUP = "group"


class KickOffError(ValueError):
    """A kick-off parameter the exchange cannot honour (400, with this message)."""


@dataclass(frozen=True)
class KickOff:
    level: Level
    types: tuple[str, ...]
    since: datetime | None
    purpose: str
    group: str | None = None


def parse_types(values: list[str] | None) -> tuple[str, ...]:
    """``_type`` (comma-separated, repeatable) in the exchange's order; absent: every type."""
    if not values:
        return RESOURCE_TYPES
    asked = {t.strip() for value in values for t in value.split(",") if t.strip()}
    unknown = sorted(asked - set(RESOURCE_TYPES))
    if unknown:
        raise KickOffError(
            f"_type names types the exchange does not export: {', '.join(unknown)} "
            f"(it exports {', '.join(RESOURCE_TYPES)})"
        )
    return tuple(t for t in RESOURCE_TYPES if t in asked)


def parse_since(value: str | None) -> datetime | None:
    """``_since``: a FHIR instant (a time zone is required; a date alone is read as its midnight UTC)."""
    if value is None or not value.strip():
        return None
    raw = value.strip().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise KickOffError(f"_since must be a FHIR instant such as 2026-11-01T00:00:00Z, got {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_format(value: str | None) -> None:
    if value is not None and value.strip() not in OUTPUT_FORMATS:
        raise KickOffError(f"_outputFormat {value!r} is not supported; the exchange writes {NDJSON}")


def choose_purpose(asked: str | None, allowed: list[str]) -> str:
    """The export's purpose: the one asked for, or the policy's only one; it keys the pseudonyms."""
    if asked:
        if asked not in allowed:
            raise KickOffError(f"purpose {asked!r} is not one of the policy's purposes: {', '.join(allowed)}")
        return asked
    if len(allowed) == 1:
        return allowed[0]
    raise KickOffError(f"name the export's purpose (purpose=...): one of {', '.join(allowed)}")


def manifest(
    transaction_time: datetime, request: str, outputs: list[tuple[str, str, int]], *, requires_token: bool = True
) -> dict[str, Any]:
    """The completion manifest: ``outputs`` are (type, url, count); empty types are left out, as the spec allows."""
    return {
        "transactionTime": transaction_time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request": request,
        "requiresAccessToken": requires_token,
        "output": [{"type": t, "url": url, "count": n} for t, url, n in outputs if n > 0],
        "error": [],
    }


def bulk_operations() -> list[dict[str, str]]:
    """The CapabilityStatement's ``rest.operation`` entries of the three export levels."""
    return [
        {"name": name, "definition": f"{BULK_DATA}/OperationDefinition/{definition}"}
        for name, definition in (("export", "export"), ("export", "patient-export"), ("export", "group-export"))
    ]
