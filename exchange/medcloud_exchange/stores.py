"""The publishers' RecordStores, reached with the project's record client and the key service.

The exchange holds no key of its own for documents: for each member it reads the
store's S3 credentials Secret and asks the key service for the store's data keys
with the exchange's own token, both granted by RBAC exactly as far as the
Consortium's ``spec.sharing`` reaches.
"""

from __future__ import annotations

import threading
import uuid

from medcloud.models.common import hospital_namespace
from medcloud.records.client import RecordClient
from medcloud.records.keyclient import HttpKeyProvider
from medcloud_exchange.cluster import Cluster
from medcloud_exchange.s3 import minio_client
from medcloud_exchange.settings import ExchangeSettings


class StoreUnavailableError(RuntimeError):
    """The member's store cannot be reached by the exchange (no credentials Secret, or no grant)."""


def content_name(document: uuid.UUID) -> str:
    return f"exchange/{document}/content"


def metadata_name(document: uuid.UUID) -> str:
    return f"exchange/{document}/DocumentReference.json"


def patient_name(patient: uuid.UUID, publish: uuid.UUID) -> str:
    """The demographics a publisher sent with one publish (a new record each time: see Exchange._publish)."""
    return f"exchange/patients/{patient}/{publish}.json"


def submission_set_name(submission_set: uuid.UUID) -> str:
    return f"exchange/submissionsets/{submission_set}/List.json"


class PublisherStores:
    """One record client per member hospital, made on first use and kept."""

    def __init__(self, cluster: Cluster, settings: ExchangeSettings) -> None:
        self._cluster = cluster
        self._settings = settings
        self._clients: dict[str, RecordClient] = {}
        self._lock = threading.Lock()

    def client(self, hospital: str) -> RecordClient:
        with self._lock:
            found = self._clients.get(hospital)
        if found is not None:
            return found
        store = self._settings.store
        credentials = self._cluster.store_credentials(hospital, store)
        if credentials is None:
            raise StoreUnavailableError(
                f"the exchange cannot reach RecordStore {hospital_namespace(hospital)}/{store} (no credentials Secret "
                "it may read): is the store Ready and the member in spec.sharing?"
            )
        keys = HttpKeyProvider(
            self._settings.key_service_url,
            hospital_namespace(hospital),
            store,
            token_file=self._settings.key_service_token_file,
            timeout=self._settings.kube_timeout_seconds,
            key_ttl=self._settings.data_key_ttl_seconds,
        )
        minio = minio_client(
            credentials.endpoint.address, credentials.access_key, credentials.secret_key, credentials.endpoint.secure
        )
        made = RecordClient(minio, credentials.bucket, keys)
        with self._lock:
            return self._clients.setdefault(hospital, made)
