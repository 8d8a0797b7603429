"""A RecordStore's credentials Secret in the hospital namespace: where the store is and how to sign in.

The Secret carries the COSI (v1alpha2) keys, the ObjectBucketClaim keys and
MedCloud's own, so that off-the-shelf consumers (backup tools, database
operators) take it as it is; the device gateway and the record CLI read it
through :func:`decoded`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import urlsplit

from medcloud.kube.client import Manifest
from medcloud.tenancy import labels
from medcloud.tenancy.store import COMPONENT, STORE_ANNOTATION, StoreNames, store_labels


@dataclass(frozen=True)
class Endpoint:
    """Where tenants reach the object store: ``http(s)://host:port``."""

    url: str
    host: str
    port: int
    secure: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint URL: {url!r}")
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        return cls(url=f"{parts.scheme}://{parts.netloc}", host=parts.hostname, port=port, secure=secure)

    @property
    def address(self) -> str:
        """``host:port``, what the minio SDK and most S3 clients take with a separate TLS flag."""
        return f"{self.host}:{self.port}"


SECRET_KEY_FIELD = "COSI_S3_ACCESS_SECRET_KEY"  # noqa: S105 - a key name, not a secret
ACCESS_KEY_FIELD = "COSI_S3_ACCESS_KEY_ID"
KEY_SERVICE_URL_FIELD = "MEDCLOUD_KEY_SERVICE_URL"
"""Where the store's data keys are served; the workloads mounting the Secret see it as this variable."""
KEY_SERVICE_AUDIENCE = "medcloud-keyservice"
"""The audience of the service-account tokens the key service accepts (and of the tokens projected for it)."""


def build_credentials_secret(
    names: StoreNames,
    endpoint: Endpoint,
    region: str,
    secret_key: str,
    *,
    ca_pem: str | None = None,
    key_service_url: str | None = None,
) -> Manifest:
    """The credentials Secret in the hospital namespace: COSI (v1alpha2) keys, ObjectBucketClaim keys, MedCloud's own.

    Both conventions so that off-the-shelf consumers (backup tools, database
    operators) take the Secret as it is. COSI publishes a URL, the OBC keys a
    host and port; the MedCloud keys name the store for the record client.
    """
    data = {
        "COSI_PROTOCOL": "S3",
        "COSI_S3_BUCKET_ID": names.bucket,
        "COSI_S3_ENDPOINT": endpoint.url,
        "COSI_S3_REGION": region,
        "COSI_S3_ADDRESSING_STYLE": "path",
        ACCESS_KEY_FIELD: names.user,
        SECRET_KEY_FIELD: secret_key,
        "BUCKET_NAME": names.bucket,
        "BUCKET_HOST": endpoint.host,
        "BUCKET_PORT": str(endpoint.port),
        "BUCKET_REGION": region,
        "AWS_ACCESS_KEY_ID": names.user,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "MEDCLOUD_HOSPITAL": names.hospital,
        "MEDCLOUD_RECORDSTORE": names.store,
        "MEDCLOUD_S3_SECURE": "true" if endpoint.secure else "false",
    }
    if ca_pem:
        data["COSI_CERTIFICATE_AUTHORITY"] = ca_pem
    if key_service_url:
        data[KEY_SERVICE_URL_FIELD] = key_service_url
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.secret,
            "namespace": names.namespace,
            "labels": store_labels(names.hospital),
            "annotations": {STORE_ANNOTATION: names.store},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def secret_is_ours(secret: Manifest, names: StoreNames) -> bool:
    meta = secret.get("metadata") or {}
    return (meta.get("labels") or {}).get(labels.COMPONENT) == COMPONENT and (meta.get("annotations") or {}).get(
        STORE_ANNOTATION
    ) == names.store


def decoded(secret: Manifest, key: str) -> str | None:
    """One value of a Secret in clear, or None when absent or not base64 text."""
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def secret_differs(desired: Manifest, live: Manifest) -> bool:
    """True when the live Secret's data, type or MedCloud labels are not what the operator wants."""
    if (live.get("data") or {}) != desired["data"] or live.get("type") != desired["type"]:
        return True
    live_meta = live.get("metadata") or {}
    for part in ("labels", "annotations"):
        wanted, have = desired["metadata"].get(part) or {}, live_meta.get(part) or {}
        if any(have.get(k) != v for k, v in wanted.items()):
            return True
    return False
