"""Where the scenario finds each hospital's catalog apps on a cluster: from the Services the operator's own
builder makes for examples/'s AppInstances (no server; the pods themselves in test_dev_up_chart.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medcloud.kube.client import Manifest
from medcloud.models import AppInstanceSpec
from medcloud_cli.demo.podapps import app_urls
from medcloud_operator.builders.appinstance import build_service

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
# Every (hospital, app) a step of the scenario goes through (medcloud_cli.demo.scenario).
SCENARIO_APPS = {
    *(("county-people", a) for a in ("insurance-card", "exam-mutual-recognition", "referrals", "appointments")),
    ("county-people", "remote-consultation"),
    *(("village-willow", a) for a in ("insurance-card", "exam-mutual-recognition", "referrals", "appointments")),
    ("city-general", "exam-mutual-recognition"),
    ("city-general", "remote-consultation"),
}


def example_services() -> list[Manifest]:
    services = []
    docs = [d for path in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    for number, doc in enumerate(d for d in docs if d["kind"] == "AppInstance"):
        doc["metadata"]["uid"] = f"uid-{number}"  # what the API server gives the stored AppInstance
        service = build_service(doc, AppInstanceSpec.model_validate(doc["spec"]))
        service["spec"]["clusterIP"] = f"10.97.1.{number + 1}"  # what the API server assigns
        services.append(service)
    return services


def test_each_hospitals_apps_are_keyed_by_catalog_app_at_their_cluster_ip() -> None:
    services = example_services()
    urls = app_urls(services)
    assert len(urls) == len(services)
    assert set(urls) >= SCENARIO_APPS
    # The city's AppInstance "exam-results" is its exam-mutual-recognition app.
    (city_exam,) = (s for s in services if s["metadata"]["name"].endswith("exam-results"))
    assert urls["city-general", "exam-mutual-recognition"] == f"http://{city_exam['spec']['clusterIP']}:80"


def test_a_service_without_a_cluster_ip_is_no_app_address() -> None:
    service = example_services()[0]
    service["spec"]["clusterIP"] = "None"
    assert app_urls([service]) == {}


def test_two_instances_of_one_app_at_one_hospital_are_refused_by_name() -> None:
    service = example_services()[0]
    twin = copy.deepcopy(service)
    twin["metadata"]["name"] = "app-second"
    with pytest.raises(ValueError, match="twice"):
        app_urls([service, twin])
