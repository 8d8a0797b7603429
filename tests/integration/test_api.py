"""The control API against the real local cluster, with the real operator reconciling Hospitals.

The API runs in-process under uvicorn on a loopback port, acting with the
admin kubeconfig (one test runs it with exactly deploy/api-rbac.yaml
instead). Callers are real service accounts with real tokens (TokenRequest);
their rights come from RBAC objects this module creates:

- ``city-admin``: a ClusterRole granting everything in medcloud.io;
- ``admin-a``: in Hospital A's ``spec.admins``, so the operator grants it
  get/watch on Hospital A alone (a ClusterRole with ``resourceNames``) and the
  tenant admin Role in A's namespace: a hospital admin sees and changes only
  their hospital;
- ``nobody``: authenticated, granted nothing.

The real operator (``medcloud_operator``, run by KopfRunner as its own
identity with the RBAC in deploy/: the ``operator`` fixture of
tests/integration/conftest.py) reconciles everything the API writes:
tenants, RecordStores (buckets on the real MinIO), DeviceGateways and
AppInstances (Deployments whose pods KWOK's fake nodes run). Every readiness
the tests see is the operator's; no test writes a status.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from medcloud.models import Tier
from medcloud.tenancy import onboarding
from medcloud_api.config import APISettings
from medcloud_api.main import create_app
from medcloud_api.plan import build_plan, resolve
from medcloud_api.profiles import default_profile
from medcloud_api.schemas import HospitalCreate
from medcloud_cli.commands.onboard import ServerSentEvent, iter_sse
from medcloud_cli.localcluster.process import free_port
from medcloud_cli.main import app as cli_app
from tests.operator_support import (
    GROUP,
    OPERATOR_NAMESPACE,
    PLURALS,
    REPO,
    SA_GROUPS,
    VERSION,
    ClusterAdmin,
    Json,
    RunningOperator,
    institution_code,
    is_ready,
)
from tests.support import fuzz, wait_for

pytestmark = pytest.mark.cluster

RUN = uuid.uuid4().hex[:5]
API_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:medcloud-api"
CALLERS_NAMESPACE = f"medcloud-api-test-{RUN}"
HOSPITAL_A, HOSPITAL_B = f"a-{RUN}", f"b-{RUN}"
PROBLEM = "application/problem+json"


# --------------------------------------------------------------------------- helpers


def sa_user(name: str) -> str:
    return f"system:serviceaccount:{CALLERS_NAMESPACE}:{name}"


def hospital_body(name: str, tier: str = "township", **extra: Any) -> Json:
    spec = {"displayName": f"Test {name}", "institutionCode": institution_code(name), "tier": tier}
    spec.update(extra.pop("spec", {}))
    return {"name": name, "spec": spec, **extra}


def store(name: str, record_class: str = "emr") -> Json:
    return {"name": name, "spec": {"recordClass": record_class, "retention": {"period": "30y"}}}


def app_entry(app: str, version: str = "1.0.0", **spec: Any) -> Json:
    return {"name": app, "spec": {"app": app, "version": version, **spec}}


class Admin(ClusterAdmin):
    """The cluster as its administrator sees it (the kubernetes client, never the API under test)."""

    def names(self, kind: str, namespace: str | None = None) -> list[str]:
        if namespace is None:
            listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURALS[kind])
        else:
            listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind])
        return sorted(o["metadata"]["name"] for o in listed["items"])

    def wait_gone(self, kind: str, name: str, namespace: str | None = None, timeout: float = 90) -> None:
        """Until the object is gone: the operator holds finalizers, so a deletion takes a moment."""
        wait_for(partial(self.gone, kind, name, namespace), f"{kind} {name} to be gone", timeout=timeout)

    def token(self, service_account: str) -> str:
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        response = self.core.create_namespaced_service_account_token(service_account, CALLERS_NAMESPACE, request)
        return str(response.status.token)

    def can(self, user: str, groups: list[str], verb: str, resource: str, group: str = GROUP, **attrs: str) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                resource_attributes=client.V1ResourceAttributes(group=group, resource=resource, verb=verb, **attrs),
            )
        )
        return bool(client.AuthorizationV1Api(self.api).create_subject_access_review(review).status.allowed)


@dataclass
class Caller:
    name: str
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app under uvicorn in a thread of this process, on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="medcloud-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the API server to start", timeout=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def read_stream(
    http: httpx.Client,
    caller: Caller,
    name: str,
    timeout: float,
    on_event: Callable[[ServerSentEvent], None] = lambda _: None,
) -> list[ServerSentEvent]:
    """Every event of a hospital's progress stream up to and including ``done``."""
    events = []
    with http.stream(
        "GET", f"/v1/hospitals/{name}/events", params={"timeout": timeout}, headers=caller.headers
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in iter_sse(response.iter_lines()):
            events.append(event)
            on_event(event)
            if event.event == "done":
                break
    return events


def problem(response: httpx.Response, status: int, type_suffix: str) -> Json:
    """The response's problem document, after checking it is one of the expected type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: Json = response.json()
    assert body["type"] == f"https://medcloud.io/problems/{type_suffix}", body
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


def refs(items: list[Json]) -> list[tuple[str, str]]:
    return [(r["kind"], r["name"]) for r in items]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def admin(k8s_api_client: client.ApiClient, crds: None) -> Admin:
    return Admin(k8s_api_client)


@pytest.fixture(scope="module")
def cleanup(admin: Admin, operator: RunningOperator) -> Iterator[set[str]]:
    """Names of Hospitals to offboard at the end, while the operator still runs (it holds their finalizers)."""
    names: set[str] = set()
    yield names
    for name in sorted(names):
        namespace = f"hospital-{name}"
        for kind in ("AppInstance", "DeviceGateway", "RecordStore"):
            with contextlib.suppress(ApiException):
                for child in admin.names(kind, namespace):
                    admin.delete(kind, child, namespace)
        admin.delete("Hospital", name)
    for name in sorted(names):
        wait_for(partial(admin.gone, "Hospital", name), f"Hospital {name} to be offboarded", timeout=120)


@pytest.fixture(scope="module")
def api_url(local_cluster: Any, operator: RunningOperator) -> Iterator[str]:
    settings = APISettings(kubeconfig=local_cluster.kubeconfig, namespace_wait_seconds=60, events_heartbeat_seconds=1)
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=httpx.Timeout(90.0)) as session:
        yield session


def _cluster_role(name: str, rules: list[Json]) -> Json:
    return {"metadata": {"name": name, "labels": {"medcloud.io/test-run": RUN}}, "rules": rules}


def _subject(service_account: str) -> list[Json]:
    return [{"kind": "ServiceAccount", "name": service_account, "namespace": CALLERS_NAMESPACE}]


@pytest.fixture(scope="module")
def callers(admin: Admin) -> Iterator[dict[str, Caller]]:
    """Service accounts with real tokens, and the RBAC that makes them city admin, admin of A, or nobody."""
    prefix = f"medcloud-api-test-{RUN}"
    admin.core.create_namespace({"metadata": {"name": CALLERS_NAMESPACE}})
    for sa in ("city-admin", "admin-a", "nobody"):
        admin.core.create_namespaced_service_account(CALLERS_NAMESPACE, {"metadata": {"name": sa}})
    # admin-a's rights are the operator's doing: it is in Hospital A's spec.admins (see ``tenants``).
    roles = {f"{prefix}-city-admin": [{"apiGroups": [GROUP], "resources": ["*"], "verbs": ["*"]}]}
    for name, rules in roles.items():
        admin.rbac.create_cluster_role(_cluster_role(name, rules))
    bindings = {f"{prefix}-city-admin": "city-admin"}
    for role, sa in bindings.items():
        admin.rbac.create_cluster_role_binding(
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": _subject(sa),
            }
        )
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{CALLERS_NAMESPACE}", "system:authenticated"]
    wait_for(lambda: admin.can(sa_user("city-admin"), groups, "create", "hospitals"), "city-admin's RBAC")
    try:
        yield {
            "none": Caller("none", None),
            "invalid": Caller("invalid", "not-a-token"),
            "nobody": Caller("nobody", admin.token("nobody")),
            "admin-a": Caller("admin-a", admin.token("admin-a")),
            "city-admin": Caller("city-admin", admin.token("city-admin")),
        }
    finally:
        for name in roles:
            with contextlib.suppress(ApiException):
                admin.rbac.delete_cluster_role_binding(name)
            with contextlib.suppress(ApiException):
                admin.rbac.delete_cluster_role(name)
        admin.core.delete_namespace(CALLERS_NAMESPACE)


@pytest.fixture(scope="module")
def tenants(http: httpx.Client, admin: Admin, callers: dict[str, Caller], cleanup: set[str]) -> dict[str, Json]:
    """Hospitals A (township) and B (village) onboarded by the city admin with their tiers' profiles.

    A names admin-a in ``spec.admins``: the operator binds it to the tenant admin Role in A's namespace and
    to a ClusterRole that reads Hospital A alone, which is all a hospital admin has.
    """
    admins = {"admins": {"users": [sa_user("admin-a")]}}
    bodies = {
        HOSPITAL_A: hospital_body(HOSPITAL_A, "township", spec=admins),
        HOSPITAL_B: hospital_body(HOSPITAL_B, "village"),
    }
    for name, body in bodies.items():
        cleanup.add(name)
        response = http.post("/v1/hospitals", json=body, headers=callers["city-admin"].headers)
        assert response.status_code == 201, response.text
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{CALLERS_NAMESPACE}", "system:authenticated"]
    namespace = f"hospital-{HOSPITAL_A}"
    wait_for(
        lambda: (
            admin.can(sa_user("admin-a"), groups, "get", "hospitals", name=HOSPITAL_A)
            and admin.can(sa_user("admin-a"), groups, "list", "appinstances", namespace=namespace)
        ),
        "the operator to grant admin-a Hospital A",
        timeout=120,
    )
    return bodies


# --------------------------------------------------------------------------- onboarding and progress


def test_a_township_clinic_onboards_in_one_request_and_reaches_ready_through_the_stream(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    name = f"maple-{RUN}"
    cleanup.add(name)
    city = callers["city-admin"]

    response = http.post("/v1/hospitals", json=hospital_body(name, "township"), headers=city.headers)

    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/hospitals/{name}"
    result = response.json()
    assert refs(result["created"]) == [
        ("Hospital", name),
        ("RecordStore", "emr"),
        ("RecordStore", "device-data"),
        ("DeviceGateway", "clinic"),
        ("AppInstance", "appointments"),
        ("AppInstance", "referrals"),
    ]
    assert result["unchanged"] == []
    # kubectl and the API agree: the objects are plain custom resources.
    namespace = f"hospital-{name}"
    assert admin.names("RecordStore", namespace) == ["device-data", "emr"]
    assert admin.get("Hospital", name)["spec"]["quota"]["cpu"] == "8", "the township quota of the profile"

    seen = read_stream(http, city, name, timeout=180)

    layers = [e.json() for e in seen if e.event == "layer"]
    initial = {(p["kind"], p["name"]) for p in layers[:6]}
    assert initial == {(r["kind"], r["name"]) for r in result["created"]}, "the stream opens with every component"
    history = {key: [p["state"] for p in layers if (p["kind"], p["name"]) == key] for key in initial}
    assert all(states[-1] == "Ready" for states in history.values()), history
    # The stream starts as soon as the objects exist: buckets, keys and pods take the operator longer.
    assert any(states[0] != "Ready" for states in history.values()), f"the stream showed no progress: {history}"

    readiness = [e.json() for e in seen if e.event == "readiness"]
    counts = [r["readyCount"] for r in readiness]
    assert counts == sorted(counts), "readiness only grows while nothing fails"
    assert (readiness[-1]["state"], readiness[-1]["total"]) == ("Ready", 6)
    assert seen[-1].event == "done"
    assert seen[-1].json()["result"] == "Ready"
    assert [int(e.id or 0) for e in seen] == list(range(1, len(seen) + 1))

    view = http.get(f"/v1/hospitals/{name}", headers=city.headers).json()
    assert view["readiness"]["ready"] is True
    assert view["namespace"] == namespace
    tenant_conditions = {c["type"]: c["status"] for c in view["tenant"]["conditions"]}
    assert tenant_conditions["NamespaceReady"] == "True", "conditions the operator wrote are shown as they are"
    assert [s["name"] for s in view["stores"]] == ["device-data", "emr"]
    assert [g["name"] for g in view["gateways"]] == ["clinic"]
    assert {a["name"] for a in view["apps"]} == {"appointments", "referrals"}


def test_the_stream_ends_with_failure_when_the_operator_cannot_realise_a_layer(
    http: httpx.Client, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    name = f"fail-{RUN}"
    cleanup.add(name)
    city = callers["city-admin"]
    # Valid for the CRDs, impossible for the tenant: a gateway pod may use more CPU than the whole quota.
    gateway = {
        "name": "wards",
        "spec": {"protocols": ["mqtt"], "deviceClasses": ["ecg"], "recordStore": "emr",
                 "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "4"}}},
    }  # fmt: skip
    body = hospital_body(name, "county", spec={"quota": {"cpu": "2"}}, recordStores=[store("emr")],
                         deviceGateways=[gateway], apps=[])  # fmt: skip
    assert http.post("/v1/hospitals", json=body, headers=city.headers).status_code == 201

    events = read_stream(http, city, name, timeout=120)

    done = events[-1].json()
    assert done["result"] == "Failed"
    assert done["detail"].startswith("DeviceGateway wards failed:")
    assert "above the cpu" in done["detail"], "the operator's own words reach the caller"
    failing = [e.json() for e in events if e.event == "layer" and e.json()["name"] == "wards"]
    assert failing[-1]["state"] == "Failed"


def test_the_stream_ends_with_timeout_when_a_layer_never_becomes_ready(
    http: httpx.Client, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    name = f"stuck-{RUN}"
    cleanup.add(name)
    city = callers["city-admin"]
    # A quota of no pods: the app's Deployment can never start one, which the operator calls Degraded.
    body = hospital_body(name, "county", spec={"quota": {"pods": 0}}, recordStores=[],
                         deviceGateways=[], apps=[app_entry("appointments")])  # fmt: skip
    assert http.post("/v1/hospitals", json=body, headers=city.headers).status_code == 201

    events = read_stream(http, city, name, timeout=8)

    done = events[-1].json()
    assert done["result"] == "Timeout"
    assert "not ready after 8s" in done["detail"]
    assert "waiting for AppInstance appointments" in done["detail"]


def test_a_client_that_goes_away_stops_the_watches_behind_its_stream(
    http: httpx.Client, callers: dict[str, Caller], tenants: dict[str, Json]
) -> None:
    def watchers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("progress-")]

    wait_for(lambda: not watchers(), "earlier streams' watches to end", timeout=30)
    with http.stream(
        "GET", f"/v1/hospitals/{HOSPITAL_A}/events", params={"timeout": 600}, headers=callers["city-admin"].headers
    ) as response:
        first = next(iter_sse(response.iter_lines()))
        assert first.event == "layer"
        assert len(watchers()) == 4, "one watch per kind"
    # Closed after one event of a ten-minute stream: the next heartbeat finds the
    # client gone, and each watch ends within its server-side slice.
    wait_for(lambda: not watchers(), "the stream's watches to stop", timeout=30)


def test_medcloud_onboard_shows_progress_until_ready(
    api_url: str, admin: Admin, callers: dict[str, Caller], cleanup: set[str], tmp_path: Path
) -> None:
    name = f"eastgate-{RUN}"
    cleanup.add(name)
    manifests = [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Hospital", "metadata": {"name": name},
         "spec": hospital_body(name, "community")["spec"]},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RecordStore", "metadata": {"name": "emr"},
         "spec": store("emr")["spec"]},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AppInstance", "metadata": {"name": "referrals"},
         "spec": {"app": "referrals", "version": "3.0.0", "recordStore": "emr"}},
    ]  # fmt: skip
    path = tmp_path / "hospital.yaml"
    path.write_text(yaml.safe_dump_all(manifests))

    token = callers["city-admin"].token
    result = CliRunner().invoke(
        cli_app, ["onboard", str(path), "--api", api_url, "--token", str(token), "--timeout", "180"]
    )

    assert result.exit_code == 0, result.output
    assert f"{name}: Ready" in result.output
    assert admin.get("AppInstance", "referrals", f"hospital-{name}") is not None


def test_medcloud_onboard_explains_a_refusal(api_url: str, callers: dict[str, Caller], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(hospital_body(f"bad-{RUN}", "township", spec={"institutionCode": "lower-case"})))

    result = CliRunner().invoke(
        cli_app, ["onboard", str(path), "--api", api_url, "--token", str(callers["city-admin"].token)]
    )

    assert result.exit_code == 1
    assert "spec.institutionCode" in result.output


# --------------------------------------------------------------------------- idempotency, conflict, partial failure


def test_repeating_an_onboarding_changes_nothing_and_a_conflicting_one_is_409_with_the_differences(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], tenants: dict[str, Json]
) -> None:
    city = callers["city-admin"]
    before = admin.get("Hospital", HOSPITAL_A)

    again = http.post("/v1/hospitals", json=tenants[HOSPITAL_A], headers=city.headers)

    assert again.status_code == 200, again.text
    assert again.json()["created"] == []
    assert len(again.json()["unchanged"]) == 6
    # The generation counts spec writes (the operator's status writes do not move it).
    assert admin.get("Hospital", HOSPITAL_A)["metadata"]["generation"] == before["metadata"]["generation"]

    changed = hospital_body(HOSPITAL_A, "township", spec={"displayName": "Renamed", "admins": {"users": ["li"]}})
    conflict = problem(http.post("/v1/hospitals", json=changed, headers=city.headers), 409, "conflict")

    assert [(d["object"]["kind"], d["path"], d["requested"], d["existing"]) for d in conflict["differences"]] == [
        ("Hospital", "spec.admins.users", ["li"], [sa_user("admin-a")]),
        ("Hospital", "spec.displayName", "Renamed", f"Test {HOSPITAL_A}"),
    ]
    assert "Nothing was changed" in conflict["detail"]
    assert admin.get("Hospital", HOSPITAL_A)["spec"]["displayName"] == f"Test {HOSPITAL_A}"


def test_an_institution_code_another_hospital_holds_is_409_and_nothing_is_written(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], tenants: dict[str, Json]
) -> None:
    taken = tenants[HOSPITAL_A]["spec"]["institutionCode"]
    name = f"dup-{RUN}"
    body = hospital_body(name, "township", spec={"institutionCode": taken})

    refused = problem(
        http.post("/v1/hospitals", json=body, headers=callers["city-admin"].headers), 409, "institution-code-taken"
    )

    assert taken in refused["detail"]
    assert HOSPITAL_A not in refused["detail"]  # the holder may be a Hospital the caller cannot see
    assert admin.get("Hospital", name) is None


def test_an_onboarding_interrupted_after_the_hospital_is_visibly_incomplete_until_repeated(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    name = f"crashed-{RUN}"
    body = hospital_body(name, "township")
    cleanup.add(name)
    # What the API had written when it died: the Hospital (first in the plan), and nothing after it.
    hospital = build_plan(resolve(HospitalCreate.model_validate(body)))[0].manifest()
    admin.custom.create_cluster_custom_object(GROUP, VERSION, "hospitals", hospital)

    def incomplete() -> Json | None:
        found = admin.get("Hospital", name) or {}
        conditions = {c["type"]: c for c in (found.get("status") or {}).get("conditions", [])}
        keyed = conditions.get("KeyReady", {}).get("status") == "True"
        return conditions.get("Onboarded") if keyed and "Onboarded" in conditions else None

    onboarded = wait_for(incomplete, "the operator to check the onboarding")
    assert (onboarded["status"], onboarded["reason"]) == ("False", "OnboardingIncomplete")
    assert "missing: RecordStore" in onboarded["message"]
    assert "repeat it" in onboarded["message"]
    assert admin.get("Hospital", name)["status"]["phase"] != "Ready"

    again = http.post("/v1/hospitals", json=body, headers=callers["city-admin"].headers)

    assert again.status_code == 201, again.text
    assert ("Hospital", name) in refs(again.json()["unchanged"])
    assert "RecordStore" in {kind for kind, _ in refs(again.json()["created"])}
    assert onboarding.ANNOTATION not in (admin.get("Hospital", name)["metadata"].get("annotations") or {})
    wait_for(lambda: is_ready(admin.get("Hospital", name)), "the Hospital to be Ready once complete", timeout=120)


def test_a_failure_part_way_rolls_back_everything_the_request_created(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    """The 4th object is refused by the API server itself (a ValidatingAdmissionPolicy), after 3 were created."""
    name, doomed = f"partial-{RUN}", f"doomed-{RUN}"
    cleanup.add(name)
    policies = client.AdmissionregistrationV1Api(admin.api)
    policy_name = f"medcloud-api-test-{RUN}-no-doomed-gateways"
    policies.create_validating_admission_policy(
        {
            "metadata": {"name": policy_name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {"apiGroups": [GROUP], "apiVersions": [VERSION], "operations": ["CREATE"],
                         "resources": ["devicegateways"]}
                    ]
                },
                "validations": [
                    {"expression": f"object.metadata.name != '{doomed}'", "message": "refused by the test's policy"}
                ],
            },
        }
    )  # fmt: skip
    policies.create_validating_admission_policy_binding(
        {"metadata": {"name": policy_name}, "spec": {"policyName": policy_name, "validationActions": ["Deny"]}}
    )
    gateway = {"name": doomed, "spec": {"protocols": ["https"], "deviceClasses": ["glucose"], "recordStore": "emr"}}

    def policy_active() -> bool:
        try:
            admin.custom.create_namespaced_custom_object(
                GROUP, VERSION, CALLERS_NAMESPACE, "devicegateways",
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceGateway",
                 "metadata": {"name": doomed}, "spec": gateway["spec"]},
                dry_run="All",
            )  # fmt: skip
        except ApiException as exc:
            return bool(exc.status == 422)
        return False

    try:
        wait_for(policy_active, "the admission policy to take effect")
        body = hospital_body(
            name,
            "county",
            recordStores=[store("emr"), store("device-data", "device-data")],
            deviceGateways=[gateway],
            apps=[app_entry("appointments")],
        )
        failure = problem(
            http.post("/v1/hospitals", json=body, headers=callers["city-admin"].headers), 422, "rejected-by-kubernetes"
        )
    finally:
        policies.delete_validating_admission_policy_binding(policy_name)
        policies.delete_validating_admission_policy(policy_name)

    assert failure["failed"] == {"kind": "DeviceGateway", "name": doomed, "namespace": f"hospital-{name}"}
    assert refs(failure["rolledBack"]) == [("RecordStore", "device-data"), ("RecordStore", "emr"), ("Hospital", name)]
    assert failure["remaining"] == []
    assert "refused by the test's policy" in failure["detail"]
    assert "were deleted" in failure["detail"]
    # Nothing half-made: the stores and the Hospital go (the operator finalizes them); no app was ever made.
    for store_name in ("emr", "device-data"):
        admin.wait_gone("RecordStore", store_name, f"hospital-{name}")
    assert admin.get("AppInstance", "appointments", f"hospital-{name}") is None
    admin.wait_gone("Hospital", name)


def test_request_errors_name_the_same_fields_and_rules_as_the_api_server(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller]
) -> None:
    body = hospital_body(f"invalid-{RUN}", "township", spec={"institutionCode": "abc123"})

    refused = problem(
        http.post("/v1/hospitals", json=body, headers=callers["city-admin"].headers), 422, "validation-failed"
    )

    (error,) = refused["errors"]
    assert (error["field"], error["pointer"], error["location"]) == (
        "spec.institutionCode",
        "#/spec/institutionCode",
        "body",
    )
    with pytest.raises(ApiException) as server:
        admin.custom.create_cluster_custom_object(
            GROUP, VERSION, "hospitals",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Hospital", "metadata": {"name": body["name"]},
             "spec": body["spec"]},
            dry_run="All",
        )  # fmt: skip
    message = json.loads(server.value.body)["message"]
    assert "spec.institutionCode" in message
    for rule in ("^[A-Z0-9]{6,24}$",):
        assert rule in error["detail"]
        assert rule in message


def test_references_to_objects_the_request_does_not_create_are_refused_before_anything_is_written(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller]
) -> None:
    name = f"refs-{RUN}"
    body = hospital_body(
        name, "county", recordStores=[store("emr")], apps=[app_entry("referrals", recordStore="scans")]
    )

    refused = problem(
        http.post("/v1/hospitals", json=body, headers=callers["city-admin"].headers), 422, "validation-failed"
    )

    assert refused["errors"] == [
        {"field": "apps[0].spec.recordStore", "detail": "no RecordStore named scans in this hospital",
         "pointer": "#/apps/0/spec/recordStore", "location": "body"}
    ]  # fmt: skip
    assert admin.get("Hospital", name) is None


# --------------------------------------------------------------------------- auth matrix


@dataclass(frozen=True)
class Cell:
    caller: str
    method: str
    path: str
    expected: int
    body: str | None = None

    @property
    def id(self) -> str:
        return f"{self.caller} {self.method} {self.path} -> {self.expected}"


def _matrix() -> list[Cell]:
    a, b = f"/v1/hospitals/{HOSPITAL_A}", f"/v1/hospitals/{HOSPITAL_B}"
    expected = {
        # (method, path, body):            none  invalid nobody admin-a city-admin
        ("GET", a, None):                  (401, 401, 403, 200, 200),
        ("GET", b, None):                  (401, 401, 403, 403, 200),
        ("GET", f"{a}/events", None):      (401, 401, 403, 200, 200),
        ("GET", f"{b}/events", None):      (401, 401, 403, 403, 200),
        ("PATCH", a, "apps-a"):            (401, 401, 403, 200, 200),
        ("PATCH", b, "apps-b"):            (401, 401, 403, 403, 200),
        ("PATCH", a, "quota"):             (401, 401, 403, 403, 200),
        ("POST", "/v1/hospitals", "a"):    (401, 401, 403, 403, 200),
        ("DELETE", a, None):               (401, 401, 403, 403, 409),
        ("GET", "/v1/hospitals", None):    (401, 401, 200, 200, 200),
        ("GET", "/v1/consortia", None):    (401, 401, 200, 200, 200),
    }  # fmt: skip
    callers = ("none", "invalid", "nobody", "admin-a", "city-admin")
    return [
        Cell(caller, method, path, statuses[i], body)
        for (method, path, body), statuses in expected.items()
        for i, caller in enumerate(callers)
    ]


MATRIX = _matrix()


def _body(kind: str | None, tenants: dict[str, Json]) -> Json | None:
    if kind is None:
        return None
    if kind == "a":
        return tenants[HOSPITAL_A]
    if kind == "quota":
        return {"quota": {"cpu": "8"}}  # the value it has: the cell is about the right, not the change
    tier = Tier.TOWNSHIP if kind == "apps-a" else Tier.VILLAGE
    # The apps the hospital already runs: a PATCH that is allowed changes nothing.
    return {"apps": [a.model_dump(mode="json", by_alias=True, exclude_none=True) for a in default_profile(tier).apps]}


@pytest.mark.parametrize("cell", MATRIX, ids=[c.id for c in MATRIX])
def test_auth_matrix(http: httpx.Client, callers: dict[str, Caller], tenants: dict[str, Json], cell: Cell) -> None:
    caller = callers[cell.caller]
    params = {"timeout": 1} if cell.path.endswith("/events") else None
    response = http.request(
        cell.method, cell.path, json=_body(cell.body, tenants), headers=caller.headers, params=params
    )

    if cell.expected == 401:
        problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    elif cell.expected == 403:
        body = problem(response, 403, "forbidden")
        assert sa_user(cell.caller) in body["detail"], "a 403 says who may not do what"
    elif cell.expected == 409:
        problem(response, 409, "records-under-retention")
    else:
        assert response.status_code == cell.expected, response.text
    if cell.expected == 200 and cell.path == "/v1/hospitals" and cell.method == "GET":
        listed = {h["name"] for h in response.json()["items"]}
        if cell.caller == "admin-a":
            assert listed == {HOSPITAL_A}, "a hospital admin sees only their hospital"
        elif cell.caller == "nobody":
            assert listed == set()
        else:
            assert {HOSPITAL_A, HOSPITAL_B} <= listed


def test_the_matrix_covers_every_caller_on_every_request() -> None:
    callers = {c.caller for c in MATRIX}
    assert callers == {"none", "invalid", "nobody", "admin-a", "city-admin"}
    assert len(MATRIX) == 5 * len({(c.method, c.path, c.body) for c in MATRIX})


def test_a_malformed_authorization_header_is_401(http: httpx.Client, tenants: dict[str, Json]) -> None:
    for header in ("Basic YWxpY2U6c2VjcmV0", "Bearer", "Token abc"):
        response = http.get(f"/v1/hospitals/{HOSPITAL_A}", headers={"Authorization": header})
        problem(response, 401, "unauthorized")


def test_a_hospital_admin_changes_their_apps_through_the_api(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], tenants: dict[str, Json]
) -> None:
    current = _body("apps-a", tenants)
    assert current is not None
    added = {"apps": [*current["apps"], app_entry("insurance-card", "1.0.4")]}

    response = http.patch(f"/v1/hospitals/{HOSPITAL_A}", json=added, headers=callers["admin-a"].headers)

    assert response.status_code == 200, response.text
    assert refs(response.json()["changed"]) == [("AppInstance", "insurance-card")]
    assert "insurance-card" in admin.names("AppInstance", f"hospital-{HOSPITAL_A}")

    back = http.patch(f"/v1/hospitals/{HOSPITAL_A}", json=current, headers=callers["admin-a"].headers)
    assert refs(back.json()["removed"]) == [("AppInstance", "insurance-card")]
    admin.wait_gone("AppInstance", "insurance-card", f"hospital-{HOSPITAL_A}")
    assert admin.names("AppInstance", f"hospital-{HOSPITAL_A}") == ["appointments", "referrals"]


# --------------------------------------------------------------------------- list, patch, delete


def test_listing_filters_by_tier_consortium_and_phase_and_pages_with_a_continue_token(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], tenants: dict[str, Json]
) -> None:
    city = callers["city-admin"].headers
    wait_for(lambda: (admin.get("Hospital", HOSPITAL_A).get("status") or {}).get("phase") == "Ready", "A Ready")

    townships = http.get("/v1/hospitals", params={"tier": "township"}, headers=city).json()["items"]
    assert HOSPITAL_A in {h["name"] for h in townships}
    assert HOSPITAL_B not in {h["name"] for h in townships}
    assert all(h["tier"] == "township" for h in townships)
    ready = http.get("/v1/hospitals", params={"phase": "Ready"}, headers=city).json()["items"]
    assert HOSPITAL_A in {h["name"] for h in ready}
    assert all(h["phase"] == "Ready" for h in ready)
    assert http.get("/v1/hospitals", params={"consortium": f"nowhere-{RUN}"}, headers=city).json()["items"] == []

    pages, token = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"continue": token} if token else {})}
        page = http.get("/v1/hospitals", params=params, headers=city).json()
        pages.append([h["name"] for h in page["items"]])
        token = page.get("continue")
        if not token:
            break
    # Other tests' hospitals may come and go meanwhile; A and B stay, and nothing repeats.
    paged = [n for p in pages for n in p]
    assert len(pages) >= 2
    assert all(len(p) == 1 for p in pages[:-1])
    assert paged == sorted(set(paged)), "every hospital once, in name order"
    assert {HOSPITAL_A, HOSPITAL_B} <= set(paged)

    invalid = http.get("/v1/hospitals", params={"continue": "forged"}, headers=city)
    problem(invalid, 400, "invalid-continue-token")
    too_many = http.get("/v1/hospitals", params={"limit": 10_000}, headers=city)
    assert problem(too_many, 422, "validation-failed")["errors"][0]["field"] == "limit"


def test_patch_changes_quota_admins_and_apps_and_only_what_is_given(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], cleanup: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    name = f"patch-{RUN}"
    cleanup.add(name)
    city = callers["city-admin"]
    body = hospital_body(name, "county", recordStores=[store("emr")], apps=[app_entry("appointments"),
                         app_entry("referrals", recordStore="emr")])  # fmt: skip
    assert http.post("/v1/hospitals", json=body, headers=city.headers).status_code == 201

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medcloud_api.audit"):
        response = http.patch(
            f"/v1/hospitals/{name}",
            json={
                "quota": {"cpu": "12"},
                "admins": {"users": ["wang.fang@example.org"]},
                "apps": [app_entry("appointments", "1.1.0", replicas=2), app_entry("insurance-card", "1.0.4")],
            },
            headers=city.headers,
        )

    assert response.status_code == 200, response.text
    result = response.json()
    assert refs(result["changed"]) == [
        ("Hospital", name),
        ("AppInstance", "insurance-card"),
        ("AppInstance", "appointments"),
    ]
    assert refs(result["removed"]) == [("AppInstance", "referrals")]
    spec = admin.get("Hospital", name)["spec"]
    assert spec["quota"]["cpu"] == "12"
    assert spec["quota"]["pods"] == 200, "quota fields not given are left alone"
    assert spec["admins"]["users"] == ["wang.fang@example.org"]
    appointments = admin.get("AppInstance", "appointments", f"hospital-{name}")
    assert (appointments["spec"]["version"], appointments["spec"]["replicas"]) == ("1.1.0", 2)
    admin.wait_gone("AppInstance", "referrals", f"hospital-{name}")
    assert admin.names("AppInstance", f"hospital-{name}") == ["appointments", "insurance-card"]
    assert result["hospital"]["apps"][0]["spec"]["version"] == "1.1.0", "the response shows the new state"

    # Only this test's PATCH: the operator's and other tests' requests share the process's log.
    audit_lines = [r.getMessage() for r in caplog.records if r.name == "medcloud_api.audit"]
    (line,) = [line for line in audit_lines if '"method":"PATCH"' in line]
    audit = json.loads(line)
    assert (audit["user"], audit["method"], audit["route"], audit["hospital"], audit["status"]) == (
        sa_user("city-admin"), "PATCH", "/v1/hospitals/{name}", name, 200,
    )  # fmt: skip
    assert "wang.fang" not in line, "no request bodies in the audit log"
    assert city.token not in line

    missing = http.patch(
        f"/v1/hospitals/{name}", json={"apps": [app_entry("referrals", recordStore="x")]}, headers=city.headers
    )
    assert problem(missing, 422, "validation-failed")["errors"][0]["pointer"] == "#/apps/0/spec/recordStore"
    nothing = http.patch(f"/v1/hospitals/{name}", json={}, headers=city.headers)
    problem(nothing, 422, "validation-failed")
    absent = http.patch(f"/v1/hospitals/nowhere-{RUN}", json={"quota": {"cpu": "1"}}, headers=city.headers)
    problem(absent, 404, "not-found")


def test_offboarding_is_refused_while_records_are_under_retention_then_removes_the_hospital(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    name = f"leave-{RUN}"
    cleanup.add(name)
    city = callers["city-admin"].headers
    body = hospital_body(name, "district", recordStores=[store("emr")], apps=[app_entry("appointments")])
    assert http.post("/v1/hospitals", json=body, headers=city).status_code == 201

    refused = problem(http.delete(f"/v1/hospitals/{name}", headers=city), 409, "records-under-retention")

    assert refused["recordStores"] == [
        {"name": "emr", "recordClass": "emr", "retention": {"mode": "COMPLIANCE", "period": "30y"},
         "deletionPolicy": "Retain"}
    ]  # fmt: skip
    assert "delete each RecordStore first" in refused["detail"]
    assert admin.get("Hospital", name) is not None
    assert admin.names("AppInstance", f"hospital-{name}") == ["appointments"], "a refusal changes nothing"

    admin.delete("RecordStore", "emr", f"hospital-{name}")
    admin.wait_gone("RecordStore", "emr", f"hospital-{name}")
    accepted = http.delete(f"/v1/hospitals/{name}", headers=city)

    assert accepted.status_code == 202, accepted.text
    assert refs(accepted.json()["deleted"]) == [("AppInstance", "appointments"), ("Hospital", name)]
    wait_for(lambda: admin.get("Hospital", name) is None, f"Hospital {name} to be offboarded by the operator", 60)
    problem(http.get(f"/v1/hospitals/{name}", headers=city), 404, "not-found")


# --------------------------------------------------------------------------- consortia


def test_consortia_list_members_and_what_they_share(
    http: httpx.Client, admin: Admin, callers: dict[str, Caller], tenants: dict[str, Json]
) -> None:
    name, ghost = f"alliance-{RUN}", f"ghost-{RUN}"
    admin.create(
        "Consortium",
        name,
        {
            "displayName": "Test Alliance",
            "leadHospital": HOSPITAL_A,
            "members": [HOSPITAL_A, HOSPITAL_B, ghost],
            "sharing": [
                {"category": "emr", "from": ["*"], "to": ["*"]},
                {"category": "device-data", "from": [HOSPITAL_B], "to": [HOSPITAL_A]},
            ],
        },
    )
    try:
        city = callers["city-admin"].headers
        listed = http.get("/v1/consortia", headers=city).json()["items"]
        assert {"name": name, "members": 3, "leadHospital": HOSPITAL_A}.items() <= next(
            c for c in listed if c["name"] == name
        ).items()

        detail = http.get(f"/v1/consortia/{name}", headers=city).json()
        members = {m["name"]: m for m in detail["memberDetails"]}
        assert members[HOSPITAL_A]["lead"] is True
        assert (members[HOSPITAL_A]["tier"], members[HOSPITAL_A]["exists"]) == ("township", True)
        assert members[ghost]["exists"] is False
        receives = {f["category"]: f["hospitals"] for f in members[HOSPITAL_A]["receives"]}
        assert receives == {"device-data": [HOSPITAL_B], "emr": sorted([HOSPITAL_B, ghost])}
        assert detail["sharing"][1] == {"category": "device-data", "from": [HOSPITAL_B], "to": [HOSPITAL_A],
                                        "requireConsent": True}  # fmt: skip

        member_list = http.get(f"/v1/consortia/{name}/members", headers=city).json()["items"]
        assert [m["name"] for m in member_list] == [HOSPITAL_A, HOSPITAL_B, ghost]

        problem(http.get(f"/v1/consortia/{name}", headers=callers["admin-a"].headers), 403, "forbidden")
        assert http.get("/v1/consortia", headers=callers["admin-a"].headers).json()["items"] == []
        problem(http.get(f"/v1/consortia/nowhere-{RUN}", headers=city), 404, "not-found")
    finally:
        admin.delete("Consortium", name)


# --------------------------------------------------------------------------- health, metrics


def test_probes_and_metrics_need_no_token(http: httpx.Client, tenants: dict[str, Json]) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["kubernetes"].startswith("v1.")

    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'medcloud_api_requests_total{method="POST",route="/v1/hospitals",status="201"}' in text
    assert 'medcloud_api_request_duration_seconds_bucket{le="0.1",method="GET",route="/readyz"}' in text
    assert HOSPITAL_A not in text, "hospital names never become label values"


# --------------------------------------------------------------------------- least privilege


def test_the_api_works_with_exactly_the_rbac_of_deploy_api_rbac(
    local_cluster: Any, admin: Admin, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    local_cluster.kubectl("apply", "-f", str(REPO / "deploy" / "api-rbac.yaml"))
    groups = SA_GROUPS
    kubeconfig = local_cluster.kubeconfig_for_user(API_USER, groups)
    wait_for(lambda: admin.can(API_USER, list(groups), "create", "hospitals"), "the API's RBAC")
    forbidden = [("list", "secrets", "", ""), ("create", "namespaces", "", ""), ("patch", "hospitals", GROUP, "status"),
                 ("impersonate", "users", "", "")]  # fmt: skip
    for verb, resource, group, sub in forbidden:
        assert not admin.can(API_USER, list(groups), verb, resource, group=group, subresource=sub), (
            f"the API may not {verb} {resource} {sub}"
        )

    name = f"lean-{RUN}"
    cleanup.add(name)
    city = callers["city-admin"].headers
    with (
        serve(create_app(APISettings(kubeconfig=kubeconfig, namespace_wait_seconds=60))) as url,
        httpx.Client(base_url=url, timeout=90) as lean,
    ):
        assert lean.get("/readyz").status_code == 200
        created = lean.post("/v1/hospitals", json=hospital_body(name, "village"), headers=city)
        assert created.status_code == 201, created.text
        assert lean.get(f"/v1/hospitals/{name}", headers=city).status_code == 200
        assert lean.get("/v1/hospitals", headers=city).status_code == 200
        assert lean.get("/v1/consortia", headers=city).status_code == 200
        apps = {"apps": [app_entry("appointments", "4.2.0")]}
        assert lean.patch(f"/v1/hospitals/{name}", json=apps, headers=city).status_code == 200
        assert lean.patch(f"/v1/hospitals/{name}", json={"quota": {"pods": 60}}, headers=city).status_code == 200
        events = read_stream(lean, callers["city-admin"], name, timeout=180)
        assert events[-1].json()["result"] == "Ready"
        problem(lean.delete(f"/v1/hospitals/{name}", headers=city), 409, "records-under-retention")
        for store_name in admin.names("RecordStore", f"hospital-{name}"):
            admin.delete("RecordStore", store_name, f"hospital-{name}")
            admin.wait_gone("RecordStore", store_name, f"hospital-{name}")
        assert lean.delete(f"/v1/hospitals/{name}", headers=city).status_code == 202


# --------------------------------------------------------------------------- probe: forged tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> Json:
    decoded: Json = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return decoded


def _signed(header: Json, claims: Json, key: rsa.RSAPrivateKey) -> str:
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def _forgeries(token: str, cluster_key: rsa.RSAPrivateKey) -> dict[str, str]:
    """Tokens made from a real one: re-signed as it is (the control), and changed one thing at a time."""
    header_text, claims_text, signature = token.split(".")
    header, claims = _unb64url(header_text), _unb64url(claims_text)
    stranger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    return {
        "resigned-as-issued": _signed(header, claims, cluster_key),
        "expired": _signed(header, {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}, cluster_key),
        "not-yet-valid": _signed(header, {**claims, "nbf": now + 3600, "iat": now + 3600}, cluster_key),
        "wrong-audience": _signed(header, {**claims, "aud": ["medcloud-keyservice"]}, cluster_key),
        "other-key": _signed(header, claims, stranger_key),
        "alg-none": f"{_b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{claims_text}.",
        "claims-swapped": f"{header_text}.{_b64url(json.dumps({**claims, 'sub': sa_user('city-admin')}).encode())}"
        f".{signature}",
        "truncated": token[: len(token) // 2],
        "garbage": "x" * 2048,
    }


def test_forged_expired_and_wrong_audience_tokens_are_401(
    http: httpx.Client, admin: Admin, local_cluster: Any, tenants: Json
) -> None:
    pki_dir = getattr(local_cluster, "pki_dir", None)
    if pki_dir is None:
        pytest.skip("needs the local cluster's service-account signing key")
    key = serialization.load_pem_private_key((Path(pki_dir) / "sa-signer.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    tokens = _forgeries(admin.token("nobody"), key)
    keyservice_token = admin.core.create_namespaced_service_account_token(
        "nobody",
        CALLERS_NAMESPACE,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=["medcloud-keyservice"], expiration_seconds=600)
        ),
    ).status.token

    # The control: the signing key really is the cluster's, so each refusal below is for what was changed.
    control = http.get("/v1/hospitals", headers={"Authorization": f"Bearer {tokens.pop('resigned-as-issued')}"})
    assert control.status_code == 200, control.text
    tokens["issued-for-the-key-service"] = str(keyservice_token)
    for case, token in tokens.items():
        response = http.get("/v1/hospitals", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (case, response.text)
        assert response.json()["type"].endswith("/unauthorized"), case
        assert token not in response.text, case


# --------------------------------------------------------------------------- probe: malformed requests

JSON_TYPE = {"Content-Type": "application/json"}


def _valid_onboarding(name: str) -> Json:
    return hospital_body(name, "village", recordStores=[], deviceGateways=[], apps=[])


MALFORMED: list[tuple[str, Callable[[str], bytes], int]] = [
    ("not-json", lambda _: b'{"name": ', 400),
    ("invalid-utf8", lambda n: json.dumps(_valid_onboarding(n)).encode().replace(b"Test", b"T\xff\xfe"), 400),
    ("empty", lambda _: b"", 422),
    ("array", lambda n: json.dumps([_valid_onboarding(n)]).encode(), 422),
    ("string", lambda _: b'"hospital"', 422),
    ("unknown-field", lambda n: json.dumps({**_valid_onboarding(n), "extra": 1}).encode(), 422),
    ("nul-display-name", lambda n: json.dumps(_patched(n, displayName="City\x00General")).encode(), 422),
    ("control-user", lambda n: json.dumps(_patched(n, admins={"users": ["li\x1bwei"]})).encode(), 422),
    ("cpu-1e309", lambda n: json.dumps(_patched(n, quota={"cpu": "1e309"})).encode(), 422),
    ("memory-sixty-nines", lambda n: json.dumps(_patched(n, quota={"memory": "9" * 60 + "Ei"})).encode(), 422),
    ("cpu-tiny", lambda n: json.dumps(_patched(n, quota={"cpu": "1e-309"})).encode(), 422),
    ("pods-negative", lambda n: json.dumps(_patched(n, quota={"pods": -1})).encode(), 422),
    ("pods-float", lambda n: json.dumps(_patched(n, quota={"pods": 1.5})).encode(), 422),
    ("pods-huge", lambda n: json.dumps(_patched(n, quota={"pods": 10**30})).encode(), 422),
    ("name-too-long", lambda n: json.dumps({**_valid_onboarding(n), "name": "x" * 300}).encode(), 422),
    ("name-uppercase", lambda n: json.dumps({**_valid_onboarding(n), "name": "Bad"}).encode(), 422),
    ("tier-unknown", lambda n: json.dumps(_patched(n, tier="metropolis")).encode(), 422),
    ("code-null", lambda n: json.dumps(_patched(n, institutionCode=None)).encode(), 422),
    ("deep-nesting", lambda n: json.dumps(_patched(n, quota=_nested(200))).encode(), 422),
    (
        "store-bad-retention",
        lambda n: json.dumps(
            {
                **_valid_onboarding(n),
                "recordStores": [{"name": "emr", "spec": {"recordClass": "emr", "retention": {"period": "30 years"}}}],
            }
        ).encode(),
        422,
    ),
]


def _patched(name: str, **spec: Any) -> Json:
    body = _valid_onboarding(name)
    body["spec"] = {**body["spec"], **spec}
    return body


def _nested(depth: int) -> Json:
    node: Json = {}
    for _ in range(depth):
        node = {"a": node}
    return node


@pytest.mark.parametrize(("case", "make", "status"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_onboarding_is_a_clean_problem_and_leaves_nothing(
    http: httpx.Client,
    admin: Admin,
    callers: dict[str, Caller],
    case: str,
    make: Callable[[str], bytes],
    status: int,
) -> None:
    name = f"bad-{case}-{RUN}"[:54]
    body = make(name)

    response = http.post("/v1/hospitals", content=body, headers={**JSON_TYPE, **callers["city-admin"].headers})

    problem(response, status, "validation-failed")
    assert "\x00" not in response.text
    assert "\\u0000" not in response.text
    assert admin.get("Hospital", name) is None


# --------------------------------------------------------------------------- schemathesis


SCHEMATHESIS_EXAMPLES = 15
"""Examples per operation and generation mode: a bounded run of a few minutes at most."""


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(
    local_cluster: Any, admin: Admin, callers: dict[str, Caller], cleanup: set[str]
) -> None:
    import schemathesis
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    headers = callers["city-admin"].headers
    before = set(admin.names("Hospital"))
    # The events stream of an existing hospital ends after 2 s whatever timeout is generated.
    api_settings = APISettings(
        kubeconfig=local_cluster.kubeconfig, namespace_wait_seconds=60, events_max_timeout_seconds=2
    )
    failures: list[str] = []
    calls: dict[str, int] = {}
    try:
        with serve(create_app(api_settings)) as url:
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            for result in schema.get_all_operations():
                operation = result.ok()
                label = operation.label
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    strategies = [operation.as_strategy(generation_mode=mode)]
                    if mode is GenerationMode.POSITIVE:
                        strategies += schema.get_strategies_from_examples(operation)

                    def send(case: Any, label: str = label) -> None:
                        calls[label] = calls.get(label, 0) + 1
                        case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=120)

                    try:
                        fuzz(st.one_of(*strategies), send, SCHEMATHESIS_EXAMPLES)
                    except Unsatisfiable:
                        # An operation without parameters or body has no invalid input to send.
                        assert mode is GenerationMode.NEGATIVE, label
                    except Exception as exc:  # collect every operation's failure, then report all
                        failures.append(f"{label} ({mode.value}):\n{exc}")
    finally:
        cleanup.update(set(admin.names("Hospital")) - before)
    assert not failures, "\n\n".join(failures)
    assert len(calls) == 17, f"every operation is exercised: {sorted(calls)}"
    assert sum(calls.values()) > 17 * SCHEMATHESIS_EXAMPLES, calls
