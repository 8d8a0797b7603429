"""How far each object of a hospital has come, and one overall readiness across the layers.

Pure functions over objects as the API server returns them, compared against
the models' own vocabulary (:class:`~medcloud.models.Phase`, the Ready condition). A component is
Ready only when its Ready condition is True *for its current spec*: a status
the operator wrote for an older generation says nothing about the spec the
city just changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medcloud.models import READY, ConditionStatus, Phase, hospital_namespace
from medcloud_api.schemas import ComponentView, ConditionView, HospitalSummary, HospitalView, Layer, Readiness, State

LAYERS: dict[str, Layer] = {
    "Hospital": "tenant",
    "RecordStore": "stores",
    "DeviceGateway": "gateways",
    "AppInstance": "apps",
}

LAYER_ORDER: dict[Layer, int] = {"tenant": 0, "stores": 1, "gateways": 2, "apps": 3}

_PHASE_STATES: dict[str, State] = {
    Phase.PENDING: "Pending",
    Phase.PROVISIONING: "Provisioning",
    Phase.READY: "Provisioning",  # a Ready phase without a current Ready condition is not ready yet
    Phase.DEGRADED: "Degraded",
    Phase.FAILED: "Failed",
    Phase.TERMINATING: "Terminating",
}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ready_condition(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == READY), None)


def judge(obj: Mapping[str, Any]) -> tuple[State, bool, str | None]:
    """(state, ready, message) of one object from its metadata and status."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    ready_condition = _ready_condition(conditions)
    message = (ready_condition or {}).get("message") or status.get("message") or None
    generation = _int(meta.get("generation"))
    observed = _int(status.get("observedGeneration"))
    condition_observed = _int((ready_condition or {}).get("observedGeneration"))
    current = generation is None or all(g is None or g >= generation for g in (observed, condition_observed))

    if meta.get("deletionTimestamp"):
        return "Terminating", False, message or "being deleted"
    phase = status.get("phase")
    if phase == Phase.FAILED:
        return "Failed", False, message
    if ready_condition is not None and ready_condition.get("status") == ConditionStatus.TRUE and current:
        return "Ready", True, message
    if phase in _PHASE_STATES:
        return _PHASE_STATES[phase], False, message
    if not status:
        return "Pending", False, message or "not yet seen by the operator"
    return "Provisioning", False, message


def component(obj: Mapping[str, Any]) -> ComponentView:
    kind = str(obj.get("kind") or "")
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    state, ready, message = judge(obj)
    return ComponentView(
        layer=LAYERS.get(kind, "tenant"),
        kind=kind,
        name=str(meta.get("name") or ""),
        namespace=meta.get("namespace"),
        state=state,
        ready=ready,
        phase=status.get("phase"),
        message=message,
        generation=_int(meta.get("generation")),
        observed_generation=_int(status.get("observedGeneration")),
        conditions=[ConditionView.model_validate(c) for c in status.get("conditions") or [] if isinstance(c, Mapping)],
        spec=dict(obj.get("spec") or {}),
    )


def overall(components: Sequence[ComponentView]) -> Readiness:
    """One readiness for a hospital: Ready only when every component is.

    Precedence: a tenant being deleted is Terminating; any failure makes the
    whole Failed; all ready is Ready; any degraded component Degraded; nothing
    seen by the operator yet is Pending; anything else Provisioning.
    """
    total = len(components)
    ready = [c for c in components if c.ready]
    waiting = [c for c in components if not c.ready]
    failed = [c for c in components if c.state == "Failed"]
    tenant = next((c for c in components if c.layer == "tenant"), None)

    state: State
    if tenant is not None and tenant.state == "Terminating":
        state, summary = "Terminating", f"{tenant.kind} {tenant.name} is being deleted"
    elif failed:
        state = "Failed"
        summary = "; ".join(f"{c.kind} {c.name} failed" + (f": {c.message}" if c.message else "") for c in failed)
    elif total and not waiting:
        state, summary = "Ready", f"all {total} components are ready"
    else:
        if any(c.state == "Degraded" for c in components):
            state = "Degraded"
        elif all(c.state == "Pending" for c in components):
            state = "Pending"
        else:
            state = "Provisioning"
        names = ", ".join(f"{c.kind} {c.name} ({c.state})" for c in waiting[:5])
        more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        summary = f"{len(ready)} of {total} ready; waiting for {names}{more}"
    return Readiness(state=state, ready=state == "Ready", summary=summary, ready_count=len(ready), total=total)


def hospital_view(
    hospital: Mapping[str, Any],
    stores: Iterable[Mapping[str, Any]],
    gateways: Iterable[Mapping[str, Any]],
    apps: Iterable[Mapping[str, Any]],
) -> HospitalView:
    """The aggregated view of a hospital across its layers."""
    name = str(hospital["metadata"]["name"])
    spec = hospital.get("spec") or {}
    tenant = component(hospital)
    layers = [[component(o) for o in objs] for objs in (stores, gateways, apps)]
    return HospitalView(
        name=name,
        display_name=spec.get("displayName"),
        institution_code=spec.get("institutionCode"),
        tier=spec.get("tier"),
        consortium=spec.get("consortium"),
        namespace=(hospital.get("status") or {}).get("namespace") or hospital_namespace(name),
        readiness=overall([tenant, *layers[0], *layers[1], *layers[2]]),
        tenant=tenant,
        stores=layers[0],
        gateways=layers[1],
        apps=layers[2],
    )


def hospital_summary(hospital: Mapping[str, Any]) -> HospitalSummary:
    spec = hospital.get("spec") or {}
    state, ready, _ = judge(hospital)
    return HospitalSummary(
        name=str(hospital["metadata"]["name"]),
        display_name=spec.get("displayName"),
        institution_code=spec.get("institutionCode"),
        tier=spec.get("tier"),
        consortium=spec.get("consortium"),
        phase=(hospital.get("status") or {}).get("phase"),
        state=state,
        ready=ready,
    )


class ProgressTracker:
    """Follows a hospital's components through watch events and says what changed.

    Until every kind has been listed once (``synced``) nothing is reported:
    a readiness computed from the Hospital alone would claim Ready too early.
    """

    def __init__(self, kinds: Iterable[str]) -> None:
        self.pending_kinds = set(kinds)
        self.components: dict[tuple[str, str], ComponentView] = {}
        self.last: Readiness | None = None

    @property
    def synced(self) -> bool:
        return not self.pending_kinds

    def sync(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> list[ComponentView]:
        """A full list of ``kind``: replaces what was known of it; returns the components that changed."""
        was_synced = self.synced
        self.pending_kinds.discard(kind)
        fresh = {(kind, str(o["metadata"]["name"])): component(o) for o in objects}
        changed = [view for key, view in fresh.items() if self._differs(key, view)]
        for key in [k for k in self.components if k[0] == kind and k not in fresh]:
            del self.components[key]
        self.components.update(fresh)
        if not self.synced:
            return []
        if not was_synced:
            # The first complete picture: every component, in layer order.
            return sorted(self.components.values(), key=lambda v: (LAYER_ORDER[v.layer], v.name))
        return changed

    def event(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> list[ComponentView]:
        """A watch event; returns the component if its state or readiness changed."""
        key = (kind, str(obj["metadata"]["name"]))
        if event_type == "DELETED":
            self.components.pop(key, None)
            view = component(obj).model_copy(update={"state": "Terminating", "ready": False, "message": "deleted"})
            return [view] if self.synced else []
        view = component(obj)
        changed = self._differs(key, view)
        self.components[key] = view
        return [view] if changed and self.synced else []

    def _differs(self, key: tuple[str, str], view: ComponentView) -> bool:
        old = self.components.get(key)
        return old is None or (old.state, old.ready, old.message) != (view.state, view.ready, view.message)

    def readiness(self) -> Readiness | None:
        """The overall readiness when it changed since last asked (None otherwise, or before sync)."""
        if not self.synced:
            return None
        current = overall(list(self.components.values()))
        if self.last is not None and (self.last.state, self.last.ready_count, self.last.total) == (
            current.state,
            current.ready_count,
            current.total,
        ):
            return None
        self.last = current
        return current

    def has_tenant(self) -> bool:
        return any(key[0] == "Hospital" for key in self.components)
