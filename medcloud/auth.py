"""Who is calling (TokenReview) and may they do it (SubjectAccessReview): the one place every server asks.

MedCloud's servers hold no policy of their own: the cluster authenticates the
bearer token and RBAC (or whatever authorises the cluster) decides. The
control API asks about MedCloud resources; the key service about the
RBAC-only subresource ``recordstores/keys`` (``medcloud_keyservice.access``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubernetes import client

from medcloud.models import GROUP, VERSION


@dataclass(frozen=True)
class Caller:
    """A caller as the cluster authenticated it (TokenReview status.user)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


def medcloud_resource(
    resource: str,
    verb: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> client.V1ResourceAttributes:
    """The attributes of an action on a ``medcloud.io`` resource, as a SubjectAccessReview names it."""
    return client.V1ResourceAttributes(
        group=GROUP,
        version=VERSION,
        resource=resource,
        subresource=subresource,
        verb=verb,
        namespace=namespace,
        name=name,
    )


class Reviews:
    """TokenReviews and SubjectAccessReviews sent with the server's own identity, each with one timeout."""

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._timeout = timeout

    def authenticate(self, token: str, audiences: list[str] | None = None) -> Caller | None:
        """The caller a token belongs to, or None when the cluster does not accept it (for one of ``audiences``)."""
        spec = client.V1TokenReviewSpec(token=token, audiences=audiences or None)
        review = self._authn.create_token_review(client.V1TokenReview(spec=spec), _request_timeout=self._timeout)
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        # The API server answers with the audiences the token was valid for;
        # an empty intersection with ours means it was not issued for us.
        if audiences and status.audiences is not None and not set(audiences) & set(status.audiences):
            return None
        user = status.user
        return Caller(
            username=str(user.username),
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra={k: list(v) for k, v in (user.extra or {}).items()},
        )

    def may(self, caller: Caller, attributes: client.V1ResourceAttributes) -> tuple[bool, str]:
        """Whether the cluster lets ``caller`` do what ``attributes`` name; (allowed, reason)."""
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
        return bool(status and status.allowed and not status.denied), (status.reason or "") if status else ""

    def missing(self, needed: Mapping[str, client.V1ResourceAttributes]) -> list[str]:
        """Which of ``needed`` (what -> attributes) the server's own identity may not do, by SelfSubjectAccessReview.

        Any authenticated identity may ask about itself, so this works before
        the server's RBAC is in place and names what is missing.
        """
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
