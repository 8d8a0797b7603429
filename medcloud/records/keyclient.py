"""The record client's :class:`~medcloud.records.client.KeyProvider` over the key service.

Keys are fetched on first use and kept in this process's memory (never
written anywhere): for its life by default, or for ``key_ttl`` seconds, after
which a key is asked for again, so that a revoked grant stops a long-running
reader within that bound (the exchange sets it). The current version is asked
for again after ``current_ttl`` seconds, so a rotation reaches long-running
writers without a restart. The bearer token is read from a file on every request when one is
given: a projected service account token is rotated by the kubelet.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from medcloud.records.keys import DATA_KEY_SIZE, KeyShreddedError, KeyUnavailableError, UnknownKeyVersionError


class KeyAccessDeniedError(KeyUnavailableError):
    """The key service refused: no valid token (401) or no RBAC grant for this store (403)."""


class HttpKeyProvider:
    """Data keys of one RecordStore, from the key service, for a caller with a bearer token."""

    def __init__(
        self,
        base_url: str,
        namespace: str,
        store: str,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        verify: bool | str = True,
        timeout: float = 10.0,
        current_ttl: float = 30.0,
        key_ttl: float | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("give exactly one of token and token_file")
        self._namespace = namespace
        self._store = store
        self._token = token
        self._token_file = Path(token_file) if token_file is not None else None
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"), verify=verify, timeout=timeout)
        self._current_ttl = current_ttl
        self._key_ttl = key_ttl
        self._clock = clock
        # version -> (key, when it was fetched)
        self._keys: dict[int, tuple[bytes, float]] = {}
        self._hospital: str | None = None
        self._current: tuple[int, float] | None = None
        self._lock = threading.Lock()

    # -- KeyProvider --------------------------------------------------------------

    @property
    def hospital(self) -> str:
        if self._hospital is None:
            self.current_version()
        assert self._hospital is not None
        return self._hospital

    @property
    def store(self) -> str:
        return self._store

    def current_version(self) -> int:
        with self._lock:
            if self._current is not None and self._clock() - self._current[1] < self._current_ttl:
                return self._current[0]
        version = self._fetch("current")
        return version

    def data_key(self, version: int) -> bytes:
        with self._lock:
            cached = self._keys.get(version)
        if cached is not None and (self._key_ttl is None or self._clock() - cached[1] < self._key_ttl):
            return cached[0]
        self._fetch(str(version))
        with self._lock:
            return self._keys[version][0]

    # -- internals ------------------------------------------------------------------

    def _bearer(self) -> str:
        if self._token_file is not None:
            return self._token_file.read_text().strip()
        assert self._token is not None
        return self._token

    def _fetch(self, which: str) -> int:
        path = f"/v1/namespaces/{self._namespace}/recordstores/{self._store}/keys/{which}"
        try:
            response = self._http.get(path, headers={"Authorization": f"Bearer {self._bearer()}"})
        except httpx.HTTPError as exc:
            raise KeyUnavailableError(f"key service unreachable for {self._namespace}/{self._store}: {exc}") from None
        detail = _detail(response)
        if response.status_code in (401, 403):
            raise KeyAccessDeniedError(f"key service refused ({response.status_code}): {detail}")
        if response.status_code == 404:
            raise UnknownKeyVersionError(f"key service: {detail}")
        if response.status_code == 410:
            raise KeyShreddedError(f"key service: {detail}")
        if response.status_code != 200:
            raise KeyUnavailableError(f"key service answered {response.status_code}: {detail}")
        body = response.json()
        key = base64.b64decode(body["key"], validate=True)
        if len(key) != DATA_KEY_SIZE:
            raise KeyUnavailableError("key service returned a key of the wrong size")
        version = int(body["version"])
        with self._lock:
            now = self._clock()
            self._keys[version] = (key, now)
            self._hospital = str(body["hospital"])
            self._current = (int(body["currentVersion"]), now)
        return version

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpKeyProvider:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Explicit so that neither the token nor a key ever reaches a log line.
        return (
            f"HttpKeyProvider({self._namespace}/{self._store}, cached versions={sorted(self._keys)}, token=<redacted>)"
        )


def _detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail", body))
    return str(body)
