"""FHIR resources stored many to a record: one encrypted NDJSON object per batch (pure, plus thin readers).

A device gateway stores what it receives in batches: one record per batch instead of one per reading, since
an S3 PUT costs far more than the few hundred bytes of an Observation. The layout (docs/record-encryption.md):

- name ``fhir/<resourceType>/<batch id>.ndjson``, content type ``application/fhir+ndjson``, encrypted like
  every record (the name and content type are in the associated data);
- one resource a line, in the order they were received, each a complete FHIR resource with its own ``id``;
- the batch id is a UUIDv5 of the resources' ids in order: the same batch stored again (a retry after a
  storage error) lands on the same name, never on a second object.

A resource can still be in two batches (a gateway that stored a batch and stopped before acknowledging it,
and whose sender then delivered it again with other readings): readers take each ``(type, id)`` once, which
:func:`read_resources` does. Single-resource records (``fhir/<type>/<id>.json``) are read as before.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from medcloud.records.client import FHIR_CONTENT_TYPE, RecordInfo

__all__ = [
    "NDJSON_CONTENT_TYPE",
    "Batch",
    "batch_name",
    "decode_batch",
    "encode_batch",
    "read_resources",
    "select_resource",
]

NDJSON_CONTENT_TYPE = "application/fhir+ndjson"
BATCH_SUFFIX = ".ndjson"
_BATCH_NAMESPACE = uuid.UUID("0c8c4bd1-5a8e-4e43-9d0e-3b7f2f4c6a15")


class Batch:
    """Resources of one type, encoded once: the record's name and its plaintext."""

    def __init__(self, resources: Sequence[Mapping[str, Any]]) -> None:
        if not resources:
            raise ValueError("a batch holds at least one resource")
        types = {r.get("resourceType") for r in resources}
        if len(types) != 1:
            raise ValueError(f"a batch holds resources of one type, got {sorted(map(str, types))}")
        self.resource_type = str(types.pop())
        # A resource sent twice in one batch (a device's resend) is one line.
        unique: dict[str, Mapping[str, Any]] = {}
        for resource in resources:
            unique.setdefault(str(resource["id"]), resource)
        self.ids = list(unique)
        self.name = batch_name(self.resource_type, self.ids)
        self.body = encode_batch(unique[i] for i in self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def batch_name(resource_type: str, ids: Iterable[str]) -> str:
    """``fhir/<type>/<UUIDv5 of the ids in order>.ndjson``: opaque, and stable for the same batch."""
    return f"fhir/{resource_type}/{uuid.uuid5(_BATCH_NAMESPACE, chr(10).join(ids))}{BATCH_SUFFIX}"


def encode_batch(resources: Iterable[Mapping[str, Any]]) -> bytes:
    """One compact JSON resource a line, each line ending in a newline (FHIR Bulk Data's NDJSON)."""
    return b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in resources)


def decode_batch(body: bytes) -> list[dict[str, Any]]:
    """The resources of an NDJSON batch, in order (blank lines skipped)."""
    out = []
    for line in body.splitlines():
        if line.strip():
            resource = json.loads(line)
            if not isinstance(resource, dict):
                raise ValueError("an NDJSON batch line is not a JSON object")
            out.append(resource)
    return out


def select_resource(body: bytes, resource_id: str) -> dict[str, Any]:
    """The one resource with ``resource_id`` in an NDJSON batch; :class:`KeyError` if it holds none."""
    for resource in decode_batch(body):
        if resource.get("id") == resource_id:
            return resource
    raise KeyError(resource_id)


class RecordReader(Protocol):
    """What reading batches needs of a :class:`~medcloud.records.client.RecordClient`."""

    def list(self, prefix: str = "") -> Iterator[RecordInfo]: ...

    def get_bytes(self, name: str, *, version_id: str | None = None) -> bytes: ...


def read_resources(records: RecordReader, resource_type: str) -> Iterator[dict[str, Any]]:
    """Every stored resource of ``resource_type``, batched or single, each id once (the first listed)."""
    seen: set[str] = set()
    for info in records.list(f"fhir/{resource_type}/"):
        body = records.get_bytes(info.name)
        if info.content_type == NDJSON_CONTENT_TYPE or info.name.endswith(BATCH_SUFFIX):
            resources = decode_batch(body)
        elif info.content_type == FHIR_CONTENT_TYPE or info.name.endswith(".json"):
            resources = [json.loads(body)]
        else:
            continue
        for resource in resources:
            key = str(resource.get("id"))
            if key not in seen:
                seen.add(key)
                yield resource
