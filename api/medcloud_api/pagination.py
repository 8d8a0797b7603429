"""Filtered pages over the Kubernetes API's own chunked lists, with a stateless continue token.

Filters (tier, consortium, phase, and what the caller may see) run here,
because the API server cannot select custom resources by spec or status
fields. A page therefore may end in the middle of a Kubernetes chunk; the
token records that chunk's Kubernetes continue token plus the last name
returned, and the next request re-reads the chunk and skips past that name.
That works because the API server returns cluster-scoped objects sorted by
name, and it keeps no state in the API.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass

from medcloud.kube.client import Manifest

Fetch = Callable[[str | None, int], tuple[list[Manifest], str | None]]
"""(kubernetes continue token, chunk size) -> (items, next kubernetes continue token)."""

TOKEN_VERSION = 1
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class Cursor:
    kube_continue: str | None
    after: str | None


def encode(cursor: Cursor) -> str:
    raw = json.dumps({"v": TOKEN_VERSION, "k": cursor.kube_continue, "a": cursor.after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str) -> Cursor:
    """The cursor in a token; ValueError for anything this API did not issue."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise ValueError("empty or too long")
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a token of this API") from exc
    if not isinstance(raw, dict) or raw.get("v") != TOKEN_VERSION:
        raise ValueError("not a token of this API")
    kube_continue, after = raw.get("k"), raw.get("a")
    if not (kube_continue is None or isinstance(kube_continue, str)) or not (after is None or isinstance(after, str)):
        raise ValueError("malformed token")
    if kube_continue is None and after is None:
        raise ValueError("malformed token")
    return Cursor(kube_continue, after)


def chunk_size(limit: int) -> int:
    """How many objects to ask the API server for at a time: at least 100, so filters need few round trips."""
    return min(max(limit, 100), 500)


def paginate(
    fetch: Fetch,
    keep: Callable[[Manifest], bool],
    limit: int,
    cursor: Cursor | None,
    scan_limit: int,
) -> tuple[list[Manifest], Cursor | None]:
    """Up to ``limit`` kept items from where ``cursor`` points, and the cursor of the rest (None: no more).

    At most ``scan_limit`` items are examined, so a filter that matches little
    returns a short (even empty) page with a cursor instead of reading everything.
    """
    kube_continue = cursor.kube_continue if cursor else None
    after = cursor.after if cursor else None
    size = chunk_size(limit)
    kept: list[Manifest] = []
    scanned = 0
    while True:
        items, next_continue = fetch(kube_continue, size)
        for index, item in enumerate(items):
            name = str(item["metadata"]["name"])
            if after is not None and name <= after:
                continue
            scanned += 1
            if keep(item):
                kept.append(item)
            if len(kept) >= limit or scanned >= scan_limit:
                if index + 1 < len(items):
                    return kept, Cursor(kube_continue, name)
                return kept, Cursor(next_continue, None) if next_continue else None
        if not next_continue:
            return kept, None
        kube_continue, after = next_continue, None
