"""RFC 9457 problem documents: rendering, validation errors, Kubernetes answers, bugs (no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from medcloud_api.config import APISettings
from medcloud_api.main import create_app
from medcloud_api.problems import (
    MEDIA_TYPE,
    TITLES,
    ProblemError,
    from_kubernetes,
    kubernetes_causes,
    validation_errors,
)
from medcloud_api.schemas import HospitalCreate


def kube_error(status: int, body: dict[str, Any] | None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps(body) if body is not None else None
    return exc


@pytest.fixture
def app_client() -> TestClient:
    # No cluster: these requests never reach a route that talks to Kubernetes.
    app = create_app(APISettings(), api_client=client.ApiClient())

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("secret detail in a bug: /etc/medcloud/token")

    return TestClient(app, raise_server_exceptions=False)


def test_a_problem_has_the_rfc_9457_members_and_its_extensions() -> None:
    problem = ProblemError(409, "records-under-retention", "two stores remain", recordStores=[{"name": "emr"}])

    document = problem.to_document("/v1/hospitals/a")

    assert document == {
        "type": "https://medcloud.io/problems/records-under-retention",
        "title": TITLES["records-under-retention"],
        "status": 409,
        "detail": "two stores remain",
        "instance": "/v1/hospitals/a",
        "recordStores": [{"name": "emr"}],
    }


def test_an_unknown_problem_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown problem type"):
        ProblemError(400, "no-such-type", "x")


def test_validation_errors_name_each_field_with_a_pointer_and_never_echo_the_input() -> None:
    body = {"name": "Not A Label", "spec": {"displayName": "x", "institutionCode": "patient-zhang-san", "tier": "x"}}
    with pytest.raises(ValidationError) as info:
        HospitalCreate.model_validate(body)
    errors = validation_errors([{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()])

    by_field = {e.field: e for e in errors}
    assert set(by_field) == {"name", "spec.institutionCode", "spec.tier"}
    assert by_field["spec.institutionCode"].pointer == "#/spec/institutionCode"
    assert by_field["spec.institutionCode"].location == "body"
    assert "^[A-Z0-9]{6,24}$" in by_field["spec.institutionCode"].detail
    assert all("patient-zhang-san" not in e.detail for e in errors)


def test_a_query_parameter_error_has_no_body_pointer() -> None:
    (error,) = validation_errors([{"loc": ("query", "limit"), "msg": "Input should be less than or equal to 500"}])
    assert (error.field, error.location, error.pointer) == ("limit", "query", None)


def test_kubernetes_causes_point_into_the_part_of_the_request_that_made_the_object() -> None:
    exc = kube_error(
        422,
        {
            "kind": "Status",
            "message": 'RecordStore.medcloud.io "emr" is invalid: spec.retention.period: Invalid value',
            "reason": "Invalid",
            "details": {"causes": [{"field": "spec.sharing[0].category", "message": "Unsupported value"}]},
        },
    )

    (cause,) = kubernetes_causes(exc, ("recordStores", 2))
    assert cause.field == "spec.sharing[0].category"
    assert cause.pointer == "#/recordStores/2/spec/sharing/0/category"
    assert kubernetes_causes(exc)[0].pointer is None


@pytest.mark.parametrize(
    ("status", "expected", "slug"),
    [
        (400, 422, "rejected-by-kubernetes"),
        (422, 422, "rejected-by-kubernetes"),
        (404, 404, "not-found"),
        (409, 409, "conflict"),
        (410, 410, "expired-continue-token"),
        (403, 403, "kubernetes-forbidden"),
        (429, 503, "kubernetes-unavailable"),
        (500, 503, "kubernetes-unavailable"),
        (418, 502, "kubernetes-error"),
    ],
)
def test_kubernetes_answers_map_to_problems(status: int, expected: int, slug: str) -> None:
    problem = from_kubernetes(kube_error(status, {"kind": "Status", "message": "the server says no"}))
    assert (problem.status, problem.slug) == (expected, slug)


def test_a_kubernetes_error_without_a_status_body_still_has_a_detail() -> None:
    assert from_kubernetes(kube_error(409, None)).detail == "Reason"


def test_a_bug_is_a_500_problem_without_its_traceback(app_client: TestClient) -> None:
    response = app_client.get("/boom")

    assert response.status_code == 500
    assert response.headers["content-type"] == MEDIA_TYPE
    text = response.text
    for leak in ("Traceback", "secret detail", "RuntimeError"):
        assert leak not in text
    assert response.json()["type"].endswith("/internal-error")


def test_unknown_routes_and_methods_are_problems(app_client: TestClient) -> None:
    missing = app_client.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == MEDIA_TYPE
    assert missing.json()["detail"] == "no route /v2/nothing"

    wrong = app_client.put("/healthz")
    assert wrong.status_code == 405
    assert wrong.json()["title"] == TITLES["method-not-allowed"]
    assert "allow" in wrong.headers


def test_the_openapi_document_declares_problems_for_errors(app_client: TestClient) -> None:
    schema = app_client.get("/openapi.json").json()

    assert "Problem" in schema["components"]["schemas"]
    post = schema["paths"]["/v1/hospitals"]["post"]
    for status in ("401", "403", "409", "422"):
        assert list(post["responses"][status]["content"]) == [MEDIA_TYPE]
    body = post["requestBody"]["content"]["application/json"]
    assert {"township-profile", "county-custom"} <= set(body["examples"])
    assert schema["paths"]["/v1/hospitals"]["get"]["security"] == [{"KubernetesToken": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_healthz_needs_no_cluster_and_no_token(app_client: TestClient) -> None:
    response = app_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.fixture
def unreachable() -> TestClient:
    # A Kubernetes API that refuses connections: port 1 on loopback has no listener.
    configuration = client.Configuration(host="https://127.0.0.1:1")
    configuration.retries = False
    return TestClient(create_app(APISettings(kube_timeout_seconds=2), api_client=client.ApiClient(configuration)))


def test_readyz_says_the_kubernetes_api_is_unavailable(unreachable: TestClient) -> None:
    response = unreachable.get("/readyz")

    assert response.status_code == 503
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json()["type"].endswith("/kubernetes-unavailable")
    assert unreachable.get("/healthz").status_code == 200, "liveness does not depend on the cluster"


def test_a_token_that_cannot_be_checked_is_503_not_401(unreachable: TestClient) -> None:
    response = unreachable.get("/v1/hospitals", headers={"Authorization": "Bearer some-token"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "some-token" not in response.text
