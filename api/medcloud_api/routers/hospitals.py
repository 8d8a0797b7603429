"""Hospitals: onboard in one request, list, view across layers, change, offboard.

Every handler first asks the cluster whether the caller may do each thing it
is about to do (SubjectAccessReview), then acts with the API's own identity.
The handlers are plain ``def``: FastAPI runs them in its thread pool, where
the blocking Kubernetes client belongs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import Manifest
from medcloud.models import (
    API_VERSION,
    KINDS_BY_NAME,
    AppInstance,
    DeviceGateway,
    Hospital,
    Phase,
    RecordStore,
    Resource,
    Tier,
    hospital_namespace,
)
from medcloud.models.common import DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_PATTERN, HOSPITAL_NAME_MAX
from medcloud.tenancy import onboarding as tenancy_onboarding
from medcloud.tenancy.institutions import code_holder
from medcloud_api import FIELD_MANAGER, onboarding, pagination, problems
from medcloud_api.deps import Authorizer, Authz, KubeDep, SettingsDep, current_user
from medcloud_api.kube import Kube
from medcloud_api.plan import (
    CREATED_BY,
    app_reference_errors,
    build_plan,
    duplicate_name_errors,
    normalize,
    reference_errors,
    resolve,
    spec_json,
)
from medcloud_api.problems import ProblemError, invalid_request, not_found
from medcloud_api.readiness import hospital_summary, hospital_view
from medcloud_api.schemas import (
    CUSTOM_EXAMPLE,
    TOWNSHIP_EXAMPLE,
    HospitalCreate,
    HospitalList,
    HospitalPatch,
    HospitalView,
    ObjectRef,
    Offboarding,
    OnboardingResult,
    PatchResult,
)

router = APIRouter(prefix="/v1/hospitals", tags=["hospitals"], dependencies=[Depends(current_user)])

HospitalNameParam = Annotated[
    str,
    Path(
        min_length=1,
        max_length=HOSPITAL_NAME_MAX,
        pattern=DNS1123_LABEL_PATTERN,
        description="Name of the Hospital.",
        examples=["township-maple"],
    ),
]

CHILD_KINDS: tuple[type[Resource], ...] = (RecordStore, DeviceGateway, AppInstance)


def load_view(kube: Kube, name: str) -> HospitalView | None:
    """The hospital across its layers, or None when the Hospital does not exist."""
    hospital = kube.get(Hospital, name)
    if hospital is None:
        return None
    namespace = hospital_namespace(name)
    stores, gateways, apps = (kube.list_all(kind, namespace) for kind in CHILD_KINDS)
    return hospital_view(hospital, stores, gateways, apps)


def authorize_view(authz: Authorizer, name: str) -> None:
    """What seeing a hospital across its layers takes: the Hospital, and listing each kind in its namespace."""
    authz.authorize("get", "hospitals", name=name)
    namespace = hospital_namespace(name)
    for kind in CHILD_KINDS:
        authz.authorize("list", kind.crd.plural, namespace=namespace)


# ---------------------------------------------------------------------------
# Onboarding
# ---------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=OnboardingResult,
    summary="Onboard a hospital",
    responses={
        200: {"description": "Everything already existed exactly as requested", "model": OnboardingResult},
        201: {"description": "Onboarded; objects created"},
        **problems.responses(400, 401, 403, 409, 422, 500, 503),
    },
)
def onboard_hospital(
    request: Request,
    response: Response,
    kube: KubeDep,
    authz: Authz,
    settings: SettingsDep,
    body: Annotated[
        HospitalCreate,
        Body(
            openapi_examples={
                "township-profile": {
                    "summary": "A township clinic with its tier's default profile",
                    "value": TOWNSHIP_EXAMPLE,
                },
                "county-custom": {
                    "summary": "A county hospital naming its own stores and apps",
                    "value": CUSTOM_EXAMPLE,
                },
            }
        ),
    ],
) -> OnboardingResult:
    """Create the Hospital and its RecordStores, DeviceGateways and AppInstances in one request.

    Leave out `recordStores`, `deviceGateways` and `apps` to get the tier's
    default profile. Repeating a request is not an error (200, nothing
    changes); a request that differs from what exists is refused with 409
    and every difference. A failure part-way deletes what the request created.
    """
    request.state.audit_hospital = body.name
    resolved = resolve(body)
    errors = reference_errors(resolved)
    if errors:
        raise invalid_request(errors)
    plan = build_plan(resolved)
    for desired in plan:
        # get too: a 200 or a 409 shows what exists, which only a reader may see.
        authz.authorize_object("create", desired.kind, desired.name, desired.namespace)
        authz.authorize_object("get", desired.kind, desired.name, desired.namespace)

    holder = code_holder(kube.list_all(Hospital), body.spec.institution_code)
    if holder not in (None, body.name):
        # The holder's name is not told: the caller may not be allowed to see that Hospital.
        raise ProblemError(
            409,
            "institution-code-taken",
            f"institution code {body.spec.institution_code} already belongs to another hospital; "
            "each institution is onboarded once. Nothing was changed.",
        )
    outcome = onboarding.onboard(kube, plan, settings.namespace_wait_seconds)
    _onboarding_finished(kube, body.name)
    view = load_view(kube, body.name)
    if view is None:  # deleted between our create and this read
        raise not_found(f"hospital {body.name}")
    response.status_code = 201 if outcome.created else 200
    response.headers["Location"] = f"/v1/hospitals/{body.name}"
    return OnboardingResult(hospital=view, created=outcome.created, unchanged=outcome.unchanged)


def _onboarding_finished(kube: Kube, name: str) -> None:
    """Everything the plan asked for exists: drop the Hospital's note of it, so the operator stops checking."""
    hospital = kube.get(Hospital, name)
    if hospital is not None and tenancy_onboarding.ANNOTATION in (hospital["metadata"].get("annotations") or {}):
        kube.merge_patch(Hospital, name, {"metadata": {"annotations": {tenancy_onboarding.ANNOTATION: None}}})


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


@router.get(
    "",
    response_model=HospitalList,
    summary="List hospitals",
    responses=problems.responses(400, 401, 410, 422),
)
def list_hospitals(
    kube: KubeDep,
    authz: Authz,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Most hospitals in the page.")] = 50,
    continue_: Annotated[
        str | None,
        Query(alias="continue", max_length=pagination.MAX_TOKEN_LENGTH, description="Token of the previous page."),
    ] = None,
    tier: Annotated[Tier | None, Query(description="Only hospitals of this tier.")] = None,
    consortium: Annotated[
        str | None,
        Query(max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN, description="Only members of this consortium."),
    ] = None,
    phase: Annotated[Phase | None, Query(description="Only hospitals whose status.phase is this.")] = None,
) -> HospitalList:
    """Hospitals the caller may see, filtered, a page at a time.

    A caller who may list hospitals sees all; anyone else sees the ones they
    may get (e.g. a hospital admin sees their own). A page may hold fewer
    than `limit` items and still have a `continue` token.
    """
    try:
        cursor = pagination.decode(continue_) if continue_ else None
    except ValueError as exc:
        raise ProblemError(400, "invalid-continue-token", "the continue token was not issued by this API") from exc
    may_list = authz.allowed("list", "hospitals")

    def keep(hospital: Manifest) -> bool:
        spec = hospital.get("spec") or {}
        if tier is not None and spec.get("tier") != tier.value:
            return False
        if consortium is not None and spec.get("consortium") != consortium:
            return False
        if phase is not None and (hospital.get("status") or {}).get("phase") != phase.value:
            return False
        return may_list or authz.allowed("get", "hospitals", name=str(hospital["metadata"]["name"]))

    def fetch(kube_continue: str | None, size: int) -> tuple[list[Manifest], str | None]:
        try:
            items, next_continue, _ = kube.list_page(Hospital, limit=size, continue_=kube_continue)
        except ApiException as exc:
            if exc.status == 400 and kube_continue:
                raise ProblemError(400, "invalid-continue-token", "the continue token is not valid") from exc
            raise
        return items, next_continue

    items, next_cursor = pagination.paginate(fetch, keep, limit, cursor, settings.list_scan_limit)
    token = pagination.encode(next_cursor) if next_cursor else None
    return HospitalList(items=[hospital_summary(h) for h in items], continue_=token)


@router.get(
    "/{name}",
    response_model=HospitalView,
    summary="A hospital across its layers",
    responses=problems.responses(401, 403, 404, 422),
)
def get_hospital(name: HospitalNameParam, kube: KubeDep, authz: Authz) -> HospitalView:
    """The tenant, its stores, gateways and apps with their conditions, and one overall readiness."""
    authorize_view(authz, name)
    view = load_view(kube, name)
    if view is None:
        raise not_found(f"hospital {name}")
    return view


# ---------------------------------------------------------------------------
# Changing
# ---------------------------------------------------------------------------


def _app_changes(
    kube: Kube, authz: Authorizer, namespace: str, body: HospitalPatch
) -> tuple[list[Manifest], list[Manifest], list[Manifest]]:
    """(to create, to replace, to delete) for a PATCH's apps, after checking names, references and rights."""
    assert body.apps is not None
    for plural in ("appinstances", "recordstores", "devicegateways"):
        authz.authorize("list", plural, namespace=namespace)
    errors = duplicate_name_errors("apps", [a.name for a in body.apps])
    stores = {str(o["metadata"]["name"]) for o in kube.list_all(RecordStore, namespace)}
    gateways = {str(o["metadata"]["name"]) for o in kube.list_all(DeviceGateway, namespace)}
    errors += app_reference_errors(body.apps, stores, gateways)
    if errors:
        raise invalid_request(errors)

    existing = {str(o["metadata"]["name"]): o for o in kube.list_all(AppInstance, namespace)}
    create, replace = [], []
    for app in body.apps:
        spec = spec_json(app.spec)
        current = existing.get(app.name)
        if current is None:
            authz.authorize("create", "appinstances", namespace=namespace)
            meta = {"name": app.name, "namespace": namespace, "labels": {CREATED_BY: FIELD_MANAGER}}
            create.append({"apiVersion": API_VERSION, "kind": "AppInstance", "metadata": meta, "spec": spec})
        elif normalize(AppInstance, current.get("spec") or {}) != spec:
            authz.authorize("update", "appinstances", namespace=namespace, name=app.name)
            replace.append({**current, "spec": spec})
    wanted = {a.name for a in body.apps}
    delete = [o for name, o in existing.items() if name not in wanted]
    for obj in delete:
        authz.authorize("delete", "appinstances", namespace=namespace, name=str(obj["metadata"]["name"]))
    return create, replace, delete


def _ref(obj: Manifest) -> ObjectRef:
    meta = obj["metadata"]
    return ObjectRef(kind=str(obj["kind"]), name=str(meta["name"]), namespace=meta.get("namespace"))


@router.patch(
    "/{name}",
    response_model=PatchResult,
    summary="Change quota, admins or apps",
    responses=problems.responses(400, 401, 403, 404, 409, 422),
)
def patch_hospital(name: HospitalNameParam, body: HospitalPatch, kube: KubeDep, authz: Authz) -> PatchResult:
    """Change the quota or admins of the Hospital, or the set of apps it runs.

    Every permission is checked before anything changes. The changes are
    then made in order (the Hospital, then apps); should one fail, the
    problem lists in `applied` the changes already made.
    """
    namespace = hospital_namespace(name)
    authz.authorize("get", "hospitals", name=name)
    hospital = kube.get(Hospital, name)
    if hospital is None:
        raise not_found(f"hospital {name}")

    # Only the fields the caller gave: the models' defaults must not reset the others.
    given = {
        "quota": body.quota.model_dump(mode="json", by_alias=True, exclude_unset=True) if body.quota else None,
        "admins": body.admins.model_dump(mode="json", by_alias=True, exclude_unset=True) if body.admins else None,
    }
    spec_patch: dict[str, Any] = {key: value for key, value in given.items() if value}
    if spec_patch:
        authz.authorize("patch", "hospitals", name=name)
    create, replace, delete = _app_changes(kube, authz, namespace, body) if body.apps is not None else ([], [], [])

    changed: list[ObjectRef] = []
    removed: list[ObjectRef] = []
    try:
        if spec_patch:
            kube.merge_patch(Hospital, name, {"spec": spec_patch})
            changed.append(ObjectRef(kind="Hospital", name=name))
        for obj in create:
            kube.create(AppInstance, obj)
            changed.append(_ref(obj))
        for obj in replace:
            kube.replace_spec(AppInstance, str(obj["metadata"]["name"]), namespace, obj["spec"])
            changed.append(_ref(obj))
        for obj in delete:
            kube.delete(AppInstance, str(obj["metadata"]["name"]), namespace)
            removed.append(_ref(obj))
    except ApiException as exc:
        cause = problems.from_kubernetes(exc)
        applied = [*changed, *removed]
        detail = cause.detail + (
            f"; already applied: {', '.join(f'{r.kind} {r.name}' for r in applied)}" if applied else ""
        )
        raise ProblemError(
            cause.status, cause.slug, detail, headers=cause.headers, errors=cause.errors, applied=applied
        ) from exc

    view = load_view(kube, name)
    if view is None:
        raise not_found(f"hospital {name}")
    return PatchResult(hospital=view, changed=changed, removed=removed)


@router.delete(
    "/{name}",
    status_code=202,
    response_model=Offboarding,
    summary="Offboard a hospital",
    responses=problems.responses(401, 403, 404, 409, 422),
)
def offboard_hospital(name: HospitalNameParam, kube: KubeDep, authz: Authz) -> Offboarding:
    """Delete the hospital's apps, gateways and then the Hospital; the operator removes the tenant.

    Refused with 409 while any RecordStore exists: records under retention
    outlive the hospital's offboarding. Delete each RecordStore first; its
    `deletionPolicy` decides whether its data is retained or crypto-shredded.
    """
    namespace = hospital_namespace(name)
    authz.authorize("delete", "hospitals", name=name)
    for kind in CHILD_KINDS:
        authz.authorize("list", kind.crd.plural, namespace=namespace)
    hospital = kube.get(Hospital, name)
    if hospital is None:
        raise not_found(f"hospital {name}")

    stores = kube.list_all(RecordStore, namespace)
    if stores:
        held = [
            {
                "name": s["metadata"]["name"],
                "recordClass": (s.get("spec") or {}).get("recordClass"),
                "retention": (s.get("spec") or {}).get("retention"),
                "deletionPolicy": (s.get("spec") or {}).get("deletionPolicy"),
            }
            for s in stores
        ]
        names = ", ".join(str(s["name"]) for s in held)
        raise ProblemError(
            409,
            "records-under-retention",
            f"hospital {name} still has {len(stores)} RecordStore(s) ({names}) holding records under retention; "
            "delete each RecordStore first (its deletionPolicy decides whether the data is retained or shredded), "
            "then offboard the hospital",
            recordStores=held,
        )

    children = [*kube.list_all(AppInstance, namespace), *kube.list_all(DeviceGateway, namespace)]
    for obj in children:
        plural = KINDS_BY_NAME[obj["kind"]].crd.plural
        authz.authorize("delete", plural, namespace=namespace, name=str(obj["metadata"]["name"]))
    deleted = []
    for obj in children:
        if kube.delete(KINDS_BY_NAME[obj["kind"]], str(obj["metadata"]["name"]), namespace):
            deleted.append(_ref(obj))
    kube.delete(Hospital, name, uid=str(hospital["metadata"]["uid"]))
    deleted.append(ObjectRef(kind="Hospital", name=name))
    return Offboarding(
        name=name,
        deleted=deleted,
        detail=f"offboarding of {name} started; the operator removes namespace {namespace} and the tenant's keys",
    )
