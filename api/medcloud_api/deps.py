"""Named dependencies: the Kubernetes client, the caller (TokenReview) and their permissions (SubjectAccessReview).

The API authenticates nobody itself and holds no policy of its own: the
cluster checks each bearer token, and the cluster's RBAC decides each action,
asked with the caller's user, groups, uid and extra. So one policy governs
``kubectl`` and this API, and 401 (who are you?) stays distinct from 403 (you
may not).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medcloud.auth import Caller, medcloud_resource
from medcloud.models import Resource
from medcloud_api.config import APISettings
from medcloud_api.kube import Kube
from medcloud_api.problems import ProblemError, unauthorized


def get_kube(request: Request) -> Kube:
    kube: Kube = request.app.state.kube
    return kube


def get_settings(request: Request) -> APISettings:
    settings: APISettings = request.app.state.settings
    return settings


KubeDep = Annotated[Kube, Depends(get_kube)]
SettingsDep = Annotated[APISettings, Depends(get_settings)]

# auto_error=False: a missing or malformed header must become our 401 problem,
# not FastAPI's own error body.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="KubernetesToken",
    description="A Kubernetes bearer token (e.g. `kubectl create token <service-account>`), checked by TokenReview.",
)


def current_user(
    request: Request,
    kube: KubeDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller, as the cluster authenticates their bearer token."""
    if credentials is None or not credentials.credentials.strip():
        raise unauthorized("a bearer token is required: Authorization: Bearer <token>")
    user = kube.reviews.authenticate(credentials.credentials.strip(), settings.token_audiences)
    if user is None:
        raise unauthorized("the cluster did not accept the bearer token (expired, revoked or not a token)")
    # For the audit line: who made the request, never their token.
    request.state.audit_user = user.username
    return user


CurrentUser = Annotated[Caller, Depends(current_user)]


def _describe(verb: str, resource: str, namespace: str | None, name: str | None) -> str:
    target = f"{resource}.medcloud.io"
    if name:
        target += f' "{name}"'
    if namespace:
        target += f" in namespace {namespace}"
    return f"{verb} {target}"


class Authorizer:
    """Asks the cluster (SubjectAccessReview) whether the caller may act; answers are kept for one request."""

    def __init__(self, kube: Kube, user: Caller) -> None:
        self.kube = kube
        self.user = user
        self._answers: dict[tuple[str, str, str | None, str | None], tuple[bool, str]] = {}

    def allowed(self, verb: str, resource: str, namespace: str | None = None, name: str | None = None) -> bool:
        key = (verb, resource, namespace, name)
        if key not in self._answers:
            self._answers[key] = self.kube.reviews.may(
                self.user, medcloud_resource(resource, verb, namespace=namespace, name=name)
            )
        return self._answers[key][0]

    def authorize(self, verb: str, resource: str, namespace: str | None = None, name: str | None = None) -> None:
        """Raise 403 unless the caller may ``verb`` the resource (the object ``name``, if given)."""
        if not self.allowed(verb, resource, namespace, name):
            reason = self._answers[(verb, resource, namespace, name)][1]
            detail = f"{self.user.username} may not {_describe(verb, resource, namespace, name)}"
            if reason:
                detail += f" ({reason})"
            raise ProblemError(403, "forbidden", detail)

    def authorize_object(self, verb: str, kind: type[Resource], name: str | None, namespace: str | None) -> None:
        # Creates are checked without a name, exactly as the API server checks
        # them: RBAC rules with resourceNames never allow a create.
        self.authorize(
            verb, kind.crd.plural, namespace if kind.crd.namespaced else None, None if verb == "create" else name
        )


def get_authorizer(kube: KubeDep, user: CurrentUser) -> Authorizer:
    return Authorizer(kube, user)


Authz = Annotated[Authorizer, Depends(get_authorizer)]
