"""What the exchange asks the Kubernetes API: who calls (TokenReview), may they (SubjectAccessReview),
the Consortium's rules, the publishers' store credentials, and Warning Events. Nothing here decides.

A service account acts for hospital H when RBAC lets it use the virtual
subresource ``consortia/exchange`` of this Consortium in H's namespace, which
is what binding the ClusterRole ``medcloud-exchange-client`` there grants::

    rules:
      - apiGroups: [medcloud.io]
        resources: [consortia/exchange]
        verbs: [get, create]
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from medcloud.auth import Caller, Reviews, medcloud_resource
from medcloud.models import GROUP, VERSION
from medcloud.models.common import hospital_namespace
from medcloud.models.consortium import Consortium, ConsortiumSpec
from medcloud.models.hospital import Hospital, HospitalSpec
from medcloud.tenancy.credentials import ACCESS_KEY_FIELD, SECRET_KEY_FIELD, Endpoint, decoded
from medcloud.tenancy.store import InvalidStoreError, credentials_secret_name, hospital_of_namespace
from medcloud_exchange import FIELD_MANAGER
from medcloud_exchange.settings import ExchangeSettings

EXCHANGE_SUBRESOURCE = "exchange"
EXPORT_SUBRESOURCE = "export"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
EVENT_NAMESPACE = "default"


def namespace_of(caller: Caller) -> str | None:
    """The namespace of a service account caller."""
    if not caller.username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    return caller.username[len(SERVICE_ACCOUNT_PREFIX) :].split(":", 1)[0]


def hospital_of(namespace: str | None) -> str | None:
    """The hospital whose tenant namespace this is, if it is one."""
    try:
        return hospital_of_namespace(namespace) if namespace else None
    except InvalidStoreError:
        return None


def new_api_client(settings: ExchangeSettings) -> client.ApiClient:
    if settings.kubeconfig is not None:
        return cast(client.ApiClient, config.new_client_from_config(config_file=str(settings.kubeconfig)))  # type: ignore[no-untyped-call]
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    except config.ConfigException:
        return cast(client.ApiClient, config.new_client_from_config())  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class StoreCredentials:
    bucket: str
    endpoint: Endpoint
    access_key: str
    secret_key: str = field(repr=False)


class Cluster:
    """The exchange's calls to the API server, each with the configured timeout, as its own identity."""

    def __init__(self, api_client: client.ApiClient, settings: ExchangeSettings) -> None:
        self._timeout = settings.kube_timeout_seconds
        self._audience = settings.audience
        self._consortium = settings.consortium
        self._reviews = Reviews(api_client, settings.kube_timeout_seconds)
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    def authenticate(self, token: str) -> Caller | None:
        """The caller of a token issued for the exchange's audience; None when the cluster does not accept it."""
        return self._reviews.authenticate(token, [self._audience])

    def may_act_for(self, caller: Caller, hospital: str, verb: str) -> bool:
        """Whether RBAC grants ``caller`` ``verb`` on ``consortia/exchange`` of this Consortium in H's namespace."""
        attributes = medcloud_resource(
            Consortium.crd.plural,
            verb,
            namespace=hospital_namespace(hospital),
            name=self._consortium,
            subresource=EXCHANGE_SUBRESOURCE,
        )
        allowed, _reason = self._reviews.may(caller, attributes)
        return allowed

    def may_export(self, caller: Caller) -> bool:
        """Whether RBAC grants ``caller`` ``get`` on ``consortia/export`` of this Consortium (a FHIR Bulk export)."""
        attributes = medcloud_resource(
            Consortium.crd.plural, "get", name=self._consortium, subresource=EXPORT_SUBRESOURCE
        )
        allowed, _reason = self._reviews.may(caller, attributes)
        return allowed

    def consortium(self) -> ConsortiumSpec | None:
        """The Consortium's spec as it is now; None when it is gone."""
        try:
            raw = self._custom.get_cluster_custom_object(
                GROUP, VERSION, Consortium.crd.plural, self._consortium, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return ConsortiumSpec.model_validate(cast(dict[str, Any], raw)["spec"])

    def hospital(self, name: str) -> HospitalSpec | None:
        """A member's Hospital spec (tier, accreditation) as it is now; None when it is gone."""
        try:
            raw = self._custom.get_cluster_custom_object(
                GROUP, VERSION, Hospital.crd.plural, name, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return HospitalSpec.model_validate(cast(dict[str, Any], raw)["spec"])

    def store_credentials(self, hospital: str, store: str) -> StoreCredentials | None:
        """The S3 credentials of a member's RecordStore, from its credentials Secret; None when absent."""
        try:
            read = self._core.read_namespaced_secret(
                credentials_secret_name(store), hospital_namespace(hospital), _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        secret = {"data": read.data or {}}
        bucket, endpoint = decoded(secret, "BUCKET_NAME"), decoded(secret, "COSI_S3_ENDPOINT")
        access, secret_key = decoded(secret, ACCESS_KEY_FIELD), decoded(secret, SECRET_KEY_FIELD)
        if not (bucket and endpoint and access and secret_key):
            return None
        return StoreCredentials(bucket, Endpoint.parse(endpoint), access, secret_key)

    def warn(self, reason: str, message: str) -> None:
        """A Warning Event about the Consortium (cluster-scoped objects' Events live in ``default``)."""
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{self._consortium}.{uuid.uuid4().hex[:12]}", namespace=EVENT_NAMESPACE),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="Consortium", name=self._consortium
            ),
            reason=reason,
            message=message[:1024],
            type="Warning",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            reporting_instance=FIELD_MANAGER,
        )
        self._core.create_namespaced_event(EVENT_NAMESPACE, event, _request_timeout=self._timeout)
