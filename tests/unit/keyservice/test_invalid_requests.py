"""Requests whose path names no store: refused with 422, audited, and never echoed back.

Path validation runs before the handler, so no cluster is asked: the app is
given a client for an address nothing listens on, which these requests never
reach.
"""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from kubernetes import client

from medcloud_keyservice.app import create_app
from medcloud_keyservice.settings import KeyServiceSettings

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def http() -> TestClient:
    unreachable = client.Configuration(host="https://127.0.0.1:9")
    return TestClient(create_app(KeyServiceSettings(), client.ApiClient(unreachable)))


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/namespaces/{HOSTILE}/recordstores/emr/keys/current",
        f"/v1/namespaces/hospital-a/recordstores/{HOSTILE}/keys/1",
        f"/v1/namespaces/hospital-a/recordstores/emr/keys/{HOSTILE}",
        "/v1/namespaces/hospital-a/recordstores/emr/keys/0",
        "/v1/namespaces/" + "a" * 64 + "/recordstores/emr/keys/current",
    ],
    ids=["namespace", "store", "version", "version-zero", "namespace-too-long"],
)
def test_an_invalid_path_is_422_audited_and_not_echoed(
    http: TestClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    with caplog.at_level(logging.INFO, logger="medcloud_keyservice.audit"):
        response = http.get(path, headers={"Authorization": "Bearer not-a-token"})

    assert response.status_code == 422
    assert HOSTILE not in response.text
    assert "a" * 64 not in response.text
    assert response.headers["Cache-Control"] == "no-store"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "medcloud_keyservice.audit"]
    assert len(lines) == 1
    assert lines[0]["result"] == "invalid-request"
    assert lines[0]["reason"].startswith("invalid path.")
    assert lines[0]["keyVersion"] is None
