"""The compare step of apply for Deployments, Services, Ingresses and ConfigMaps (no cluster).

The API server completes these kinds with defaults and allocations. The
``served`` helpers add exactly what kube-apiserver 1.35 added to the
builders' output in the local cluster (see docs/operator.md), so these
tests check that a server-completed object is not drift while every hand
edit that matters is.
"""

from __future__ import annotations

import copy
from typing import Any

from medcloud.kube.client import CONFIG_MAP, DEPLOYMENT, INGRESS, SERVICE
from medcloud.models import AppInstanceSpec
from medcloud_operator.apply import covers, differences, merged
from medcloud_operator.builders import appinstance as app_b
from medcloud_operator.builders import workload as w
from medcloud_operator.settings import WorkloadSettings

Json = dict[str, Any]
NS = "hospital-riverton"


def children() -> dict[str, Json]:
    spec = AppInstanceSpec.model_validate(
        {
            "app": "emr-sharing",
            "version": "2.3.1",
            "replicas": 2,
            "recordStore": "emr",
            "exposure": {"host": "emr.riverton.example"},
            "config": {"language": "zh-CN"},
        }
    )
    owner = {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "AppInstance",
        "metadata": {"name": "emr", "namespace": NS, "uid": "u-1"},
    }
    objects = app_b.build_app(owner, spec, "emr-credentials", w.Ceiling(), WorkloadSettings())
    return {o["kind"]: o for o in objects}


def _bookkeeping(obj: Json) -> Json:
    live = copy.deepcopy(obj)
    live["metadata"].update({"resourceVersion": "7", "uid": "c-1", "generation": 1})
    return live


def served_deployment(desired: Json) -> Json:
    """The Deployment as the API server returns it: defaults added, zero values dropped, quantities canonical."""
    live = _bookkeeping(desired)
    live["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "1"
    spec = live["spec"]
    spec.update(
        {
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 10,
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}, "type": "RollingUpdate"},
        }
    )
    pod = spec["template"]["spec"]
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        del pod[host]  # Go omits a plain bool that is false
    pod.update(
        {
            "dnsPolicy": "ClusterFirst",
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
        }
    )
    for volume in pod["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["defaultMode"] = 420
    for container in pod["containers"]:
        container.update({"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            container[probe].update({"successThreshold": 1, "timeoutSeconds": 1})
        container["resources"]["limits"]["memory"] = "1024Mi"  # the same quantity, spelled otherwise
    live["status"] = {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2}
    return live


def served_service(desired: Json) -> Json:
    live = _bookkeeping(desired)
    live["spec"].update(
        {
            "clusterIP": "10.96.90.172",
            "clusterIPs": ["10.96.90.172"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None",
        }
    )
    return live


def test_a_server_completed_deployment_is_not_drift() -> None:
    desired = children()["Deployment"]
    assert differences(desired, served_deployment(desired), DEPLOYMENT) == []


def test_hand_edits_that_matter_are_drift() -> None:
    desired = children()["Deployment"]

    def edited(change: Any) -> list[str]:
        live = served_deployment(desired)
        change(live["spec"], live["spec"]["template"]["spec"])
        return differences(desired, live, DEPLOYMENT)

    def container(pod: Json) -> Json:
        return pod["containers"][0]  # type: ignore[no-any-return]

    assert edited(lambda spec, pod: pod.update({"hostNetwork": True})) == ["spec"]
    assert edited(lambda spec, pod: container(pod)["securityContext"].update({"privileged": True})) == ["spec"]
    assert edited(lambda spec, pod: container(pod)["securityContext"].update({"readOnlyRootFilesystem": False})) == [
        "spec"
    ]
    assert edited(lambda spec, pod: container(pod)["securityContext"]["capabilities"].pop("drop")) == ["spec"]
    assert edited(lambda spec, pod: pod["containers"].append({"name": "sidecar", "image": "busybox"})) == ["spec"]
    assert edited(lambda spec, pod: container(pod)["env"].pop()) == ["spec"]
    assert edited(lambda spec, pod: container(pod).update({"image": "evil/emr:latest"})) == ["spec"]
    assert edited(lambda spec, pod: spec.update({"replicas": 9})) == ["spec"]
    assert edited(lambda spec, pod: container(pod)["resources"]["limits"].update({"cpu": "16"})) == ["spec"]


def test_what_others_may_add_is_tolerated() -> None:
    desired = children()["Deployment"]
    live = served_deployment(desired)
    # `kubectl rollout restart` stamps the template; a tool adds a label to the Deployment.
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "2026-05-01T08:00:00Z"
    live["metadata"]["labels"]["team"] = "radiology"
    assert differences(desired, live, DEPLOYMENT) == []


def test_a_repair_puts_the_spec_back_whole_and_keeps_the_rest() -> None:
    desired = children()["Deployment"]
    live = served_deployment(desired)
    live["spec"]["template"]["spec"]["hostNetwork"] = True
    body = merged(desired, live, DEPLOYMENT)
    assert body["spec"] == desired["spec"]
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"


def test_a_service_with_its_cluster_ip_is_not_drift_but_a_changed_type_is() -> None:
    desired = children()["Service"]
    assert differences(desired, served_service(desired), SERVICE) == []
    live = served_service(desired)
    live["spec"]["type"] = "NodePort"
    live["spec"]["ports"][0]["nodePort"] = 31379
    assert differences(desired, live, SERVICE) == ["spec"]
    # The spec is put back whole; the API server keeps the cluster IP it allocated.
    assert merged(desired, live, SERVICE)["spec"] == desired["spec"]


def test_ingress_rules_are_compared_and_a_config_map_exactly() -> None:
    objects = children()
    ingress = _bookkeeping(objects["Ingress"])
    assert differences(objects["Ingress"], ingress, INGRESS) == []
    ingress["spec"]["rules"][0]["host"] = "phishing.example"
    assert differences(objects["Ingress"], ingress, INGRESS) == ["spec"]
    config = _bookkeeping(objects["ConfigMap"])
    assert differences(objects["ConfigMap"], config, CONFIG_MAP) == []
    config["data"]["debug"] = "true"
    assert differences(objects["ConfigMap"], config, CONFIG_MAP) == ["data"]


def test_an_empty_config_map_is_the_same_as_one_without_data() -> None:
    desired = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-x", "namespace": NS}, "data": {}}
    live = _bookkeeping(desired)
    del live["data"]  # what the API server returns for an empty map
    assert differences(desired, live, CONFIG_MAP) == []


def test_covers_semantics() -> None:
    assert covers({"a": 1}, {"a": 1, "b": 2})
    assert not covers({"a": 1}, {"a": 2})
    assert not covers([{"a": 1}], [{"a": 1}, {"a": 2}])
    # Go omits zero values of plain fields: absent matches false, 0 and "", nothing else.
    assert covers({"hostNetwork": False, "n": 0, "s": ""}, {})
    assert not covers({"hostNetwork": True}, {})
    assert not covers({"x": {"y": 1}}, {})
