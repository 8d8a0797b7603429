"""The object store side of RecordStores: buckets, users and policies on MinIO, through the minio SDK.

Every operation reads first and writes only what differs, so a reconcile
with nothing to do sends MinIO nothing but reads. Failures come out as one
of three errors the handler turns into conditions:

- :class:`StorageUnavailableError`: no answer, a network error or a 5xx:
  it will heal by itself (MinIO restarting), retried with backoff.
- :class:`StorageRejectedError`: a 4xx: the operator's MinIO credentials
  lack a permission or a value is invalid; retried slowly, needs a person.
- :class:`BucketConflictError`: the bucket exists but is not this store's.

The operator's own MinIO credentials (root or an admin user) come from its
settings (``MEDCLOUD_MINIO_*``, :class:`medcloud_operator.settings.StorageSettings`),
which a deployment fills from a Secret.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import certifi
import urllib3
from minio import Minio, MinioAdmin
from minio.commonconfig import COMPLIANCE, ENABLED, Tags
from minio.credentials.providers import StaticProvider
from minio.error import InvalidResponseError, MinioAdminException, S3Error, ServerError
from minio.objectlockconfig import DAYS, ObjectLockConfig
from minio.versioningconfig import VersioningConfig
from urllib3.util import Retry, Timeout

from medcloud.models import RecordStoreUsage
from medcloud.records.envelope import META_KEY_VERSION
from medcloud.tenancy.credentials import Endpoint
from medcloud.tenancy.store import StoreNames
from medcloud_operator.builders.recordstore import LockRule, StoredVersion, normalized_policy, usage
from medcloud_operator.settings import StorageSettings

TAG_CONSORTIUM = "medcloud.io/consortium"
"""Tag of an exchange's audit bucket: the Consortium it is the audit trail of."""


class StorageError(RuntimeError):
    """Base of the errors below; messages name buckets and users, never keys."""


class StorageUnavailableError(StorageError):
    """MinIO did not answer, or failed with a 5xx: it is expected to heal."""


class StorageRejectedError(StorageError):
    """MinIO refused a request (4xx)."""


class BucketConflictError(StorageError):
    """The bucket exists but is tagged for another store, or was created without object lock."""


def _admin_status(exc: MinioAdminException) -> int:
    try:
        return int(getattr(exc, "_code", 0))
    except ValueError:
        return 0


def _admin_message(exc: MinioAdminException) -> str:
    body = str(getattr(exc, "_body", "") or "")
    try:
        parsed = json.loads(body)
        return f"{parsed.get('Code')}: {parsed.get('Message')}"
    except ValueError:
        return body[:300]


def _unavailable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn whatever the SDK or urllib3 raises into one of this module's errors."""
    try:
        yield
    except StorageError:
        raise
    except S3Error as exc:
        status = int(getattr(exc.response, "status", 0) or 0)
        cls = StorageUnavailableError if _unavailable(status) else StorageRejectedError
        raise cls(f"{what}: {exc.code}: {exc.message} (HTTP {status})") from None
    except ServerError as exc:
        raise StorageUnavailableError(f"{what}: HTTP {exc.status_code}: {exc}") from None
    except InvalidResponseError as exc:
        status = int(getattr(exc, "_code", 0) or 0)
        cls = StorageUnavailableError if _unavailable(status) else StorageRejectedError
        raise cls(f"{what}: unexpected response (HTTP {status})") from None
    except MinioAdminException as exc:
        status = _admin_status(exc)
        cls = StorageUnavailableError if _unavailable(status) else StorageRejectedError
        raise cls(f"{what}: {_admin_message(exc)} (HTTP {status})") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise StorageUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from None


def _is_admin_not_found(exc: MinioAdminException) -> bool:
    return _admin_status(exc) == 404


class Storage:
    """MinIO as the operator sees it: admin for users and policies, root S3 for buckets and listings."""

    def __init__(self, settings: StorageSettings) -> None:
        if not settings.configured:
            raise ValueError("MinIO is not configured (MEDCLOUD_MINIO_ENDPOINT, _ACCESS_KEY, _SECRET_KEY)")
        assert settings.minio_endpoint is not None
        assert settings.minio_access_key is not None
        assert settings.minio_secret_key is not None
        self.settings = settings
        self.endpoint = Endpoint.parse(settings.minio_endpoint)
        self.public_endpoint = Endpoint.parse(settings.minio_public_endpoint or settings.minio_endpoint)
        self.region = settings.minio_region
        # One pool for every client. Short connect timeout and few retries:
        # an unavailable MinIO should surface in seconds as a condition and be
        # retried by Kopf with backoff, not hold a handler for minutes (the
        # SDK's default is a 5-minute timeout with 5 retries).
        self._http = urllib3.PoolManager(
            timeout=Timeout(connect=5.0, read=settings.minio_timeout_seconds),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=settings.minio_ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self._access_key = settings.minio_access_key
        self._secret_key = settings.minio_secret_key.get_secret_value()
        self.s3 = Minio(
            self.endpoint.address,
            access_key=self._access_key,
            secret_key=self._secret_key,
            secure=self.endpoint.secure,
            region=self.region,
            http_client=self._http,
        )
        self.admin = MinioAdmin(
            endpoint=self.endpoint.address,
            credentials=StaticProvider(self._access_key, self._secret_key),
            region=self.region,
            secure=self.endpoint.secure,
            http_client=self._http,
        )

    def __repr__(self) -> str:
        return f"Storage(endpoint={self.endpoint.url!r}, access_key={self._access_key!r}, secret_key=<redacted>)"

    def close(self) -> None:
        self._http.clear()

    # ----------------------------------------------------------------- buckets

    def ensure_bucket(self, names: StoreNames, lock: LockRule, quota: int) -> list[str]:
        """The bucket with object lock, versioning, default retention, quota and owner tags; what changed."""
        bucket = names.bucket
        changes: list[str] = []
        with _translated(f"bucket {bucket}"):
            if not self.s3.bucket_exists(bucket):
                # Object lock can only be switched on when a bucket is made;
                # it also switches versioning on, for good.
                self.s3.make_bucket(bucket, location=self.region, object_lock=True)
                changes.append(f"bucket {bucket} created with object lock")
                tags: Tags | None = None
            else:
                tags = self.s3.get_bucket_tags(bucket)
                self._check_owner(names, tags)
            wanted_tags = names.owner_tags()
            have: dict[str, str] = dict(tags or {})
            if tags is None or any(have.get(k) != v for k, v in wanted_tags.items()):
                new_tags = Tags.new_bucket_tags()
                new_tags.update(wanted_tags)
                self.s3.set_bucket_tags(bucket, new_tags)
                if not changes:
                    changes.append(f"bucket {bucket} tagged as {names.namespace}/{names.store}'s")
            if self.s3.get_bucket_versioning(bucket).status != ENABLED:
                self.s3.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
                changes.append(f"versioning enabled on {bucket}")
            current = self._lock_config(bucket)
            if (current.mode, current.duration, current.duration_unit) != (lock.mode, lock.duration, lock.unit):
                self.s3.set_object_lock_config(bucket, ObjectLockConfig(lock.mode, lock.duration, lock.unit))
                changes.append(f"default retention of {bucket} set to {lock.mode} {lock.duration} {lock.unit}")
            quota_now = json.loads(self.admin.bucket_quota_get(bucket) or "{}")
            if quota_now.get("quota") != quota or quota_now.get("quotatype") != "hard":
                self.admin.bucket_quota_set(bucket, quota)
                changes.append(f"quota of {bucket} set to {quota} bytes")
        return changes

    def ensure_audit_bucket(self, bucket: str, consortium: str, retention_days: int) -> list[str]:
        """A consortium exchange's audit bucket: object lock, COMPLIANCE retention, versioning; what changed.

        COMPLIANCE: nobody, MinIO's root included, can shorten the retention or delete a
        locked version before it ends. A bucket tagged for another consortium is refused.
        """
        changes: list[str] = []
        wanted_tags = {TAG_CONSORTIUM: consortium}
        with _translated(f"bucket {bucket}"):
            if not self.s3.bucket_exists(bucket):
                self.s3.make_bucket(bucket, location=self.region, object_lock=True)
                changes.append(f"bucket {bucket} created with object lock")
                have: dict[str, str] = {}
            else:
                have = dict(self.s3.get_bucket_tags(bucket) or {})
                if have.get(TAG_CONSORTIUM) not in (None, consortium):
                    raise BucketConflictError(f"bucket {bucket} belongs to consortium {have.get(TAG_CONSORTIUM)}")
            if any(have.get(k) != v for k, v in wanted_tags.items()):
                tags = Tags.new_bucket_tags()
                tags.update({**have, **wanted_tags})
                self.s3.set_bucket_tags(bucket, tags)
            if self.s3.get_bucket_versioning(bucket).status != ENABLED:
                self.s3.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
                changes.append(f"versioning enabled on {bucket}")
            current = self._lock_config(bucket)
            if (current.mode, current.duration, current.duration_unit) != (COMPLIANCE, retention_days, DAYS):
                self.s3.set_object_lock_config(bucket, ObjectLockConfig(COMPLIANCE, retention_days, DAYS))
                changes.append(f"default retention of {bucket} set to COMPLIANCE {retention_days} days")
        return changes

    def _lock_config(self, bucket: str) -> ObjectLockConfig:
        try:
            return self.s3.get_object_lock_config(bucket)
        except S3Error as exc:
            if exc.code == "ObjectLockConfigurationNotFoundError":
                raise BucketConflictError(
                    f"bucket {bucket} exists without object lock; object lock cannot be added to an existing "
                    "bucket, so it is not used. Remove or rename it, or give the RecordStore another name."
                ) from None
            raise

    @staticmethod
    def _check_owner(names: StoreNames, tags: Tags | None) -> None:
        """A bucket tagged for another store is never adopted (see the naming note in the builders)."""
        have: dict[str, str] = dict(tags or {})
        owner = {k: have.get(k) for k in names.owner_tags()}
        if any(owner.values()) and owner != names.owner_tags():
            raise BucketConflictError(
                f"bucket {names.bucket} belongs to {owner.get('medcloud.io/namespace')}/"
                f"{owner.get('medcloud.io/recordstore')}; it is never handed to another store"
            )

    # ----------------------------------------------------------------- access

    def ensure_access(self, names: StoreNames, policy: dict[str, Any], secret_key: str) -> list[str]:
        """The store's policy, and its user with exactly that policy and ``secret_key``; what changed."""
        changes: list[str] = []
        with _translated(f"policy {names.policy}"):
            try:
                current: dict[str, Any] | None = json.loads(self.admin.policy_info(names.policy))
            except MinioAdminException as exc:
                if not _is_admin_not_found(exc):
                    raise
                current = None
            if current is None or normalized_policy(current) != normalized_policy(policy):
                self.admin.policy_add(names.policy, policy=policy)
                changes.append(f"policy {names.policy} {'written' if current is None else 'repaired'}")
        with _translated(f"user {names.user}"):
            try:
                info: dict[str, Any] | None = json.loads(self.admin.user_info(names.user))
            except MinioAdminException as exc:
                if not _is_admin_not_found(exc):
                    raise
                info = None
            if info is None:
                self.admin.user_add(names.user, secret_key)
                changes.append(f"user {names.user} created")
                info = {"status": "enabled", "policyName": ""}
            elif info.get("status") != "enabled":
                self.admin.user_enable(names.user)
                changes.append(f"user {names.user} enabled")
            attached = {p for p in str(info.get("policyName") or "").split(",") if p}
            extra = sorted(attached - {names.policy})
            if extra:
                # Least privilege: whatever else was attached by hand goes.
                self.admin.detach_policy(extra, user=names.user)
                changes.append(f"policies {', '.join(extra)} detached from user {names.user}")
            if names.policy not in attached:
                self.admin.attach_policy([names.policy], user=names.user)
                changes.append(f"policy {names.policy} attached to user {names.user}")
            if not self._credentials_work(names, secret_key):
                # The user exists with another secret (MinIO restored from an
                # older backup, or changed by hand): the Secret is the truth.
                self.admin.user_add(names.user, secret_key)
                changes.append(f"secret key of user {names.user} reset to the one in Secret {names.secret}")
        return changes

    def _credentials_work(self, names: StoreNames, secret_key: str) -> bool:
        client = Minio(
            self.endpoint.address,
            access_key=names.user,
            secret_key=secret_key,
            secure=self.endpoint.secure,
            region=self.region,
            http_client=self._http,
        )
        try:
            return bool(client.bucket_exists(names.bucket))
        except S3Error as exc:
            if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                return False
            raise

    def revoke_access(self, names: StoreNames) -> list[str]:
        """Remove the store's user and policy (idempotent); the bucket and its data stay."""
        changes: list[str] = []
        with _translated(f"user {names.user}"):
            try:
                self.admin.user_remove(names.user)
                changes.append(f"user {names.user} removed")
            except MinioAdminException as exc:
                if not _is_admin_not_found(exc):
                    raise
        with _translated(f"policy {names.policy}"):
            try:
                self.admin.policy_remove(names.policy)
                changes.append(f"policy {names.policy} removed")
            except MinioAdminException as exc:
                if not _is_admin_not_found(exc):
                    raise
        return changes

    # ----------------------------------------------------------------- usage

    def usage(self, bucket: str, current_key_version: int | None) -> RecordStoreUsage:
        """Size and object versions of ``bucket``, and how many are on an older data key.

        One listing of every version. The data-key version comes from the
        user metadata MinIO returns in listings (``metadata=true``, a MinIO
        extension); objects without it count as data but never as "older".
        """
        with _translated(f"listing {bucket}"):
            listing = self.s3.list_objects(
                bucket, recursive=True, include_version=True, extra_query_params={"metadata": "true"}
            )
            return usage((_stored_version(obj) for obj in listing), current_key_version)


def _stored_version(obj: Any) -> StoredVersion:
    meta = {str(k).lower(): str(v) for k, v in (obj.metadata or {}).items()}
    raw = meta.get(f"x-amz-meta-{META_KEY_VERSION}") or meta.get(META_KEY_VERSION)
    try:
        key_version = int(raw) if raw is not None else None
    except ValueError:
        key_version = None
    return StoredVersion(size=int(obj.size or 0), key_version=key_version, delete_marker=bool(obj.is_delete_marker))
