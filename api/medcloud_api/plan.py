"""From an onboarding request to the objects it stands for, and how they differ from what exists.

Pure functions: the router does the I/O. Specs are compared after a round
trip through the CRD models, so the defaults the API server fills in never
count as a difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from medcloud.models import (
    API_VERSION,
    AppInstance,
    AppInstanceSpec,
    DeviceGateway,
    DeviceGatewaySpec,
    Hospital,
    HospitalSpec,
    RecordStore,
    RecordStoreSpec,
    Resource,
    hospital_namespace,
)
from medcloud.tenancy import onboarding
from medcloud_api import FIELD_MANAGER
from medcloud_api.problems import FieldError, dotted, pointer
from medcloud_api.profiles import default_profile
from medcloud_api.schemas import (
    AppRequest,
    DeviceGatewayRequest,
    Difference,
    HospitalCreate,
    ObjectRef,
    RecordStoreRequest,
)

SPEC_MODELS: dict[type[Resource], type[BaseModel]] = {
    Hospital: HospitalSpec,
    RecordStore: RecordStoreSpec,
    DeviceGateway: DeviceGatewaySpec,
    AppInstance: AppInstanceSpec,
}

CREATED_BY = "app.kubernetes.io/created-by"

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Desired:
    """One object an onboarding request asks for."""

    kind: type[Resource]
    name: str
    namespace: str | None
    spec: dict[str, Any]
    body_path: Path
    """Where the object came from in the request body, for error pointers; () is the Hospital itself."""
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(kind=self.kind.__name__, name=self.name, namespace=self.namespace)

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.kind.__name__, self.namespace, self.name)

    def manifest(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "labels": {CREATED_BY: FIELD_MANAGER}}
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.namespace is not None:
            meta["namespace"] = self.namespace
        return {"apiVersion": API_VERSION, "kind": self.kind.__name__, "metadata": meta, "spec": self.spec}


@dataclass(frozen=True)
class Resolved:
    """A request with the tier's profile filled in where the caller left it to us."""

    name: str
    spec: HospitalSpec
    record_stores: tuple[RecordStoreRequest, ...]
    device_gateways: tuple[DeviceGatewayRequest, ...]
    apps: tuple[AppRequest, ...]
    from_profile: bool


def resolve(request: HospitalCreate) -> Resolved:
    """Apply the tier's default profile when the request names no stores, gateways or apps."""
    if not request.uses_profile():
        return Resolved(
            request.name,
            request.spec,
            tuple(request.record_stores or ()),
            tuple(request.device_gateways or ()),
            tuple(request.apps or ()),
            from_profile=False,
        )
    profile = default_profile(request.spec.tier)
    spec = request.spec
    if "quota" not in spec.model_fields_set:
        # The model's quota defaults suit a mid-size hospital; the tier knows better.
        spec = spec.model_copy(update={"quota": profile.quota})
    return Resolved(request.name, spec, profile.record_stores, profile.device_gateways, profile.apps, from_profile=True)


def spec_json(spec: BaseModel) -> dict[str, Any]:
    """A spec as the API server stores it: camelCase, defaults included, no nulls."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def normalize(kind: type[Resource], spec: Mapping[str, Any]) -> dict[str, Any]:
    """A stored spec as the model reads it, so server-side defaults and int-or-string values compare equal."""
    try:
        return spec_json(SPEC_MODELS[kind].model_validate(dict(spec)))
    except ValidationError:
        # Something the models no longer accept: compare it as stored.
        return dict(spec)


def reference_errors(resolved: Resolved) -> list[FieldError]:
    """Names that repeat, and references to stores or gateways the request does not create."""
    errors: list[FieldError] = []

    def error(path: Path, detail: str) -> None:
        errors.append(FieldError(field=dotted(path), detail=detail, pointer=pointer(path), location="body"))

    stores = [s.name for s in resolved.record_stores]
    gateways = [g.name for g in resolved.device_gateways]
    errors += duplicate_name_errors("recordStores", stores)
    errors += duplicate_name_errors("deviceGateways", gateways)
    errors += duplicate_name_errors("apps", [a.name for a in resolved.apps])
    for index, gateway in enumerate(resolved.device_gateways):
        if gateway.spec.record_store not in stores:
            error(("deviceGateways", index, "spec", "recordStore"), _missing("RecordStore", gateway.spec.record_store))
    errors.extend(app_reference_errors(resolved.apps, set(stores), set(gateways)))
    return errors


def duplicate_name_errors(field: str, names: Sequence[str]) -> list[FieldError]:
    """A name listed a second time in the request's list ``field``."""
    errors, seen = [], set()
    for index, name in enumerate(names):
        if name in seen:
            path: Path = (field, index, "name")
            errors.append(
                FieldError(field=dotted(path), detail=f"{name} is listed twice", pointer=pointer(path), location="body")
            )
        seen.add(name)
    return errors


def app_reference_errors(apps: Sequence[AppRequest], stores: set[str], gateways: set[str]) -> list[FieldError]:
    """Apps that name a store or gateway which is not there."""
    errors = []
    for index, app in enumerate(apps):
        if app.spec.record_store is not None and app.spec.record_store not in stores:
            path: Path = ("apps", index, "spec", "recordStore")
            detail = _missing("RecordStore", app.spec.record_store)
            errors.append(FieldError(field=dotted(path), detail=detail, pointer=pointer(path), location="body"))
        if app.spec.device_gateway is not None and app.spec.device_gateway not in gateways:
            path = ("apps", index, "spec", "deviceGateway")
            detail = _missing("DeviceGateway", app.spec.device_gateway)
            errors.append(FieldError(field=dotted(path), detail=detail, pointer=pointer(path), location="body"))
    return errors


def _missing(kind: str, name: str) -> str:
    return f"no {kind} named {name} in this hospital"


def build_plan(resolved: Resolved) -> list[Desired]:
    """The objects to create, in order: the Hospital, then stores, gateways (they need a store) and apps."""
    namespace = hospital_namespace(resolved.name)
    plan = []
    plan += [
        Desired(RecordStore, s.name, namespace, spec_json(s.spec), ("recordStores", i))
        for i, s in enumerate(resolved.record_stores)
    ]
    plan += [
        Desired(DeviceGateway, g.name, namespace, spec_json(g.spec), ("deviceGateways", i))
        for i, g in enumerate(resolved.device_gateways)
    ]
    plan += [
        Desired(AppInstance, a.name, namespace, spec_json(a.spec), ("apps", i)) for i, a in enumerate(resolved.apps)
    ]
    # The Hospital comes first and says what follows, so an onboarding that stops part-way is visibly incomplete.
    intended = onboarding.annotation_value((d.kind.__name__, d.name) for d in plan)
    hospital = Desired(
        Hospital, resolved.name, None, spec_json(resolved.spec), (), annotations={onboarding.ANNOTATION: intended}
    )
    return [hospital, *plan]


# ---------------------------------------------------------------------------
# Differences
# ---------------------------------------------------------------------------


def diff(requested: Any, existing: Any, path: str = "spec") -> list[tuple[str, Any, Any]]:
    """(path, requested, existing) for every leaf that differs; lists compare whole, dicts by key."""
    if isinstance(requested, Mapping) and isinstance(existing, Mapping):
        out = []
        for key in sorted(set(requested) | set(existing)):
            out += diff(requested.get(key), existing.get(key), f"{path}.{key}")
        return out
    if requested == existing:
        return []
    return [(path, requested, existing)]


def differences(desired: Desired, existing: Mapping[str, Any]) -> list[Difference]:
    """How an object that exists differs from what the request asks of it."""
    ref = desired.ref
    meta = existing.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return [
            Difference(
                object=ref, path="metadata.deletionTimestamp", requested=None, existing=meta["deletionTimestamp"]
            )
        ]
    stored = normalize(desired.kind, existing.get("spec") or {})
    return [
        Difference(object=ref, path=path, requested=want, existing=have)
        for path, want, have in diff(desired.spec, stored)
    ]


def conflicts(
    plan: Sequence[Desired], existing: Mapping[tuple[str, str | None, str], Mapping[str, Any] | None]
) -> list[Difference]:
    """Every difference between the plan and the objects of it that already exist."""
    out: list[Difference] = []
    for desired in plan:
        found = existing.get(desired.key)
        if found is not None:
            out += differences(desired, found)
    return out
