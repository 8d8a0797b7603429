"""Where each hospital's catalog apps answer on a cluster: the Services the operator makes for AppInstances.

On ``medcloud dev up`` in chart mode the apps are pods on the real node and their Services' ClusterIPs
are reachable from the machine through kube-proxy (the tenants' policies admit traffic from the node
itself, as they do the kubelet's probes), so the scenario can go through the very pods
``kubectl apply -f examples/`` made, keyed like ``app_desks`` wants: ``(hospital, catalog app)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from kubernetes import client

from medcloud.kube.client import Manifest
from medcloud.tenancy import labels
from medcloud_operator.builders import appinstance, workload

APP_SERVICES = f"{labels.COMPONENT}={appinstance.COMPONENT}"
"""Label selector of the AppInstances' Services (the operator's children, one per AppInstance)."""


def app_urls(services: Iterable[Manifest]) -> dict[tuple[str, str], str]:
    """``(hospital, catalog app) -> http://ClusterIP:port`` of each AppInstance's Service.

    Keyed by the catalog app (``app.kubernetes.io/name``), not the AppInstance's name: the city's
    ``exam-results`` is its ``exam-mutual-recognition``. Two instances of one app at one hospital
    leave the driver no choice to make, so they are refused by name.
    """
    urls: dict[tuple[str, str], str] = {}
    owners: dict[tuple[str, str], str] = {}
    for service in services:
        meta, spec = service["metadata"], service.get("spec", {})
        tags = meta.get("labels", {})
        hospital, app = tags.get(labels.HOSPITAL), tags.get(workload.NAME_LABEL)
        address = spec.get("clusterIP")
        ports = [p["port"] for p in spec.get("ports", []) if p.get("name") == appinstance.HTTP_PORT_NAME]
        if not hospital or not app or not ports or address in (None, "", "None"):
            continue
        key = (hospital, app)
        if key in urls:
            raise ValueError(
                f"{hospital} runs {app} twice ({owners[key]} and {meta['name']}): the scenario needs one of each"
            )
        urls[key] = f"http://{address}:{ports[0]}"
        owners[key] = meta["name"]
    return urls


def cluster_app_urls(api: client.ApiClient) -> dict[tuple[str, str], str]:
    """``app_urls`` of every AppInstance Service on the cluster ``api`` talks to."""
    found = client.CoreV1Api(api).list_service_for_all_namespaces(label_selector=APP_SERVICES)
    return app_urls(api.sanitize_for_serialization(item) for item in found.items)  # type: ignore[no-untyped-call]
