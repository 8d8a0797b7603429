"""The compare step of apply: what counts as drift and what a repair writes (no cluster)."""

from __future__ import annotations

import copy
import threading
from typing import Any

from medcloud.kube.client import NAMESPACE, NETWORK_POLICY, RESOURCE_QUOTA, ROLE_BINDING
from medcloud_operator.apply import OwnWrites, differences, merged, normalize

DESIRED_QUOTA: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ResourceQuota",
    "metadata": {"name": "q", "namespace": "hospital-a", "labels": {"medcloud.io/hospital": "a"}},
    "spec": {"hard": {"requests.memory": "1024Mi", "pods": "10"}},
}


def live_of(desired: dict[str, Any], **extra_meta: Any) -> dict[str, Any]:
    """``desired`` as the API server returns it: defaults and bookkeeping added."""
    live = copy.deepcopy(desired)
    live["metadata"].update({"resourceVersion": "42", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"})
    live["metadata"].update(extra_meta)
    live["status"] = {"used": {"pods": "3"}}
    return live


def test_server_canonical_quantities_are_not_drift() -> None:
    live = live_of(DESIRED_QUOTA)
    live["spec"]["hard"]["requests.memory"] = "1Gi"
    assert differences(DESIRED_QUOTA, live, RESOURCE_QUOTA) == []


def test_an_edited_quota_is_drift() -> None:
    live = live_of(DESIRED_QUOTA)
    live["spec"]["hard"]["pods"] = "1000"
    assert differences(DESIRED_QUOTA, live, RESOURCE_QUOTA) == ["spec"]


def test_a_key_added_by_hand_to_an_owned_field_is_drift() -> None:
    live = live_of(DESIRED_QUOTA)
    live["spec"]["hard"]["services"] = "0"
    assert differences(DESIRED_QUOTA, live, RESOURCE_QUOTA) == ["spec"]


def test_foreign_labels_and_annotations_are_tolerated_but_missing_or_stale_owned_ones_are_not() -> None:
    live = live_of(DESIRED_QUOTA, annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"})
    live["metadata"]["labels"]["team"] = "radiology"
    assert differences(DESIRED_QUOTA, live, RESOURCE_QUOTA) == []
    live["metadata"]["labels"]["medcloud.io/consortium"] = "stale"
    assert differences(DESIRED_QUOTA, live, RESOURCE_QUOTA) == ["metadata.labels"]
    del live["metadata"]["labels"]["medcloud.io/hospital"]
    assert differences(DESIRED_QUOTA, live, RESOURCE_QUOTA) == ["metadata.labels"]


def test_empty_and_absent_compare_equal() -> None:
    desired = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}]}]}
    assert normalize(desired) == normalize({"policyTypes": ["Ingress"], "ingress": [{"from": [{}]}]})


def test_network_policy_rule_added_by_hand_is_drift() -> None:
    desired = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "hospital-a", "labels": {}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    live = live_of(desired)
    live["spec"]["ingress"] = [{}]  # "allow from everywhere"
    assert differences(desired, live, NETWORK_POLICY) == ["spec"]


def test_merged_restores_owned_parts_and_keeps_foreign_ones() -> None:
    live = live_of(DESIRED_QUOTA, annotations={"note": "kept"})
    live["metadata"]["labels"].update({"team": "radiology", "medcloud.io/consortium": "stale"})
    live["spec"]["hard"] = {"pods": "1000", "services": "0"}
    body = merged(DESIRED_QUOTA, live, RESOURCE_QUOTA)
    assert body["spec"] == DESIRED_QUOTA["spec"]
    assert body["metadata"]["labels"] == {"medcloud.io/hospital": "a", "team": "radiology"}
    assert body["metadata"]["annotations"] == {"note": "kept"}
    # resourceVersion travels with the PUT, so a concurrent edit fails instead of being overwritten.
    assert body["metadata"]["resourceVersion"] == "42"
    assert live["spec"]["hard"] == {"pods": "1000", "services": "0"}, "the live object is not mutated"


def test_namespace_compares_metadata_only() -> None:
    desired = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hospital-a", "labels": {"x": "1"}}}
    live = live_of(desired)
    live["spec"] = {"finalizers": ["kubernetes"]}
    assert differences(desired, live, NAMESPACE) == []


def test_role_binding_subject_changes_are_drift() -> None:
    desired = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "admin", "namespace": "hospital-a", "labels": {}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "admin"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "li"}],
    }
    live = live_of(desired)
    live["subjects"].append({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"})
    assert differences(desired, live, ROLE_BINDING) == ["subjects"]


def test_own_writes_recognise_the_echo_of_a_write_only() -> None:
    own = OwnWrites()
    own.record({"kind": "Role", "metadata": {"name": "r", "namespace": "n", "resourceVersion": "7"}})
    assert own.is_own("Role", "n", "r", "7")
    assert not own.is_own("Role", "n", "r", "8")
    assert not own.is_own("Role", "other", "r", "7")
    assert not own.is_own("Role", "n", "r", None)


def test_own_writes_forget_a_removed_tenant() -> None:
    own = OwnWrites()
    own.record({"kind": "Namespace", "metadata": {"name": "hospital-a", "resourceVersion": "1"}})
    own.record({"kind": "Role", "metadata": {"name": "r", "namespace": "hospital-a", "resourceVersion": "2"}})
    own.record({"kind": "Role", "metadata": {"name": "r", "namespace": "hospital-b", "resourceVersion": "3"}})
    own.forget_namespace("hospital-a")
    assert not own.is_own("Namespace", None, "hospital-a", "1")
    assert not own.is_own("Role", "hospital-a", "r", "2")
    assert own.is_own("Role", "hospital-b", "r", "3")


def test_own_writes_wait_for_a_write_in_flight_before_judging_its_echo() -> None:
    # The echo of a create can arrive before the create's response: judged only once the write is done.
    own = OwnWrites()
    answers: list[bool] = []
    started = threading.Event()

    def judge() -> None:
        started.set()
        answers.append(own.is_own("Role", "n", "r", "7", wait=60))

    with own.writing("Role", "n", "r"):
        assert own.in_flight("Role", "n", "r")
        judging = threading.Thread(target=judge)
        judging.start()
        started.wait()
        assert not answers  # still waiting: the write has not finished
        own.record({"kind": "Role", "metadata": {"name": "r", "namespace": "n", "resourceVersion": "7"}})
    judging.join()
    assert answers == [True]
    assert not own.in_flight("Role", "n", "r")
    assert not own.is_own("Role", "n", "r", "8", wait=60)  # nothing in flight: answered at once
