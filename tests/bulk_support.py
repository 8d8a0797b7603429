"""Helpers of the FHIR Bulk export tests: the commission's caller, a kick-off, the NDJSON it downloads."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import httpx
import pyarrow.parquet as pq
from minio import Minio

from medcloud_analytics.lake import Lake
from medcloud_cli.localcluster.cluster import MinioInfo
from tests.exchange_support import Caller
from tests.fhir_r4 import assert_valid_r4

COMMISSION_NAMESPACE = "city-health-commission"
COMMISSION_ROLE = "medcloud-city-health-commission"
ASYNC = {"Prefer": "respond-async"}
Json = dict[str, Any]


def commission_caller(token: str) -> Caller:
    return Caller(token, practitioner="analyst-wang", purpose=None)


def bind_commission(local_cluster: Any, admin: Any, exchange: httpx.Client, binding: str) -> Caller:
    """The city health commission's service account, bound to medcloud-city-health-commission, once admitted."""
    from kubernetes import client

    from tests.exchange_harness import token
    from tests.operator_support import REPO
    from tests.support import wait_for

    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "city-health-commission-rbac.yaml"))
    with contextlib.suppress(client.ApiException):
        admin.core.create_namespace({"metadata": {"name": COMMISSION_NAMESPACE}})
    caller = commission_caller(token(admin, COMMISSION_NAMESPACE, "indicators", "medcloud-exchange"))
    with contextlib.suppress(client.ApiException):
        admin.rbac.create_cluster_role_binding(
            {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COMMISSION_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": "indicators", "namespace": COMMISSION_NAMESPACE}],
            }
        )
    wait_for(lambda: kick_off(exchange, caller).status_code == 202, "the commission admitted", timeout=30)
    return caller


def kick_off(http: httpx.Client, caller: Caller, path: str = "/fhir/$export", **params: str) -> httpx.Response:
    return http.get(path, params=params, headers={**caller.headers(), **ASYNC})


def export(
    http: httpx.Client, caller: Caller, path: str = "/fhir/$export", **params: str
) -> tuple[Json, dict[str, bytes]]:
    """Kick off, poll the status once (the exchange's jobs are complete when made), download every file."""
    started = kick_off(http, caller, path, **params)
    assert started.status_code == 202, started.text
    status = http.get(started.headers["Content-Location"], headers=caller.headers())
    assert status.status_code == 200, status.text
    manifest: Json = status.json()
    files = {}
    for output in manifest["output"]:
        got = http.get(output["url"], headers=caller.headers())
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("application/fhir+ndjson")
        files[output["type"]] = got.content
    return manifest, files


def lines(data: bytes, resource_type: str) -> list[Json]:
    """Every NDJSON line parsed and checked as FHIR R4 of ``resource_type``."""
    out = []
    for line in data.decode().splitlines():
        resource = json.loads(line)
        assert resource["resourceType"] == resource_type
        assert_valid_r4(resource)
        out.append(resource)
    return out


def analytics_lake(minio: MinioInfo) -> Lake:
    """A fresh analytics bucket on the real MinIO."""
    bucket = f"analytics-{uuid.uuid4().hex[:8]}"
    Minio(minio.endpoint, minio.access_key, minio.secret_key, secure=False).make_bucket(bucket)
    return Lake(minio.endpoint, bucket, minio.access_key, minio.secret_key)


def parquet_objects(root: Minio, lake: Lake) -> list[Any]:
    """The Parquet objects (pyarrow's S3 writer also leaves empty directory markers ending in /)."""
    return [o for o in root.list_objects(lake.bucket, recursive=True) if o.object_name.endswith(".parquet")]


def assert_no_secret_in_lake(lake: Lake, minio: MinioInfo, secrets: list[str]) -> None:
    """No secret in any object's bytes, nor in any value read back (compression would hide it from bytes)."""
    root = Minio(minio.endpoint, minio.access_key, minio.secret_key, secure=False)
    objects = parquet_objects(root, lake)
    assert objects, "the lake is empty"
    for obj in objects:
        raw = root.get_object(lake.bucket, obj.object_name).read()
        values = json.dumps(
            pq.read_table(lake.filesystem().open_input_file(f"{lake.bucket}/{obj.object_name}")).to_pylist(),
            default=str,
        )
        for secret in secrets:
            assert secret.encode() not in raw, (obj.object_name, secret)
            assert secret not in values, (obj.object_name, secret)
