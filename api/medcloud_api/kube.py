"""Thin access to the Kubernetes API: MedCloud's custom resources (reviews through :mod:`medcloud.auth`).

Nothing here decides anything; it only moves dictionaries between the API
server and the routers. Custom objects stay plain dictionaries in the API
server's camelCase shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from medcloud.auth import Reviews
from medcloud.kube.client import Manifest
from medcloud.models import GROUP, VERSION, Resource
from medcloud_api import FIELD_MANAGER
from medcloud_api.config import APISettings

REPLACE_ATTEMPTS = 5


def new_api_client(settings: APISettings) -> client.ApiClient:
    """An ApiClient for the API's own identity: explicit kubeconfig, in-cluster, or the default kubeconfig."""
    if settings.kubeconfig is not None:
        return cast(client.ApiClient, config.new_client_from_config(config_file=str(settings.kubeconfig)))  # type: ignore[no-untyped-call]
    if settings.in_cluster():
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    return cast(client.ApiClient, config.new_client_from_config())  # type: ignore[no-untyped-call]


def is_namespace_missing(exc: ApiException) -> bool:
    """A create refused because the target namespace does not exist (yet)."""
    if exc.status != 404 or not exc.body:
        return False
    try:
        details = json.loads(exc.body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(details.get("kind") == "namespaces")


def _manifest(result: object) -> Manifest:
    """The kubernetes client types custom objects as ``object``; they are JSON dictionaries."""
    if not isinstance(result, dict):
        raise TypeError(f"expected a JSON object from the Kubernetes API, got {type(result).__name__}")
    return cast(Manifest, result)


class Kube:
    """The calls the API makes, each with the configured timeout."""

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(api_client)
        self.reviews = Reviews(api_client, timeout)

    # ------------------------------------------------------------ resources
    def get(self, kind: type[Resource], name: str, namespace: str | None = None) -> Manifest | None:
        """The object, or None when it does not exist."""
        try:
            if kind.crd.namespaced:
                assert namespace is not None
                result = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.crd.plural, name, _request_timeout=self.timeout
                )
            else:
                result = self.custom.get_cluster_custom_object(
                    GROUP, VERSION, kind.crd.plural, name, _request_timeout=self.timeout
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _manifest(result)

    def list_page(
        self,
        kind: type[Resource],
        namespace: str | None = None,
        *,
        limit: int | None = None,
        continue_: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Manifest], str | None, str]:
        """One page: (items, continue token or None, resourceVersion of the list)."""
        kwargs: dict[str, Any] = {"_request_timeout": self.timeout}
        if field_selector:
            kwargs["field_selector"] = field_selector
        if limit is not None:
            kwargs["limit"] = limit
        if continue_:
            kwargs["_continue"] = continue_
        if kind.crd.namespaced:
            assert namespace is not None
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.crd.plural, **kwargs)
        else:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, kind.crd.plural, **kwargs)
        page = _manifest(result)
        meta = page.get("metadata") or {}
        items = cast(list[Manifest], page.get("items") or [])
        return items, meta.get("continue") or None, str(meta.get("resourceVersion") or "")

    def list_all(self, kind: type[Resource], namespace: str | None = None) -> list[Manifest]:
        items, _, _ = self.list_page(kind, namespace)
        return sorted(items, key=lambda o: str(o["metadata"]["name"]))

    def _write_options(self) -> dict[str, Any]:
        """What every write sends: our field manager, strict validation, the timeout."""
        # Strict: an unknown field is an error, never a silently dropped setting.
        return {"field_manager": FIELD_MANAGER, "field_validation": "Strict", "_request_timeout": self.timeout}

    def create(self, kind: type[Resource], manifest: Manifest) -> Manifest:
        kwargs = self._write_options()
        if kind.crd.namespaced:
            namespace = manifest["metadata"]["namespace"]
            result = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.crd.plural, manifest, **kwargs
            )
        else:
            result = self.custom.create_cluster_custom_object(GROUP, VERSION, kind.crd.plural, manifest, **kwargs)
        return _manifest(result)

    def replace(self, kind: type[Resource], manifest: Manifest) -> Manifest:
        """Update with the manifest's resourceVersion: a concurrent change answers 409, never a lost update."""
        name = manifest["metadata"]["name"]
        kwargs = self._write_options()
        if kind.crd.namespaced:
            namespace = manifest["metadata"]["namespace"]
            result = self.custom.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.crd.plural, name, manifest, **kwargs
            )
        else:
            result = self.custom.replace_cluster_custom_object(
                GROUP, VERSION, kind.crd.plural, name, manifest, **kwargs
            )
        return _manifest(result)

    def replace_spec(self, kind: type[Resource], name: str, namespace: str | None, spec: Manifest) -> Manifest:
        """Set the whole spec on the latest version of the object.

        An update carries the resourceVersion it read, so it never overwrites
        metadata or status someone wrote meanwhile (the operator adds
        finalizers and annotations right after a create); on such a 409 it
        reads again and retries, a few times.
        """
        attempts = 0
        while True:
            attempts += 1
            current = self.get(kind, name, namespace)
            if current is None:
                raise ApiException(status=404, reason=f"{kind.__name__} {name} is gone")
            try:
                return self.replace(kind, {**current, "spec": spec})
            except ApiException as exc:
                if exc.status != 409 or attempts >= REPLACE_ATTEMPTS:
                    raise

    def merge_patch(self, kind: type[Resource], name: str, patch: Manifest, namespace: str | None = None) -> Manifest:
        kwargs = {**self._write_options(), "_content_type": "application/merge-patch+json"}
        if kind.crd.namespaced:
            assert namespace is not None
            result = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.crd.plural, name, patch, **kwargs
            )
        else:
            result = self.custom.patch_cluster_custom_object(GROUP, VERSION, kind.crd.plural, name, patch, **kwargs)
        return _manifest(result)

    def delete(self, kind: type[Resource], name: str, namespace: str | None = None, uid: str | None = None) -> bool:
        """Delete; False when it was already gone. With ``uid``, only that very object (never a successor)."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)) if uid else None
        try:
            if kind.crd.namespaced:
                assert namespace is not None
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.crd.plural, name, body=body, _request_timeout=self.timeout
                )
            else:
                self.custom.delete_cluster_custom_object(
                    GROUP, VERSION, kind.crd.plural, name, body=body, _request_timeout=self.timeout
                )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch(
        self,
        kind: type[Resource],
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        field_selector: str | None = None,
    ) -> Iterator[Manifest]:
        """Watch events (``{"type", "object"}``) from ``resource_version`` for at most ``timeout_seconds``.

        The server ends the watch after ``timeout_seconds``, so a caller that
        wants to stop is never blocked longer than that.
        """
        kwargs: dict[str, Any] = {
            "resource_version": resource_version,
            "timeout_seconds": timeout_seconds,
            "allow_watch_bookmarks": True,
            # A dead connection must not hang the reader forever.
            "_request_timeout": timeout_seconds + self.timeout,
        }
        if field_selector:
            kwargs["field_selector"] = field_selector
        w = watch.Watch()  # type: ignore[no-untyped-call]
        if kind.crd.namespaced:
            stream = w.stream(  # type: ignore[no-untyped-call]
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, kind.crd.plural, **kwargs
            )
        else:
            stream = w.stream(  # type: ignore[no-untyped-call]
                self.custom.list_cluster_custom_object, GROUP, VERSION, kind.crd.plural, **kwargs
            )
        for event in stream:
            yield cast(Manifest, event)
