"""A thin JSON client for the few kinds MedCloud reads and writes.

It sits on the kubernetes client's ``ApiClient`` (so kubeconfig, in-cluster
credentials and TLS work as everywhere else) but speaks plain dictionaries in
the API server's camelCase, the same shape the operator's builders produce,
instead of the generated model classes. Every write carries the caller's field
manager and is reported to its ``on_write`` hook (the operator counts them in
``medcloud_api_writes_total``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

Manifest = dict[str, Any]
"""A Kubernetes object as the API server's JSON: a plain dictionary in camelCase."""

WriteHook = Callable[["Kind", str], None]
"""Called after each successful write with the kind and the verb (create, update, patch, delete)."""


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API and which of its top-level fields the operator owns."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool
    owned_fields: tuple[str, ...] = ()
    """Top-level fields (besides metadata) replaced wholesale when they differ."""
    immutable_fields: tuple[str, ...] = ()
    """Top-level fields the API server refuses to change: a difference means delete and re-create."""
    defaulted_fields: tuple[str, ...] = ()
    """Top-level fields the API server completes with defaults and allocations (a Deployment's or a
    Service's ``spec``): they match when every value the operator sets is there, whatever the server
    added, and are replaced whole (and completed again by the server) when one is not."""

    def base_path(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"

    def collection_path(self, namespace: str | None = None) -> str:
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} is namespaced: a namespace is required")
            return f"{self.base_path()}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{self.base_path()}/{self.plural}"

    def every_namespace_path(self) -> str:
        """The collection across every namespace (for a cluster-scoped kind, the collection itself)."""
        return f"{self.base_path()}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{quote(name, safe='')}"


NAMESPACE = Kind("v1", "Namespace", "namespaces", namespaced=False)
RESOURCE_QUOTA = Kind("v1", "ResourceQuota", "resourcequotas", namespaced=True, owned_fields=("spec",))
LIMIT_RANGE = Kind("v1", "LimitRange", "limitranges", namespaced=True, owned_fields=("spec",))
SECRET = Kind("v1", "Secret", "secrets", namespaced=True)
SERVICE_ACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts", namespaced=True)
NETWORK_POLICY = Kind(
    "networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", namespaced=True, owned_fields=("spec",)
)
ROLE = Kind("rbac.authorization.k8s.io/v1", "Role", "roles", namespaced=True, owned_fields=("rules",))
ROLE_BINDING = Kind(
    "rbac.authorization.k8s.io/v1",
    "RoleBinding",
    "rolebindings",
    namespaced=True,
    owned_fields=("subjects", "roleRef"),
    immutable_fields=("roleRef",),
)
CLUSTER_ROLE = Kind(
    "rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False, owned_fields=("rules",)
)
CLUSTER_ROLE_BINDING = Kind(
    "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding",
    "clusterrolebindings",
    namespaced=False,
    owned_fields=("subjects", "roleRef"),
    immutable_fields=("roleRef",),
)
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps", namespaced=True, owned_fields=("data", "binaryData"))
SERVICE_ACCOUNT = Kind(
    "v1", "ServiceAccount", "serviceaccounts", namespaced=True, owned_fields=("automountServiceAccountToken",)
)
SERVICE = Kind("v1", "Service", "services", namespaced=True, defaulted_fields=("spec",))
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments", namespaced=True, defaulted_fields=("spec",))
INGRESS = Kind("networking.k8s.io/v1", "Ingress", "ingresses", namespaced=True, defaulted_fields=("spec",))
ENDPOINT_SLICE = Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", namespaced=True)
HOSPITAL = Kind("medcloud.io/v1alpha1", "Hospital", "hospitals", namespaced=False)
RECORD_STORE = Kind("medcloud.io/v1alpha1", "RecordStore", "recordstores", namespaced=True)
DEVICE_GATEWAY = Kind("medcloud.io/v1alpha1", "DeviceGateway", "devicegateways", namespaced=True)
DEVICE = Kind("medcloud.io/v1alpha1", "Device", "devices", namespaced=True)
APP_INSTANCE = Kind("medcloud.io/v1alpha1", "AppInstance", "appinstances", namespaced=True)
CONSORTIUM = Kind("medcloud.io/v1alpha1", "Consortium", "consortia", namespaced=False)
CLUSTER_KOPF_PEERING = Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False)
KOPF_PEERING = Kind("kopf.dev/v1", "KopfPeering", "kopfpeerings", namespaced=True)

KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        NAMESPACE,
        RESOURCE_QUOTA,
        LIMIT_RANGE,
        SECRET,
        SERVICE_ACCOUNT,
        NETWORK_POLICY,
        ROLE,
        ROLE_BINDING,
        CLUSTER_ROLE,
        CLUSTER_ROLE_BINDING,
        CONFIG_MAP,
        SERVICE_ACCOUNT,
        SERVICE,
        DEPLOYMENT,
        INGRESS,
        HOSPITAL,
        RECORD_STORE,
        DEVICE_GATEWAY,
        APP_INSTANCE,
        CONSORTIUM,
        CLUSTER_KOPF_PEERING,
    )
}


def kind_of(manifest: Manifest) -> Kind:
    try:
        return KINDS[(manifest["apiVersion"], manifest["kind"])]
    except KeyError:
        raise ValueError(f"MedCloud does not manage {manifest.get('apiVersion')}/{manifest.get('kind')}") from None


def load_configuration() -> client.Configuration:
    """Client configuration: the in-cluster service account, else ``$KUBECONFIG`` (read now, not at import).

    The kubernetes library captures ``KUBECONFIG`` when it is imported; reading
    it at call time lets one process (tests, `medcloud dev up`) point the
    operator at a cluster chosen later.
    """
    configuration = client.Configuration()
    # The kubernetes library leaves its config loaders (and RESTResponse.read) unannotated.
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def new_api_client(user_agent: str, *, connections: int | None = None) -> client.ApiClient:
    """An API client that names itself ``user_agent`` in the API server's logs.

    ``connections``: how many connections it keeps open at once (the library's default is five per CPU);
    a client holding long-lived watches needs one per watch.
    """
    configuration = load_configuration()
    if connections is not None:
        configuration.connection_pool_maxsize = connections
    api = client.ApiClient(configuration)
    api.user_agent = f"{user_agent}/python"
    return api


def _ignore_write(kind: Kind, verb: str) -> None:
    """The default write hook: nothing counts writes."""


class Kube:
    """GET, LIST, POST, PUT, PATCH (merge) and DELETE of plain manifests."""

    def __init__(
        self, api_client: client.ApiClient, *, field_manager: str, on_write: WriteHook = _ignore_write
    ) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self._on_write = on_write

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Manifest | None = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Manifest:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        raw = response.data
        return cast(Manifest, json.loads(raw)) if raw else {}

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Manifest | None:
        """The live object, or None when it does not exist."""
        try:
            return self._request("GET", kind.object_path(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _items(self, collection_path: str, label_selector: str | None) -> list[Manifest]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._request("GET", collection_path, query=query)
        return cast(list[Manifest], result.get("items") or [])

    def list_every_namespace(self, kind: Kind, label_selector: str | None = None) -> list[Manifest]:
        """The objects of ``kind`` in every namespace (one LIST; for a cluster-scoped kind, :meth:`list`)."""
        return self._items(kind.every_namespace_path(), label_selector)

    def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None) -> list[Manifest]:
        return self._items(kind.collection_path(namespace), label_selector)

    def current_version(self, kind: Kind, label_selector: str | None = None) -> str:
        """The collection's resourceVersion now, from a LIST of at most one object: where a watch can start.

        A watch started there sees every later change and none of what exists already, which is what a
        controller that only repairs drift needs (what happened before, its safety net finds).
        """
        query = [("limit", "1")] + ([("labelSelector", label_selector)] if label_selector else [])
        result = self._request("GET", kind.every_namespace_path(), query=query)
        return str(result["metadata"]["resourceVersion"])

    def watch(
        self,
        kind: Kind,
        resource_version: str,
        *,
        label_selector: str | None = None,
        timeout_seconds: int = 270,
    ) -> Iterator[Manifest]:
        """Watch events of ``kind`` in every namespace after ``resource_version``, as the API server's JSON.

        Each item is ``{"type": ..., "object": ...}``; bookmarks are asked for, so a quiet stream still
        moves its resourceVersion on. The server ends the stream after ``timeout_seconds``; an ``ERROR``
        event (410 Gone: the version is too old) is handed on for the caller to start again from
        :meth:`current_version`.
        """
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ] + ([("labelSelector", label_selector)] if label_selector else [])
        request = self.api_client.param_serialize(
            method="GET",
            resource_path=kind.every_namespace_path(),
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        # The read timeout outlasts the server's own, so the server's clean end wins over a client error.
        response = self.api_client.call_api(*request, _request_timeout=(30, timeout_seconds + 30))
        try:
            if not 200 <= response.status <= 299:
                response.read()  # type: ignore[no-untyped-call]
                raise ApiException.from_response(http_resp=response, body=None, data=None)
            for line in iter_resp_lines(response.response):  # type: ignore[no-untyped-call]  # unannotated
                if line:
                    yield cast(Manifest, json.loads(line))
        finally:
            # Closed, not drained: a stream left early (its consumer stopped) must not go back to the pool unread.
            response.response.close()
            response.response.release_conn()

    def create(self, manifest: Manifest) -> Manifest:
        kind = kind_of(manifest)
        namespace = manifest["metadata"].get("namespace")
        created = self._request(
            "POST", kind.collection_path(namespace), body=manifest, query=[("fieldManager", self.field_manager)]
        )
        self._on_write(kind, "create")
        return created

    def replace(self, manifest: Manifest) -> Manifest:
        """PUT: carries ``metadata.resourceVersion``, so a concurrent change fails with 409 instead of being lost."""
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        replaced = self._request(
            "PUT",
            kind.object_path(meta["name"], meta.get("namespace")),
            body=manifest,
            query=[("fieldManager", self.field_manager)],
        )
        self._on_write(kind, "update")
        return replaced

    def merge_patch(
        self, kind: Kind, name: str, patch: Manifest, namespace: str | None = None, subresource: str | None = None
    ) -> Manifest:
        path = kind.object_path(name, namespace) + (f"/{subresource}" if subresource else "")
        patched = self._request(
            "PATCH",
            path,
            body=patch,
            query=[("fieldManager", self.field_manager)],
            content_type="application/merge-patch+json",
        )
        self._on_write(kind, "patch")
        return patched

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        try:
            self._request("DELETE", kind.object_path(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        self._on_write(kind, "delete")
        return True
