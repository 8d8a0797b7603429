"""A reconcile started from a watched body: no GET, and a status write the API server refuses once it is stale.

Kopf hands its create, update and resume handlers the body of the event behind them; the reconcile
starts from it instead of reading the object again (medcloud_operator.handlers.common.reconcile_object),
and its status write carries that body's resourceVersion (medcloud_operator.status.STATUS_PRECONDITION).
These tests run the frame against the session's real API server, with no operator in the module, so
nothing else writes the Hospital.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from medcloud.kube.client import HOSPITAL, Manifest
from medcloud.models import HospitalStatus, Phase
from medcloud_operator import metrics  # noqa: F401 - registers medcloud_stale_bodies_total
from medcloud_operator.context import OperatorContext
from medcloud_operator.handlers.common import reconcile_object
from medcloud_operator.kube import Kube
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.status import parse_status, write_status
from tests.operator_support import GROUP, VERSION


@pytest.fixture
def hospital(k8s_api_client: client.ApiClient, crds: None) -> Iterator[str]:
    """A Hospital no operator handles (none runs in this module)."""
    name = f"stale-{uuid.uuid4().hex[:6]}"
    spec = {
        "displayName": "Stale Body Clinic",
        "institutionCode": f"STL{uuid.uuid4().hex[:6].upper()}",
        "tier": "village",
    }
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Hospital", "metadata": {"name": name}, "spec": spec}
    custom = client.CustomObjectsApi(k8s_api_client)
    custom.create_cluster_custom_object(GROUP, VERSION, "hospitals", body)
    try:
        yield name
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "hospitals", name)


def hospital_gets(api: client.ApiClient) -> float:
    """The API server's count of GETs of single Hospitals so far (apiserver_request_total)."""
    text = api.rest_client.pool_manager.request("GET", api.configuration.host + "/metrics").data.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if labels.get("verb") == "GET" and labels.get("resource") == "hospitals" and not labels.get("subresource"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def stale_count() -> float:
    return REGISTRY.get_sample_value("medcloud_stale_bodies_total", {"kind": "Hospital"}) or 0.0


class Recorder:
    """A reconcile that writes a message into status and notes the resourceVersion of each body it was given."""

    def __init__(self, ctx: OperatorContext, name: str, message: str) -> None:
        self.ctx, self.name, self.message = ctx, name, message
        self.versions: list[str] = []

    def __call__(self, body: Manifest) -> None:
        self.versions.append(body["metadata"]["resourceVersion"])
        previous = parse_status(HospitalStatus, body.get("status"))
        new = previous.model_copy(update={"phase": Phase.PROVISIONING, "message": self.message})
        write_status(self.ctx.kube, HOSPITAL, self.name, previous, new)


def test_a_current_watched_body_is_reconciled_without_a_read(k8s_api_client: client.ApiClient, hospital: str) -> None:
    ctx = OperatorContext(OperatorSettings(), Kube(k8s_api_client))
    seen = ctx.kube.get(HOSPITAL, hospital)
    assert seen is not None
    gets, stale = hospital_gets(k8s_api_client), stale_count()
    recorder = Recorder(ctx, hospital, "from the watched body")
    reconcile_object(ctx, HOSPITAL, hospital, None, recorder, seen)
    assert recorder.versions == [seen["metadata"]["resourceVersion"]]
    assert hospital_gets(k8s_api_client) == gets
    assert stale_count() == stale
    assert (ctx.kube.get(HOSPITAL, hospital) or {})["status"]["message"] == "from the watched body"


def test_a_stale_watched_body_is_refused_at_its_status_write_and_reconciled_again_from_a_read(
    k8s_api_client: client.ApiClient, hospital: str
) -> None:
    ctx = OperatorContext(OperatorSettings(), Kube(k8s_api_client))
    seen = ctx.kube.get(HOSPITAL, hospital)
    assert seen is not None
    # Someone changes the Hospital after the event the reconcile starts from.
    touched: Any = ctx.kube.merge_patch(HOSPITAL, hospital, {"metadata": {"labels": {"medcloud.io/touched": "yes"}}})
    stale = stale_count()
    recorder = Recorder(ctx, hospital, "from a fresh read")
    reconcile_object(ctx, HOSPITAL, hospital, None, recorder, seen)
    assert recorder.versions == [seen["metadata"]["resourceVersion"], touched["metadata"]["resourceVersion"]]
    assert stale_count() == stale + 1
    live = ctx.kube.get(HOSPITAL, hospital) or {}
    assert live["status"]["message"] == "from a fresh read"
    assert live["metadata"]["labels"]["medcloud.io/touched"] == "yes"
