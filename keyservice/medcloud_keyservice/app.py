"""The key service's HTTP API: one resource, a store's data key by version.

``GET /v1/namespaces/{namespace}/recordstores/{name}/keys/current``
    the version new records must use, and its key;
``GET /v1/namespaces/{namespace}/recordstores/{name}/keys/{version}``
    an older version, to read records written under it.

Answers: 200 with the key; 401 without a token the cluster accepts for the
service's audience; 403 when RBAC does not grant ``get`` on
``recordstores/keys`` for that store; 404 for a store or version that does
not exist; 410 once the store's keys were crypto-shredded; 503 when the KEK
or key ring cannot be read. Authorisation comes first, so a caller without
the grant learns nothing about which stores exist.

Every answer is audited (see :mod:`medcloud_keyservice.audit`) and carries
``Cache-Control: no-store``: a key must not sit in a proxy's cache.
"""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from starlette.responses import Response
from urllib3.exceptions import HTTPError

from medcloud.auth import Caller
from medcloud.kube.client import Kube, new_api_client
from medcloud.records.keys import KeyRing, KeyShreddedError, UnknownKeyVersionError
from medcloud.tenancy import kek, keyring
from medcloud.tenancy.store import InvalidStoreError, StoreNames
from medcloud_keyservice import audit
from medcloud_keyservice.access import Authorizer
from medcloud_keyservice.audit import Result, UnwrapRecord
from medcloud_keyservice.settings import KeyServiceSettings

log = logging.getLogger("medcloud_keyservice")

CURRENT = "current"
SERVICE_NAME = "medcloud-keyservice"
"""Field manager and user agent of the key service (it only reads)."""


class DataKey(BaseModel):
    """One data-key version of a store, unwrapped for the caller."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    hospital: str = Field(description="Hospital the store belongs to (part of every record's associated data).")
    namespace: str = Field(description="Namespace of the RecordStore.")
    store: str = Field(description="Name of the RecordStore.")
    version: int = Field(description="Data-key version of this key.")
    current_version: int = Field(description="The store's current data-key version (what new records use).")
    kek_version: int = Field(description="Version of the hospital KEK the key was wrapped with at rest.")
    key: str = Field(description="The 256-bit data key, base64; keep it in memory only.")


class Refused(HTTPException):
    """An error answer that also says how to audit it."""

    def __init__(self, status: int, result: Result, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers)
        self.result = result


bearer = HTTPBearer(auto_error=False, description="A service account token issued for the key service's audience.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
NamespacePath = Annotated[str, Path(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
StorePath = Annotated[str, Path(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
VersionPath = Annotated[str, Path(max_length=10, pattern=r"^(current|[1-9][0-9]*)$")]


class KeyService:
    """What the routes need: the cluster (reads and reviews) and the settings."""

    def __init__(self, settings: KeyServiceSettings, api_client: client.ApiClient) -> None:
        self.settings = settings
        self.kube = Kube(api_client, field_manager=SERVICE_NAME)
        self.authorizer = Authorizer(api_client, settings.audience, settings.kube_timeout_seconds)

    def caller(self, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        if credentials is None or not credentials.credentials.strip():
            raise Refused(401, Result.UNAUTHENTICATED, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        caller = self.authorizer.authenticate(credentials.credentials.strip())
        if caller is None:
            raise Refused(
                401,
                Result.UNAUTHENTICATED,
                f"the cluster did not accept the token for audience {self.settings.audience}",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return caller

    def authorise(self, caller: Caller, namespace: str, store: str) -> None:
        allowed, reason = self.authorizer.may_get_keys(caller, namespace, store)
        if not allowed:
            raise Refused(
                403,
                Result.DENIED,
                f"{caller.username} may not get recordstores/keys {store!r} in namespace {namespace}"
                + (f": {reason}" if reason else ""),
            )

    def ring(self, namespace: str, store: str) -> KeyRing:
        try:
            names = StoreNames.of(namespace, store)
        except InvalidStoreError as exc:
            raise Refused(404, Result.NOT_FOUND, str(exc)) from None
        try:
            ring = keyring.load(self.kube, names, self.settings.operator_namespace)
        except keyring.KeyRingMissingError:
            raise Refused(404, Result.NOT_FOUND, f"RecordStore {namespace}/{store} has no keys") from None
        except (keyring.KeyRingInvalidError, keyring.KekVersionMissingError, kek.KekInvalidError) as exc:
            log.error("keys of %s/%s unavailable: %s", namespace, store, exc)
            raise Refused(503, Result.UNAVAILABLE, f"the keys of {namespace}/{store} cannot be read") from None
        if ring.is_shredded:
            raise Refused(
                410, Result.SHREDDED, f"the keys of RecordStore {namespace}/{store} were destroyed (crypto-shredded)"
            )
        return ring


AUDITED_PARAMETER_MAX = 253
"""An invalid path parameter is audited up to this length (the longest valid one), so the log stays bounded."""


def _clipped(value: object) -> str:
    return str(value or "")[:AUDITED_PARAMETER_MAX]


def _client_from(settings: KeyServiceSettings) -> client.ApiClient:
    if settings.kubeconfig is not None:
        # The kubernetes package leaves its config loaders unannotated.
        api: client.ApiClient = config.new_client_from_config(config_file=str(settings.kubeconfig))  # type: ignore[no-untyped-call]
        return api
    return new_api_client(SERVICE_NAME)


def create_app(settings: KeyServiceSettings | None = None, api_client: client.ApiClient | None = None) -> FastAPI:
    """The key service as an ASGI app; ``api_client`` is its own identity towards the cluster."""
    settings = settings or KeyServiceSettings()
    service = KeyService(settings, api_client or _client_from(settings))
    app = FastAPI(
        title="MedCloud key service",
        summary="Data keys of RecordStores, for callers the cluster authorises.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    # The process's own series (process_*, python_*), so Prometheus sees the service up or down;
    # no series names a caller, a store or a key.
    app.mount("/metrics", make_asgi_app())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A path that names no store: audited like every answer, and answered without echoing it."""
        fields = [".".join(str(part) for part in error["loc"]) for error in exc.errors()]
        params = request.path_params
        audit.write(
            UnwrapRecord(
                namespace=_clipped(params.get("namespace")),
                store=_clipped(params.get("name")),
                requested=_clipped(params.get("version")),
                result=Result.INVALID,
                reason=f"invalid {', '.join(fields)}",
                source=request.client.host if request.client else None,
            )
        )
        detail = [{"loc": error["loc"], "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail}, headers={"Cache-Control": "no-store"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """The process serves requests; says nothing about the cluster, so an outage restarts nothing."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False, responses={503: {}})
    def readyz() -> dict[str, str]:
        """The cluster answers, and RBAC grants the service what unwrapping needs (reviews, Secrets by name)."""
        try:
            missing = service.authorizer.missing_permissions(settings.operator_namespace)
        except (ApiException, HTTPError, OSError) as exc:
            reason = f"HTTP {exc.status}" if isinstance(exc, ApiException) else type(exc).__name__
            raise HTTPException(503, f"the Kubernetes API cannot be asked ({reason})") from None
        if missing:
            raise HTTPException(503, f"the key service's identity may not: {', '.join(missing)}")
        return {"status": "ok"}

    @app.get(
        "/v1/namespaces/{namespace}/recordstores/{name}/keys/{version}",
        response_model=DataKey,
        response_model_by_alias=True,
        responses={401: {}, 403: {}, 404: {}, 410: {}, 503: {}},
    )
    def get_key(
        request: Request,
        response: Response,
        namespace: NamespacePath,
        name: StorePath,
        version: VersionPath,
        credentials: Credentials,
    ) -> DataKey:
        """A data key of the store: ``current`` or a version number."""
        response.headers["Cache-Control"] = "no-store"
        record: dict[str, Any] = {
            "namespace": namespace,
            "store": name,
            "requested": version,
            "source": request.client.host if request.client else None,
        }
        try:
            caller = service.caller(credentials)
            record.update(user=caller.username, groups=caller.groups)
            service.authorise(caller, namespace, name)
            ring = service.ring(namespace, name)
            wanted = ring.current_version if version == CURRENT else int(version)
            try:
                key = ring.data_key(wanted)
            except UnknownKeyVersionError:
                raise Refused(404, Result.NOT_FOUND, f"{namespace}/{name} has no data-key version {wanted}") from None
            except KeyShreddedError:
                raise Refused(410, Result.SHREDDED, f"the keys of {namespace}/{name} were destroyed") from None
        except Refused as refused:
            audit.write(UnwrapRecord(**record, result=refused.result, reason=str(refused.detail)))
            refused.headers = {**(refused.headers or {}), "Cache-Control": "no-store"}
            raise
        except (ApiException, HTTPError, OSError) as exc:
            # The cluster did not answer a review or a read: not the caller's fault, and not a grant.
            log.error("key request for %s/%s failed: %s", namespace, name, exc)
            audit.write(UnwrapRecord(**record, result=Result.UNAVAILABLE, reason="cluster unavailable"))
            raise HTTPException(503, "the cluster could not be asked", {"Cache-Control": "no-store"}) from None
        audit.write(UnwrapRecord(**record, result=Result.GRANTED, key_version=wanted, kek_version=ring.kek_version))
        return DataKey(
            hospital=ring.hospital,
            namespace=namespace,
            store=name,
            version=wanted,
            current_version=ring.current_version,
            kek_version=ring.kek_version,
            key=base64.b64encode(key).decode(),
        )

    return app
