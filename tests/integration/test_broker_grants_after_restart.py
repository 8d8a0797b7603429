"""A gateway deleted while no operator ran loses its broker grant when one runs again.

Its identity's client certificate stays valid until it expires, so the broker's ACL is what stops it reading
its hospital's readings; a deletion nobody watched must not leave the grant behind
(medcloud_operator.brokergrants). The operator runs for real against the session's API server, as in
test_device_enrolment.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.operator_support import GROUP, VERSION, bundle_acl, create_device_tenant, run_operator, sample
from tests.support import wait_for

pytestmark = [pytest.mark.minio]

NAMESPACE = f"hospital-grants-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def tenant(k8s_api_client: client.ApiClient) -> Iterator[str]:
    """A hospital namespace with the operator's Secret RoleBinding, as the Hospital tenancy leaves it."""
    create_device_tenant(k8s_api_client, NAMESPACE)
    try:
        yield NAMESPACE
    finally:
        client.CoreV1Api(k8s_api_client).delete_namespace(NAMESPACE)


def gateway(name: str) -> dict[str, object]:
    spec = {"protocols": ["mqtt"], "deviceClasses": ["spo2"], "recordStore": "vitals"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceGateway", "metadata": {"name": name}, "spec": spec}


def test_a_gateway_deleted_while_no_operator_ran_loses_its_grant_when_one_starts(
    k8s_api_client: client.ApiClient, store_operator_kubeconfig: Path, operator_env: dict[str, str], tenant: str
) -> None:
    custom = client.CustomObjectsApi(k8s_api_client)
    for name in ("gone", "kept"):
        custom.create_namespaced_custom_object(GROUP, VERSION, tenant, "devicegateways", gateway(name))
    gone, kept = f"user gw-gone.{tenant}\n", f"user gw-kept.{tenant}\n"
    with run_operator(store_operator_kubeconfig, operator_env, timeout=120):
        wait_for(lambda: gone in bundle_acl(k8s_api_client) and kept in bundle_acl(k8s_api_client), "both grants", 120)

    # No operator runs: the deletion is seen by nobody (the gateway has no finalizer to hold it).
    custom.delete_namespaced_custom_object(GROUP, VERSION, tenant, "devicegateways", "gone")
    with pytest.raises(ApiException) as missing:
        custom.get_namespaced_custom_object(GROUP, VERSION, tenant, "devicegateways", "gone")
    assert missing.value.status == 404
    assert gone in bundle_acl(k8s_api_client)

    with run_operator(store_operator_kubeconfig, operator_env, timeout=120) as running:
        wait_for(lambda: gone not in bundle_acl(k8s_api_client), "the outlived grant withdrawn", 120)
        assert kept in bundle_acl(k8s_api_client), "the existing gateway's grant is kept"
        withdrawn = wait_for(
            lambda: sample(running.metrics(), "medcloud_broker_grant_withdrawals_total", result="outlived") or None,
            "the withdrawal counted",
            30,
        )
        assert withdrawn >= 1
    custom.delete_namespaced_custom_object(GROUP, VERSION, tenant, "devicegateways", "kept")
