"""May this caller have this store's keys? RBAC decides, through :mod:`medcloud.auth`.

The grant is the verb ``get`` on the subresource ``recordstores/keys`` of the
named store. That subresource is served by no API; it exists for RBAC only,
so a grant of keys is always explicit and never implied by access to the
RecordStore object itself::

    rules:
      - apiGroups: [medcloud.io]
        resources: [recordstores/keys]
        resourceNames: [emr]
        verbs: [get]
"""

from __future__ import annotations

from kubernetes import client

from medcloud.auth import Caller, Reviews, medcloud_resource

KEYS_SUBRESOURCE = "keys"


class Authorizer:
    """The key service's questions to the cluster: who is calling, may they get the keys, what do we lack."""

    def __init__(self, api_client: client.ApiClient, audience: str, timeout: float) -> None:
        self._reviews = Reviews(api_client, timeout)
        self._audience = audience

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token belongs to, or None when the cluster does not accept it for our audience."""
        return self._reviews.authenticate(token, [self._audience])

    def may_get_keys(self, caller: Caller, namespace: str, store: str) -> tuple[bool, str]:
        """Whether RBAC lets ``caller`` get the keys of ``namespace/store``; (allowed, reason)."""
        attributes = medcloud_resource(
            "recordstores", "get", namespace=namespace, name=store, subresource=KEYS_SUBRESOURCE
        )
        return self._reviews.may(caller, attributes)

    def missing_permissions(self, operator_namespace: str) -> list[str]:
        """What the service's own identity lacks of what unwrapping needs (empty when nothing)."""
        return self._reviews.missing(
            {
                "create tokenreviews": client.V1ResourceAttributes(
                    group="authentication.k8s.io", resource="tokenreviews", verb="create"
                ),
                "create subjectaccessreviews": client.V1ResourceAttributes(
                    group="authorization.k8s.io", resource="subjectaccessreviews", verb="create"
                ),
                f"get secrets in namespace {operator_namespace}": client.V1ResourceAttributes(
                    resource="secrets", verb="get", namespace=operator_namespace
                ),
            }
        )
