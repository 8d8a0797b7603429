"""Where a RecordStore's pieces live and what they are called: the names every MedCloud program derives.

One RecordStore is one bucket, one MinIO user and one policy, all derived from
``(hospital, store)`` only, so a RecordStore deleted with ``Retain`` and
created again under the same name finds its bucket and keys again. Every
derived name ends in a hash of the pair: ``hospital "a-b", store "c"`` and
``hospital "a", store "b-c"`` read alike once joined by a dash, and without
the hash two tenants could be handed the same bucket.

The operator creates these objects; the key service, the device gateway and
the record CLI find them by the same names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from medcloud.models.common import HOSPITAL_NAMESPACE_PREFIX
from medcloud.tenancy import labels
from medcloud.tenancy.labels import OPERATOR_NAME

COMPONENT = "recordstore"
"""``app.kubernetes.io/component`` of the objects a RecordStore owns."""
STORE_LABEL = "medcloud.io/recordstore"
STORE_ANNOTATION = "medcloud.io/recordstore"
"""Store names are DNS subdomains (up to 253 characters); labels hold 63, so the full name is an annotation."""

BUCKET_MAX = 63
HASH_HEX = 16
# S3 reserves these prefixes (AWS rejects them; MinIO follows S3's rules).
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_SECRET_NAME_MAX = 253
CREDENTIALS_SUFFIX = "-credentials"

# Tags on the bucket naming its owner: a bucket tagged for another store is never adopted.
TAG_HOSPITAL = "medcloud.io/hospital"
TAG_NAMESPACE = "medcloud.io/namespace"
TAG_STORE = "medcloud.io/recordstore"


class InvalidStoreError(ValueError):
    """The RecordStore cannot be realised where or as it is written (not a hospital namespace, ...)."""


def hospital_of_namespace(namespace: str) -> str | None:
    """The Hospital whose tenant namespace this is (``hospital-<name>``); None for any other namespace.

    Each caller says in its own words why it needs a hospital's namespace.
    """
    hospital = namespace.removeprefix(HOSPITAL_NAMESPACE_PREFIX)
    return hospital if hospital and hospital != namespace else None


def _digest(hospital: str, store: str) -> str:
    # "/" appears in neither a hospital name (DNS label) nor a store name (DNS
    # subdomain), so distinct pairs always hash distinct strings.
    return hashlib.sha256(f"{hospital}/{store}".encode()).hexdigest()


def bucket_name(hospital: str, store: str) -> str:
    """``<hospital>-<store>-<16 hex>``, shortened to S3's 63 characters; dots become dashes.

    Dots are legal in bucket names but break virtual-host TLS certificates.
    The hash keeps names distinct however the readable part is shortened.
    """
    suffix = _digest(hospital, store)[:HASH_HEX]
    readable = re.sub(r"[^a-z0-9-]", "-", f"{hospital}-{store}".lower())
    if readable.startswith(_RESERVED_BUCKET_PREFIXES):
        readable = f"mc-{readable}"
    readable = re.sub(r"-{2,}", "-", readable)[: BUCKET_MAX - HASH_HEX - 1].strip("-")
    return f"{readable}-{suffix}"


def user_name(bucket: str) -> str:
    """The store's MinIO user (access key): the bucket's name, so each user reads as the bucket it may use."""
    return bucket


def policy_name(bucket: str) -> str:
    return f"recordstore-{bucket}"


def credentials_secret_name(store: str) -> str:
    """``<store>-credentials``; a very long store name is shortened and given a hash."""
    name = f"{store}{CREDENTIALS_SUFFIX}"
    if len(name) <= _SECRET_NAME_MAX:
        return name
    short = hashlib.sha256(store.encode()).hexdigest()[:HASH_HEX]
    keep = _SECRET_NAME_MAX - len(CREDENTIALS_SUFFIX) - HASH_HEX - 1
    return f"{store[:keep].rstrip('.-')}-{short}{CREDENTIALS_SUFFIX}"


@dataclass(frozen=True)
class StoreNames:
    """Everything derived from where a RecordStore lives and what it is called."""

    namespace: str
    store: str
    hospital: str
    bucket: str
    user: str
    policy: str
    secret: str

    @classmethod
    def of(cls, namespace: str, store: str) -> StoreNames:
        hospital = hospital_of_namespace(namespace)
        if hospital is None:
            raise InvalidStoreError(
                f"RecordStores live in a hospital's namespace ({HOSPITAL_NAMESPACE_PREFIX}<hospital>), "
                f"not in {namespace}"
            )
        bucket = bucket_name(hospital, store)
        return cls(
            namespace=namespace,
            store=store,
            hospital=hospital,
            bucket=bucket,
            user=user_name(bucket),
            policy=policy_name(bucket),
            secret=credentials_secret_name(store),
        )

    @property
    def key(self) -> str:
        """Lock key: never equal to a Hospital's (those have no slash)."""
        return f"RecordStore/{self.namespace}/{self.store}"

    def owner_tags(self) -> dict[str, str]:
        return {TAG_HOSPITAL: self.hospital, TAG_NAMESPACE: self.namespace, TAG_STORE: self.store}


def store_labels(hospital: str) -> dict[str, str]:
    return {
        labels.MANAGED_BY: OPERATOR_NAME,
        labels.PART_OF: "medcloud",
        labels.COMPONENT: COMPONENT,
        labels.HOSPITAL: hospital,
    }
