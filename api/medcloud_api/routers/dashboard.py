"""The dashboard: the city health commission's indicators as charts, read from the analytics bucket."""

from __future__ import annotations

import json
from typing import Any

import urllib3
import vl_convert
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from minio import Minio
from minio.error import S3Error

from medcloud.auth import medcloud_resource
from medcloud_api import problems
from medcloud_api.config import APISettings
from medcloud_api.dashboard import InvalidIndicatorsError, page
from medcloud_api.deps import CurrentUser, KubeDep, SettingsDep
from medcloud_api.problems import ProblemError

# Published by `medcloud analytics publish` (analytics/medcloud_analytics/dashboard.py); the two agree on
# this name and the document's shape, not on code: the API never imports the analytics.
DOCUMENT_KEY = "dashboard/indicators.json"

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])


def _unavailable(detail: str) -> ProblemError:
    return ProblemError(503, "dashboard-unavailable", detail)


def _read_document(settings: APISettings) -> Any:
    if not (settings.analytics_endpoint and settings.analytics_access_key and settings.analytics_secret_key):
        # Nothing to show here, not a fault: a deployment without analytics has no dashboard.
        raise ProblemError(404, "not-found", "this API has no analytics bucket configured (MEDCLOUD_API_ANALYTICS_*)")
    storage = Minio(
        settings.analytics_endpoint,
        settings.analytics_access_key,
        settings.analytics_secret_key.get_secret_value(),
        secure=settings.analytics_secure,
        http_client=urllib3.PoolManager(timeout=urllib3.Timeout(10), retries=urllib3.Retry(1)),
    )
    try:
        response = storage.get_object(settings.analytics_bucket, DOCUMENT_KEY)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            raise ProblemError(
                404, "not-found", "no indicators published yet: run `medcloud analytics publish`"
            ) from exc
        raise _unavailable(f"the analytics bucket refused the read ({exc.code})") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unavailable("the analytics bucket is unreachable") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise _unavailable("the published indicators are not JSON") from exc


def _svg(spec: dict[str, Any]) -> str:
    return str(vl_convert.vegalite_to_svg(spec))


@router.get(
    "",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
        **problems.responses(401, 403, 404, 503),
    },
    summary="The indicators as charts (HTML with inline SVG)",
    description=(
        "Referrals, tests not repeated, consultations, and blood-pressure and glucose control, as the "
        "analytics last published them, small cells suppressed. Needs `get consortia/export` (the city "
        "health commission's role)."
    ),
)
def dashboard(user: CurrentUser, kube: KubeDep, settings: SettingsDep) -> HTMLResponse:
    allowed, reason = kube.reviews.may(user, medcloud_resource("consortia", "get", subresource="export"))
    if not allowed:
        detail = f"{user.username} may not get consortia/export.medcloud.io"
        raise ProblemError(403, "forbidden", detail + (f" ({reason})" if reason else ""))
    document = _read_document(settings)
    try:
        body = page(document, _svg)
    except InvalidIndicatorsError as exc:
        raise _unavailable(f"the published indicators are not usable: {exc}") from exc
    except ValueError as exc:  # vl-convert rejects a spec it cannot compile
        raise _unavailable("a published chart cannot be rendered") from exc
    return HTMLResponse(body, headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
