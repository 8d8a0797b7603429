"""Who is calling (TokenReview) and may they have this store's keys (SubjectAccessReview)?

The service holds no policy of its own: the cluster authenticates the bearer
token, and RBAC decides, through the verb ``get`` on the subresource
``recordstores/keys`` of the named store. That subresource is served by no
API; it exists for RBAC only, so a grant of keys is always explicit and
never implied by access to the RecordStore object itself::

    rules:
      - apiGroups: [medcloud.io]
        resources: [recordstores/keys]
        resourceNames: [emr]
        verbs: [get]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubernetes import client

from medcloud.models import GROUP, VERSION

KEYS_SUBRESOURCE = "keys"


@dataclass(frozen=True)
class Caller:
    """A caller as the cluster authenticated it (TokenReview status.user)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


class Authorizer:
    """TokenReview and SubjectAccessReview through the service's own identity."""

    def __init__(self, api_client: client.ApiClient, audience: str, timeout: float) -> None:
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._audience = audience
        self._timeout = timeout

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token belongs to, or None when the cluster does not accept it for our audience."""
        spec = client.V1TokenReviewSpec(token=token, audiences=[self._audience])
        review = self._authn.create_token_review(client.V1TokenReview(spec=spec), _request_timeout=self._timeout)
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        # The API server answers with the audiences the token was valid for;
        # an empty intersection with ours means it was not issued for us.
        if status.audiences is not None and self._audience not in status.audiences:
            return None
        user = status.user
        return Caller(
            username=str(user.username),
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra={k: list(v) for k, v in (user.extra or {}).items()},
        )

    def missing_permissions(self, operator_namespace: str) -> list[str]:
        """What the service's own identity lacks of what it needs (empty when nothing), by SelfSubjectAccessReview.

        Any authenticated identity may ask about itself, so this works before
        the service's RBAC is in place and names what is missing.
        """
        needed = {
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
        missing = []
        for what, attributes in needed.items():
            review = self._authz.create_self_subject_access_review(
                client.V1SelfSubjectAccessReview(
                    spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
                ),
                _request_timeout=self._timeout,
            )
            if not (review.status and review.status.allowed):
                missing.append(what)
        return missing

    def may_get_keys(self, caller: Caller, namespace: str, store: str) -> tuple[bool, str]:
        """Whether RBAC lets ``caller`` get the keys of ``namespace/store``; (allowed, reason)."""
        attributes = client.V1ResourceAttributes(
            group=GROUP,
            version=VERSION,
            resource="recordstores",
            subresource=KEYS_SUBRESOURCE,
            verb="get",
            namespace=namespace,
            name=store,
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
        allowed = bool(status and status.allowed and not status.denied)
        return allowed, (status.reason or "") if status else ""
