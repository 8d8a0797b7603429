"""The analytics bucket on a MinIO, with its two users of least privilege (docs/analytics.md).

``medcloud dev up`` makes it on the local MinIO; on a real one, the same three steps with ``mc``
(docs/analytics.md shows them). The policies are the analytics' own (``medcloud_analytics.access``):
the writer may put, get and list the bucket's objects and nothing else; the dashboard reader may get
the published document and nothing else.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from minio import Minio, MinioAdmin
from minio.credentials.providers import StaticProvider

from medcloud_analytics.access import dashboard_reader_policy, writer_policy
from medcloud_cli.localcluster.cluster import MinioInfo

ANALYTICS_BUCKET = "analytics"


@dataclass(frozen=True)
class AnalyticsBucket:
    endpoint: str
    bucket: str
    writer_key: str
    writer_secret: str = field(repr=False)
    reader_key: str = ""
    reader_secret: str = field(default="", repr=False)
    secure: bool = False

    def writer_env(self) -> dict[str, str]:
        """What ``medcloud analytics`` reads (load, indicators, publish)."""
        return {
            "MEDCLOUD_ANALYTICS_ENDPOINT": self.endpoint,
            "MEDCLOUD_ANALYTICS_BUCKET": self.bucket,
            "MEDCLOUD_ANALYTICS_ACCESS_KEY": self.writer_key,
            "MEDCLOUD_ANALYTICS_SECRET_KEY": self.writer_secret,
            "MEDCLOUD_ANALYTICS_SECURE": str(self.secure).lower(),
        }

    def dashboard_env(self) -> dict[str, str]:
        """What the control API reads to serve /v1/dashboard."""
        return {
            "MEDCLOUD_API_ANALYTICS_ENDPOINT": self.endpoint,
            "MEDCLOUD_API_ANALYTICS_BUCKET": self.bucket,
            "MEDCLOUD_API_ANALYTICS_ACCESS_KEY": self.reader_key,
            "MEDCLOUD_API_ANALYTICS_SECRET_KEY": self.reader_secret,
            "MEDCLOUD_API_ANALYTICS_SECURE": str(self.secure).lower(),
        }


def make_analytics_bucket(minio: MinioInfo, name: str = ANALYTICS_BUCKET) -> AnalyticsBucket:
    """The bucket, the writer ``<name>-writer`` and the reader ``<name>-dashboard``, each with its policy alone.

    Adding an existing user sets its secret: a later call gets fresh credentials."""
    root = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=minio.secure)
    if not root.bucket_exists(name):
        root.make_bucket(name)
    admin = MinioAdmin(
        endpoint=minio.endpoint, credentials=StaticProvider(minio.access_key, minio.secret_key), secure=minio.secure
    )
    made: dict[str, tuple[str, str]] = {}
    for role, policy in (("writer", writer_policy(name)), ("dashboard", dashboard_reader_policy(name))):
        user, secret = f"{name}-{role}", secrets.token_urlsafe(24)
        admin.policy_add(f"{name}-{role}", policy=policy)
        admin.user_add(user, secret)
        admin.attach_policy([f"{name}-{role}"], user=user)
        made[role] = (user, secret)
    return AnalyticsBucket(minio.endpoint, name, *made["writer"], *made["dashboard"], secure=minio.secure)
