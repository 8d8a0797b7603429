"""The operator's Kubernetes client: :class:`medcloud.kube.client.Kube` writing as ``medcloud-operator``.

Every write carries the field manager ``medcloud-operator`` and is counted in
``medcloud_api_writes_total``.
"""

from __future__ import annotations

from kubernetes import client

from medcloud.kube import client as kube_client
from medcloud.kube.client import Kind
from medcloud_operator import OPERATOR_NAME, metrics


def _count_write(kind: Kind, verb: str) -> None:
    metrics.API_WRITES.labels(kind=kind.kind, verb=verb).inc()


class Kube(kube_client.Kube):
    """The shared JSON client with the operator's field manager and write metrics."""

    def __init__(self, api_client: client.ApiClient) -> None:
        super().__init__(api_client, field_manager=OPERATOR_NAME, on_write=_count_write)


def new_api_client(*, connections: int | None = None) -> client.ApiClient:
    """An API client that names itself ``medcloud-operator`` in the API server's logs."""
    return kube_client.new_api_client(OPERATOR_NAME, connections=connections)
