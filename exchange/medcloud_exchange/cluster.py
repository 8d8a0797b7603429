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

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from medcloud.models import GROUP, VERSION
from medcloud.models.consortium import Consortium, ConsortiumSpec
from medcloud_exchange import FIELD_MANAGER
from medcloud_exchange.settings import ExchangeSettings

EXCHANGE_SUBRESOURCE = "exchange"
HOSPITAL_NAMESPACE_PREFIX = "hospital-"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
EVENT_NAMESPACE = "default"


@dataclass(frozen=True)
class Caller:
    """A caller as the cluster authenticated it (TokenReview status.user)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def namespace(self) -> str | None:
        """The namespace of a service account caller."""
        if not self.username.startswith(SERVICE_ACCOUNT_PREFIX):
            return None
        return self.username[len(SERVICE_ACCOUNT_PREFIX) :].split(":", 1)[0]


def hospital_namespace(hospital: str) -> str:
    return f"{HOSPITAL_NAMESPACE_PREFIX}{hospital}"


def hospital_of_namespace(namespace: str | None) -> str | None:
    if (
        namespace
        and namespace.startswith(HOSPITAL_NAMESPACE_PREFIX)
        and len(namespace) > len(HOSPITAL_NAMESPACE_PREFIX)
    ):
        return namespace[len(HOSPITAL_NAMESPACE_PREFIX) :]
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
    endpoint: str
    secure: bool
    access_key: str
    secret_key: str = field(repr=False)


class Cluster:
    """The exchange's calls to the API server, each with the configured timeout, as its own identity."""

    def __init__(self, api_client: client.ApiClient, settings: ExchangeSettings) -> None:
        self._timeout = settings.kube_timeout_seconds
        self._audience = settings.audience
        self._consortium = settings.consortium
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    def authenticate(self, token: str) -> Caller | None:
        spec = client.V1TokenReviewSpec(token=token, audiences=[self._audience])
        review = self._authn.create_token_review(client.V1TokenReview(spec=spec), _request_timeout=self._timeout)
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        if status.audiences is not None and self._audience not in status.audiences:
            return None
        user = status.user
        return Caller(
            username=str(user.username),
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra={k: list(v) for k, v in (user.extra or {}).items()},
        )

    def may_act_for(self, caller: Caller, hospital: str, verb: str) -> bool:
        """Whether RBAC grants ``caller`` ``verb`` on ``consortia/exchange`` of this Consortium in H's namespace."""
        attributes = client.V1ResourceAttributes(
            group=GROUP,
            version=VERSION,
            resource=Consortium.crd.plural,
            subresource=EXCHANGE_SUBRESOURCE,
            verb=verb,
            namespace=hospital_namespace(hospital),
            name=self._consortium,
        )
        spec = client.V1SubjectAccessReviewSpec(
            user=caller.username,
            uid=caller.uid or None,
            groups=list(caller.groups) or None,
            extra=caller.extra or None,
            resource_attributes=attributes,
        )
        review = self._authz.create_subject_access_review(
            client.V1SubjectAccessReview(spec=spec), _request_timeout=self._timeout
        )
        status = review.status
        return bool(status and status.allowed and not status.denied)

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

    def store_credentials(self, hospital: str, store: str) -> StoreCredentials | None:
        """The S3 credentials of a member's RecordStore, from its credentials Secret; None when absent."""
        try:
            secret = self._core.read_namespaced_secret(
                f"{store}-credentials", hospital_namespace(hospital), _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        try:
            return StoreCredentials(
                bucket=data["BUCKET_NAME"],
                endpoint=f"{data['BUCKET_HOST']}:{data['BUCKET_PORT']}",
                secure=data.get("MEDCLOUD_S3_SECURE", "true") == "true",
                access_key=data["AWS_ACCESS_KEY_ID"],
                secret_key=data["AWS_SECRET_ACCESS_KEY"],
            )
        except KeyError:
            return None

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
