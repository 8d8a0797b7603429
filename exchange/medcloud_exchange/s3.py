"""The exchange's S3 clients: one short retry budget, so a store that is down answers 503 in seconds."""

from __future__ import annotations

import certifi
import urllib3
from minio import Minio


def minio_client(address: str, access_key: str, secret_key: str, secure: bool) -> Minio:
    """A MinIO client that gives up after one retry (the SDK's default waits through five, with backoff)."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3, read=30),
        retries=urllib3.Retry(total=1, backoff_factor=0.1),
        maxsize=8,
        cert_reqs="CERT_REQUIRED",
        ca_certs=certifi.where(),
    )
    return Minio(address, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
