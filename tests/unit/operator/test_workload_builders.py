"""AppInstance, DeviceGateway and Consortium builders: resources in, manifests and status out (no cluster)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from medcloud.models import (
    AppInstanceSpec,
    AppInstanceStatus,
    CatalogApp,
    ConditionStatus,
    ConsortiumSpec,
    ConsortiumStatus,
    DeviceGatewaySpec,
    DeviceGatewayStatus,
    Phase,
    Reason,
    WorkloadReason,
)
from medcloud.models.common import parse_quantity
from medcloud.tenancy.store import credentials_secret_name
from medcloud_gateway.settings import GatewaySettings
from medcloud_operator import catalog
from medcloud_operator import membership as cons_b
from medcloud_operator.builders import appinstance as app_b
from medcloud_operator.builders import devicegateway as gw_b
from medcloud_operator.builders import workload as w
from medcloud_operator.catalog import CATALOG, AppWithoutImageError, app_image, gateway_image, require_published
from medcloud_operator.handlers.workload import UNREALISABLE, classify
from medcloud_operator.settings import OperatorSettings, WorkloadSettings
from medcloud_operator.status import Check, dump

NS = "hospital-riverton"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
Json = dict[str, Any]


# What the store's credentials Secret adds to a gateway's environment (envFrom), as COSI writes it.
STORE_CREDENTIALS = {
    "COSI_S3_ENDPOINT": "http://10.89.0.1:9000",
    "COSI_S3_BUCKET_ID": "b",
    "COSI_S3_ACCESS_KEY_ID": "k",
    "COSI_S3_ACCESS_SECRET_KEY": "s",
}


def _gateway_reads(container: Json) -> GatewaySettings:
    """The settings the gateway reads from what the operator wrote into its container, plus the store's Secret."""
    env = {e["name"]: e["value"] for e in container["env"]}
    return GatewaySettings.model_validate({**env, **STORE_CREDENTIALS})


def body(kind: str, name: str, spec: Json, namespace: str = NS) -> Json:
    return {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def app_spec(**overrides: Any) -> AppInstanceSpec:
    raw: Json = {"app": "emr-sharing", "version": "2.3.1", "replicas": 2, "recordStore": "emr"}
    raw.update(overrides)
    return AppInstanceSpec.model_validate(raw)


def gw_spec(**overrides: Any) -> DeviceGatewaySpec:
    raw: Json = {"protocols": ["mqtt", "https"], "deviceClasses": ["ecg", "spo2"], "recordStore": "device-data"}
    raw.update(overrides)
    return DeviceGatewaySpec.model_validate(raw)


def app_children(
    spec: AppInstanceSpec, name: str = "emr", *, ceiling: w.Ceiling | None = None, **settings: Any
) -> list[Json]:
    return app_b.build_app(
        body("AppInstance", name, spec.model_dump(by_alias=True, exclude_none=True)),
        spec,
        credentials_secret_name(spec.record_store) if spec.record_store else None,
        ceiling or w.Ceiling(),
        WorkloadSettings(**settings),
    )


def build_app(spec: AppInstanceSpec, name: str = "emr", *, ceiling: w.Ceiling | None = None, **settings: Any) -> Json:
    """The children by kind; of two RoleBindings, the exchange-client one (named after the app)."""
    objects = app_children(spec, name, ceiling=ceiling, **settings)
    return {o["kind"]: o for o in reversed(objects)}


def build_gw(
    spec: DeviceGatewaySpec, name: str = "wards", *, ceiling: w.Ceiling | None = None, **settings: Any
) -> Json:
    objects = gw_b.build_gateway(
        body("DeviceGateway", name, spec.model_dump(by_alias=True, exclude_none=True)),
        spec,
        credentials_secret_name(spec.record_store),
        ceiling or w.Ceiling(),
        WorkloadSettings(**settings),
    )
    return {o["kind"]: o for o in objects}


def pod(deployment: Json) -> Json:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- Pod Security "restricted"

# The volume types the restricted profile admits.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod_spec: Json) -> list[str]:
    """What the Pod Security Standards' ``restricted`` profile (baseline included) would refuse in a pod spec."""
    found = []
    pod_ctx = pod_spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(host):
            found.append(host)
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
    for container in pod_spec["containers"]:
        ctx = container.get("securityContext") or {}
        where = container["name"]
        if ctx.get("privileged"):
            found.append(f"{where}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation must be false")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            found.append(f"{where}: runAsNonRoot must be true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile {seccomp}")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: adds capabilities")
        if any(p.get("hostPort") for p in container.get("ports") or []):
            found.append(f"{where}: hostPort")
    return found


def test_the_checker_catches_what_restricted_refuses() -> None:
    # The checker must be able to fail, or the tests below prove nothing.
    deployment = build_app(app_spec())["Deployment"]
    spec = pod(deployment)
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
    ctx = spec["containers"][0]["securityContext"]
    ctx["allowPrivilegeEscalation"] = True
    ctx["capabilities"] = {"add": ["SYS_ADMIN"]}
    del ctx["runAsNonRoot"]
    del spec["securityContext"]["runAsNonRoot"]
    del ctx["seccompProfile"]
    del spec["securityContext"]["seccompProfile"]
    assert len(restricted_violations(spec)) == 7


@pytest.mark.parametrize("app", list(CatalogApp))
def test_every_catalog_app_runs_restricted(app: CatalogApp) -> None:
    needs_store = CATALOG[app].needs_record_store
    spec = app_spec(app=app.value, recordStore="emr" if needs_store else None, deviceGateway="wards")
    assert restricted_violations(pod(build_app(spec)["Deployment"])) == []


def test_the_gateway_runs_restricted() -> None:
    assert restricted_violations(pod(build_gw(gw_spec(protocols=["mqtt", "https", "hl7v2"]))["Deployment"])) == []


def test_pods_hold_no_api_token_and_write_only_to_scratch_space() -> None:
    spec = pod(build_app(app_spec())["Deployment"])
    assert spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["privileged"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/medcloud/config"]["readOnly"] is True
    assert "/tmp" in mounts


# --------------------------------------------------------------------------- catalog and images


def test_the_catalog_covers_every_app_with_limits_at_least_the_requests() -> None:
    assert set(CATALOG) == set(CatalogApp)
    for entry in CATALOG.values():
        assert parse_quantity(entry.limits.cpu) >= parse_quantity(entry.requests.cpu)
        assert parse_quantity(entry.limits.memory) >= parse_quantity(entry.requests.memory)
    assert CATALOG[CatalogApp.EMR_SHARING].needs_record_store
    assert not CATALOG[CatalogApp.APPOINTMENTS].needs_record_store


def test_every_catalog_app_is_medclouds_code_and_runs_medclouds_image_with_its_args() -> None:
    assert gateway_image(WorkloadSettings(gateway_version="1.2.0")) == "registry.medcloud.local/medcloud:1.2.0"
    settings = {"own_image": "harbor.city.example/medcloud/medcloud:0.2.0"}
    for app in CatalogApp:
        entry = CATALOG[app]
        assert (entry.args, entry.exchange_client) == (("app", app.value), True)
        # The version stays on the labels; the code is the image's, whatever the version says.
        deployment = build_app(app_spec(app=app.value, version="9.9.9+b.1"), name=app.value, **settings)["Deployment"]
        container = pod(deployment)["containers"][0]
        assert container["image"] == "harbor.city.example/medcloud/medcloud:0.2.0"
        assert container["args"] == ["app", app.value]
        assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "9.9.9_b.1"


def test_an_exchange_client_app_holds_its_own_identity_and_tokens_and_may_reach_the_exchange_only() -> None:
    children = build_app(app_spec(app="referrals"), name="referrals", exchange_namespace="mc")
    spec = pod(children["Deployment"])
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "app-referrals"
    (tokens,) = [v for v in spec["volumes"] if "projected" in v]
    audiences = [t["serviceAccountToken"]["audience"] for t in tokens["projected"]["sources"]]
    assert audiences == ["medcloud-exchange", "medcloud-keyservice"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MEDCLOUD_EXCHANGE_TOKEN_FILE"] == "/var/run/secrets/medcloud/exchange-token"
    assert children["ServiceAccount"]["automountServiceAccountToken"] is False
    binding = children["RoleBinding"]
    assert binding["metadata"]["namespace"] == NS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "medcloud-exchange-client",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "app-referrals", "namespace": NS}]
    policy = children["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == children["Deployment"]["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Egress"]
    assert policy["egress"] == [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mc"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "exchange"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8090}],
        }
    ]
    kinds = [
        o["kind"]
        for o in app_b.build_app(
            body("AppInstance", "referrals", {}), app_spec(app="referrals"), None, w.Ceiling(), WorkloadSettings()
        )
    ]
    assert kinds.index("ServiceAccount") < kinds.index("RoleBinding") < kinds.index("Deployment")


def test_an_app_without_medclouds_code_runs_only_when_its_image_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    for app in CatalogApp:
        require_published(app, WorkloadSettings())  # every shipped app is MedCloud's own code: always there
    # A catalog entry with no code of MedCloud's (no args) needs its published image.
    without_code = {**CATALOG, CatalogApp.REFERRALS: dataclasses.replace(CATALOG[CatalogApp.REFERRALS], args=())}
    monkeypatch.setattr(catalog, "CATALOG", MappingProxyType(without_code))
    with pytest.raises(AppWithoutImageError, match="referrals has no published image"):
        require_published(CatalogApp.REFERRALS, WorkloadSettings())
    monkeypatch.setenv("MEDCLOUD_PUBLISHED_APPS", '["referrals"]')
    require_published(CatalogApp.REFERRALS, OperatorSettings())
    assert (
        app_image(CatalogApp.REFERRALS, "3.0.0", WorkloadSettings()) == "registry.medcloud.local/apps/referrals:3.0.0"
    )


def test_an_app_without_an_image_is_refused_for_good_and_fails() -> None:
    failure = classify(AppWithoutImageError("the catalog app referrals has no published image"))
    assert (failure.reason, failure.permanent) == (WorkloadReason.APP_NOT_IN_CATALOG_IMAGE, True)
    assert failure.reason in UNREALISABLE
    status = app_status(AppInstanceStatus(), failure=failure.check, spec_failed=True)
    assert conditions(status)["Ready"] == ("False", "AppNotInCatalogImage")
    assert conditions(status)["Available"] == ("False", "AppNotInCatalogImage")
    assert status.phase is Phase.FAILED
    assert not status.is_ready()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLOUD_APP_IMAGE_PREFIX", "registry.example/apps")
    monkeypatch.setenv("MEDCLOUD_GATEWAY_VERSION", "9.9.9")
    settings = OperatorSettings()
    assert (settings.app_image_prefix, settings.gateway_version) == ("registry.example/apps", "9.9.9")


# --------------------------------------------------------------------------- AppInstance


def test_emr_sharing_may_get_the_keys_of_its_own_store_and_no_other() -> None:
    """The connector decrypts its hospital's EMR documents: a Role of its own on that one store's keys."""
    objects = app_children(app_spec(recordStore="emr-main"))
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["name"] == "app-emr-store-keys"
    assert role["rules"] == [
        {
            "apiGroups": ["medcloud.io"],
            "resources": ["recordstores/keys"],
            "resourceNames": ["emr-main"],
            "verbs": ["get"],
        }
    ]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "app-emr-store-keys"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app-emr-store-keys"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "app-emr", "namespace": NS}]
    kinds = [o["kind"] for o in objects]
    assert kinds.index("ServiceAccount") < kinds.index("Role") < kinds.index("Deployment")
    # Apps that do not decrypt their store themselves get no key grant at all.
    for app in ("referrals", "appointments", "insurance-card"):
        assert not [o for o in app_children(app_spec(app=app), name=app) if o["kind"] == "Role"], app


def test_every_app_child_is_labelled_owned_and_named_after_the_app() -> None:
    objects = app_children(app_spec(exposure={"host": "emr.riverton.example"}))
    children = build_app(app_spec(exposure={"host": "emr.riverton.example"}))
    assert set(children) == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
    }
    for child in objects:
        meta = child["metadata"]
        store_keys = child["kind"] == "Role" or child.get("roleRef", {}).get("kind") == "Role"
        assert meta["name"] == ("app-emr-store-keys" if store_keys else "app-emr")
        assert meta["namespace"] == NS
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "medcloud-operator"
        assert meta["labels"]["medcloud.io/hospital"] == "riverton"
        assert meta["labels"]["app.kubernetes.io/component"] == "appinstance"
        assert meta["labels"]["app.kubernetes.io/name"] == "emr-sharing"
        assert meta["labels"]["app.kubernetes.io/version"] == "2.3.1"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "medcloud.io/v1alpha1",
                "kind": "AppInstance",
                "name": "emr",
                "uid": "uid-emr",
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
    deployment, service = children["Deployment"], children["Service"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    # The selector is immutable: it must not carry the version, which changes on upgrade.
    assert "app.kubernetes.io/version" not in selector


def test_an_ingress_only_when_a_host_is_set() -> None:
    assert "Ingress" not in build_app(app_spec())
    ingress = build_app(app_spec(exposure={"host": "emr.riverton.example"}), ingress_class="nginx")["Ingress"]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "emr.riverton.example"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "app-emr", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["emr.riverton.example"]}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert "ingressClassName" not in build_app(app_spec(exposure={"host": "emr.riverton.example"}))["Ingress"]["spec"]


def test_the_app_service_publishes_the_http_port() -> None:
    service = build_app(app_spec())["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    container = pod(build_app(app_spec())["Deployment"])["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"


def test_the_app_is_wired_to_its_store_credentials_and_gateway_service() -> None:
    container = pod(build_app(app_spec(deviceGateway="wards"))["Deployment"])["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["envFrom"] == [{"secretRef": {"name": "emr-credentials"}}]
    assert env["MEDCLOUD_RECORDSTORE"] == "emr"
    assert env["MEDCLOUD_DEVICE_GATEWAY"] == "wards"
    # The gateway's own Service, by the name the gateway builder gives it.
    assert env["MEDCLOUD_DEVICE_GATEWAY_HOST"] == f"{gw_b.child_name('wards')}.{NS}.svc"
    assert env["MEDCLOUD_HOSPITAL"] == "riverton"
    assert env["MEDCLOUD_APP_URL"] == f"http://app-emr.{NS}.svc/"


def test_an_app_without_a_store_gets_no_credentials() -> None:
    container = pod(build_app(app_spec(app="appointments", recordStore=None))["Deployment"])["containers"][0]
    assert "envFrom" not in container
    assert not {"MEDCLOUD_RECORDSTORE", "MEDCLOUD_DEVICE_GATEWAY"} & {e["name"] for e in container["env"]}


def test_config_is_a_config_map_and_a_change_rolls_the_pods() -> None:
    config = {"language": "zh-CN", "audit.retention": "30y"}
    children = build_app(app_spec(config=config))
    assert children["ConfigMap"]["data"] == config
    volumes = {v["name"]: v for v in pod(children["Deployment"])["volumes"]}
    assert volumes["config"] == {"name": "config", "configMap": {"name": "app-emr"}}

    def config_hash(spec: AppInstanceSpec) -> str:
        return str(
            build_app(spec)["Deployment"]["spec"]["template"]["metadata"]["annotations"]["medcloud.io/config-hash"]
        )

    assert config_hash(app_spec(config=config)) == config_hash(app_spec(config=dict(reversed(config.items()))))
    assert config_hash(app_spec(config=config)) != config_hash(app_spec(config={**config, "language": "en"}))


def test_catalog_resources_are_lowered_to_fit_a_small_tenant_never_raised() -> None:
    container = pod(build_app(app_spec())["Deployment"])["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    small = pod(build_app(app_spec(), ceiling=w.Ceiling(cpu="200m", memory="256Mi"))["Deployment"])["containers"][0]
    assert small["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"cpu": "200m", "memory": "256Mi"},
    }
    roomy = pod(build_app(app_spec(), ceiling=w.Ceiling(cpu="64", memory="256Gi"))["Deployment"])["containers"][0]
    assert roomy["resources"] == container["resources"]


def test_max_cpu_request_lowers_every_requested_cpu_and_leaves_limits_and_memory_alone() -> None:
    small = pod(build_app(app_spec(), max_cpu_request="25m")["Deployment"])["containers"][0]
    assert small["resources"] == {
        "requests": {"cpu": "25m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    spec = gw_spec(resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    gateway = pod(build_gw(spec, max_cpu_request="25m")["Deployment"])["containers"][0]
    assert gateway["resources"]["requests"] == {"cpu": "25m", "memory": "512Mi"}
    assert gateway["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    # Never raised: a request below the cap stays.
    assert w.cap_cpu_request({"requests": {"cpu": "10m"}}, "25m") == {"requests": {"cpu": "10m"}}
    assert w.cap_cpu_request({"limits": {"cpu": "1"}}, "25m") == {"limits": {"cpu": "1"}}


def test_the_ceiling_is_read_from_the_tenants_limit_range() -> None:
    limit_range = {"spec": {"limits": [{"type": "Container", "max": {"cpu": "4", "memory": "8Gi"}}]}}
    assert w.Ceiling.of(limit_range) == w.Ceiling(cpu="4", memory="8Gi")
    assert w.Ceiling.of(None) == w.Ceiling()


def test_replicas_follow_the_spec() -> None:
    assert build_app(app_spec(replicas=0))["Deployment"]["spec"]["replicas"] == 0
    assert build_app(app_spec(replicas=5))["Deployment"]["spec"]["replicas"] == 5


def test_long_or_dotted_names_give_valid_distinct_child_names() -> None:
    names = {app_b.child_name(n) for n in ("emr", "emr.sharing", "emr-sharing", "a" * 200, "a" * 199 + "b", "9lives")}
    assert len(names) == 6
    for name in names:
        assert len(name) <= 63, name
        assert re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name), name
    value = w.label_value("x" * 100)
    assert len(value) <= 63
    assert value != w.label_value("x" * 99 + "y")


def test_workloads_outside_a_hospital_namespace_are_refused() -> None:
    spec = app_spec()
    with pytest.raises(w.InvalidWorkloadError, match="not a hospital's tenant namespace"):
        app_b.build_app(
            body("AppInstance", "emr", {}, namespace="default"), spec, None, w.Ceiling(), WorkloadSettings()
        )


# --------------------------------------------------------------------------- DeviceGateway


def test_the_gateway_exposes_one_port_per_protocol() -> None:
    children = build_gw(gw_spec(protocols=["hl7v2", "mqtt", "https"]))
    service = children["Service"]
    assert service["metadata"]["name"] == "gw-wards"
    # In protocol order whatever the spec's order, so reordering the spec changes nothing.
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("mllp", 2575, "mllp"),
        ("https", 8443, "https"),
        ("mqtt", 8883, "mqtt"),
    ]
    container = pod(children["Deployment"])["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "health": 8080,
        "https": 8443,
        "mllp": 2575,
        "mqtt": 8883,
    }
    only_mqtt = build_gw(gw_spec(protocols=["mqtt"]))["Service"]
    assert [p["port"] for p in only_mqtt["spec"]["ports"]] == [8883]


def test_the_gateway_pod_runs_medcloud_gateway_with_a_key_service_token_only() -> None:
    children = build_gw(gw_spec(protocols=["hl7v2"]), broker_host="10.89.0.1", broker_port=18883)
    assert list(children) == ["ServiceAccount", "RoleBinding", "NetworkPolicy", "Deployment", "Service"]
    spec = pod(children["Deployment"])
    container = spec["containers"][0]
    assert container["image"] == f"registry.medcloud.local/medcloud:{WorkloadSettings().gateway_version}"
    assert container["args"] == ["gateway"]
    # Its own account, and no API token from it: only a token the key service accepts.
    assert spec["serviceAccountName"] == "gw-wards"
    assert spec["automountServiceAccountToken"] is False
    assert children["ServiceAccount"]["automountServiceAccountToken"] is False
    (token,) = [v for v in spec["volumes"] if "projected" in v]
    assert token["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "medcloud-keyservice", "expirationSeconds": 3600, "path": "token"}}
    ]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts[token["name"]] == {
        "name": token["name"],
        "mountPath": "/var/run/secrets/medcloud/keyservice",
        "readOnly": True,
    }
    # The gateway reads what the operator wrote: the token file and the broker.
    read = _gateway_reads(container)
    assert str(read.key_service_token_file) == "/var/run/secrets/medcloud/keyservice/token"
    assert (read.mqtt_broker_host, read.broker_port) == ("10.89.0.1", 18883)
    assert "MEDCLOUD_GATEWAY_MQTT_BROKER_HOST" not in {
        e["name"] for e in pod(build_gw(gw_spec())["Deployment"])["containers"][0]["env"]
    }


def test_the_gateway_account_gets_the_keys_role_in_its_own_namespace_only() -> None:
    binding = build_gw(gw_spec(), gateway_keys_cluster_role="medcloud-gateway-keys")["RoleBinding"]
    assert binding["metadata"]["namespace"] == NS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "medcloud-gateway-keys",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gw-wards", "namespace": NS}]
    assert binding["metadata"]["ownerReferences"][0]["kind"] == "DeviceGateway"


def test_gateway_endpoints_name_the_service() -> None:
    assert gw_b.endpoints("wards", NS, gw_spec(protocols=["mqtt", "https", "hl7v2"])) == {
        "hl7v2": f"mllp://gw-wards.{NS}.svc:2575",
        "https": f"https://gw-wards.{NS}.svc:8443",
        "mqtt": f"mqtts://gw-wards.{NS}.svc:8883",
    }


def test_the_gateway_is_wired_to_its_record_store_and_labelled() -> None:
    deployment = build_gw(gw_spec())["Deployment"]
    container = pod(deployment)["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MEDCLOUD_RECORDSTORE"] == "device-data"
    assert env["MEDCLOUD_GATEWAY_PROTOCOLS"] == "https,mqtt"
    assert env["MEDCLOUD_GATEWAY_DEVICE_CLASSES"] == "ecg,spo2"
    assert env["MEDCLOUD_GATEWAY_MQTT_PORT"] == "8883"
    assert container["envFrom"] == [{"secretRef": {"name": "device-data-credentials"}}]
    assert container["image"] == gateway_image(WorkloadSettings())
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "devicegateway"
    assert labels["medcloud.io/hospital"] == "riverton"
    assert labels["app.kubernetes.io/managed-by"] == "medcloud-operator"


def test_gateway_resources_are_the_specs_and_refused_above_the_ceiling() -> None:
    spec = gw_spec(resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    container = pod(build_gw(spec, ceiling=w.Ceiling(cpu="4", memory="8Gi"))["Deployment"])["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    with pytest.raises(w.InvalidWorkloadError, match=r"spec.resources.limits.cpu 2 is above .* \(1500m"):
        build_gw(spec, ceiling=w.Ceiling(cpu="1500m", memory="8Gi"))


# --------------------------------------------------------------------------- readiness


def deployment_status(**status: Any) -> Json:
    return {"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": {"observedGeneration": 2, **status}}


def rollout(deployment: Json, *, written: bool = False) -> Check:
    check = w.judge_rollout(deployment, written=written)
    assert check is not None
    return check


def test_rollout_is_judged_like_kubectl_rollout_status() -> None:
    fresh = {"metadata": {"generation": 1}, "spec": {"replicas": 2}}
    assert rollout(fresh, written=True).reason == WorkloadReason.ROLLING_OUT
    assert rollout(deployment_status(updatedReplicas=1, replicas=2)).message == "1 of 2 pods updated."
    assert rollout(deployment_status(updatedReplicas=2, replicas=3)).reason == WorkloadReason.ROLLING_OUT
    assert rollout(deployment_status(updatedReplicas=2, replicas=2, availableReplicas=1)).message == (
        "1 of 2 pods available."
    )
    done = rollout(deployment_status(updatedReplicas=2, replicas=2, availableReplicas=2, readyReplicas=2))
    assert (done.status, done.reason) == (ConditionStatus.TRUE, WorkloadReason.ROLLOUT_COMPLETE)
    stopped = rollout({"metadata": {"generation": 1}, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}})
    assert stopped.ok
    assert "stopped" in stopped.message


def test_a_change_by_someone_else_not_yet_seen_by_the_controller_says_nothing_new() -> None:
    # An annotation added by hand bumps a Deployment's generation; until its controller looks,
    # the previous verdict stands (no flapping to "rolling out" and back).
    behind = {"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": {"observedGeneration": 2}}
    assert w.judge_rollout(behind, written=False) is None
    # After the operator's own write it is a rollout under way.
    assert rollout(behind, written=True).reason == WorkloadReason.ROLLING_OUT
    ready = app_status(AppInstanceStatus(), dependencies=TRUE, available=AVAILABLE, ready_replicas=2)
    assert dump(app_status(ready, dependencies=TRUE, available=None, ready_replicas=2)) == dump(ready)


def test_refused_and_stuck_pods_are_named() -> None:
    refused = rollout(
        deployment_status(
            conditions=[
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "app-emr-1" is forbidden: exceeded quota: medcloud-quota',
                }
            ]
        )
    )
    assert refused.reason == WorkloadReason.REPLICA_FAILURE
    assert "exceeded quota" in refused.message
    stuck = rollout(
        deployment_status(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}])
    )
    assert stuck.reason == WorkloadReason.PROGRESS_DEADLINE_EXCEEDED


def ready_store(ready: bool = True) -> Json:
    status = "True" if ready else "False"
    return {
        "status": {
            "phase": "Ready" if ready else "Degraded",
            "conditions": [
                {
                    "type": "Ready",
                    "status": status,
                    "reason": "Reconciled" if ready else "StorageUnavailable",
                    "message": "" if ready else "MinIO is unavailable",
                    "lastTransitionTime": "2026-05-01T08:00:00Z",
                }
            ],
        }
    }


def test_dependencies_missing_or_not_ready_say_which_and_why() -> None:
    spec = app_spec(deviceGateway="wards")
    missing = w.judge_dependencies(app_b.dependencies(spec, None, ready_store()))
    assert (missing.status, missing.reason) == (ConditionStatus.FALSE, "RecordStoreNotFound")
    assert "RecordStore emr (spec.recordStore) does not exist" in missing.message
    not_ready = w.judge_dependencies(app_b.dependencies(spec, ready_store(), ready_store(False)))
    assert not_ready.reason == "DeviceGatewayNotReady"
    assert "DeviceGateway wards is not Ready (phase Degraded): MinIO is unavailable" in not_ready.message
    unreadable = w.judge_dependencies(app_b.dependencies(spec, {"status": {"conditions": "nonsense"}}, ready_store()))
    assert unreadable.reason == "RecordStoreNotReady"
    fine = w.judge_dependencies(app_b.dependencies(spec, ready_store(), ready_store()))
    assert fine.ok
    assert fine.message == "RecordStore emr and DeviceGateway wards Ready."
    alone = w.judge_dependencies(app_b.dependencies(app_spec(app="appointments", recordStore=None), None, None))
    assert (alone.status, alone.reason) == (ConditionStatus.TRUE, "NoDependencies")


def test_the_stores_secret_name_comes_from_its_status_or_its_naming_rule() -> None:
    assert w.credentials_secret("emr", None) == credentials_secret_name("emr")
    assert w.credentials_secret("emr", {"status": {"secretRef": {"name": "custom"}}}) == "custom"


TRUE = Check(ConditionStatus.TRUE, "Fine", "fine")
ROLLING = Check(ConditionStatus.FALSE, WorkloadReason.ROLLING_OUT, "0 of 2 pods available.")
MISSING = Check(ConditionStatus.FALSE, WorkloadReason.RECORD_STORE_NOT_FOUND, "RecordStore emr does not exist")
AVAILABLE = Check(ConditionStatus.TRUE, WorkloadReason.ROLLOUT_COMPLETE, "2 of 2 pods available.")


def app_status(previous: AppInstanceStatus, *, now: datetime = T0, **parts: Any) -> AppInstanceStatus:
    args: Json = {"dependencies": None, "available": None, "failure": None, "spec_failed": False, "ready_replicas": 0}
    args.update(parts)
    return app_b.next_status(previous, generation=1, url="https://emr.example/", now=now, **args)


def conditions(status: AppInstanceStatus | DeviceGatewayStatus | ConsortiumStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_phases_from_pending_through_ready_to_degraded() -> None:
    pending = app_status(AppInstanceStatus(), dependencies=MISSING, available=ROLLING)
    assert pending.phase is Phase.PENDING
    assert conditions(pending)["Ready"] == ("False", "RecordStoreNotFound")
    assert conditions(pending)["DependenciesReady"] == ("False", "RecordStoreNotFound")
    rolling = app_status(pending, dependencies=TRUE, available=ROLLING)
    assert rolling.phase is Phase.PROVISIONING
    assert conditions(rolling)["Ready"] == ("False", "RollingOut")
    ready = app_status(rolling, dependencies=TRUE, available=AVAILABLE, ready_replicas=2)
    assert ready.phase is Phase.READY
    assert ready.is_ready()
    assert ready.ready_replicas == 2
    assert ready.url == "https://emr.example/"
    assert ready.observed_generation == 1
    assert all(c.observed_generation == 1 for c in ready.conditions)
    degraded = app_status(ready, dependencies=MISSING, available=AVAILABLE)
    assert degraded.phase is Phase.DEGRADED


def test_a_failure_shows_in_available_and_ready_and_keeps_what_was_not_reached() -> None:
    before = app_status(AppInstanceStatus(), dependencies=TRUE, available=AVAILABLE, ready_replicas=2)
    failure = Check(ConditionStatus.FALSE, Reason.FORBIDDEN, "not allowed")
    after = app_status(before, failure=failure, ready_replicas=None)
    assert conditions(after) == {
        "DependenciesReady": ("True", "Fine"),
        "Available": ("False", "Forbidden"),
        "Ready": ("False", "Forbidden"),
    }
    assert after.phase is Phase.DEGRADED
    assert after.ready_replicas == 2
    invalid = Check(ConditionStatus.FALSE, Reason.INVALID_SPEC, "above the LimitRange")
    assert app_status(AppInstanceStatus(), failure=invalid, spec_failed=True).phase is Phase.FAILED


def test_refused_pods_degrade_at_once() -> None:
    refused = Check(ConditionStatus.FALSE, WorkloadReason.REPLICA_FAILURE, "exceeded quota")
    assert app_status(AppInstanceStatus(), dependencies=TRUE, available=refused).phase is Phase.DEGRADED


def test_the_same_findings_later_give_the_same_status_so_nothing_is_written() -> None:
    first = app_status(AppInstanceStatus(), dependencies=TRUE, available=AVAILABLE, ready_replicas=2)
    again = app_status(first, dependencies=TRUE, available=AVAILABLE, ready_replicas=2, now=T0 + timedelta(hours=1))
    assert dump(again) == dump(first)
    gw = gw_b.next_status(
        DeviceGatewayStatus(),
        generation=1,
        dependencies=TRUE,
        available=AVAILABLE,
        failure=None,
        spec_failed=False,
        endpoints={"mqtt": "mqtts://gw-wards.hospital-riverton.svc:8883"},
        now=T0,
    )
    gw_again = gw_b.next_status(
        gw,
        generation=1,
        dependencies=TRUE,
        available=AVAILABLE,
        failure=None,
        spec_failed=False,
        endpoints=None,
        now=T0,
    )
    assert dump(gw_again) == dump(gw)
    # No Devices counted in: the counts are there, zero, and active is not claimed.
    assert gw.devices is not None
    assert (gw.devices.enrolled, gw.devices.revoked, gw.devices.pending, gw.devices.active) == (0, 0, 0, None)
    assert gw.endpoints == {"mqtt": "mqtts://gw-wards.hospital-riverton.svc:8883"}
    assert gw.phase is Phase.READY


# --------------------------------------------------------------------------- Consortium


def hospital(name: str, *, ready: bool = True, consortium: str | None = "riverton") -> Json:
    spec = {"consortium": consortium} if consortium else {}
    return {"metadata": {"name": name}, "spec": spec, **ready_store(ready)}


def consortium_spec(members: list[str]) -> ConsortiumSpec:
    return ConsortiumSpec.model_validate({"displayName": "Riverton", "leadHospital": members[0], "members": members})


def cons_status(previous: ConsortiumStatus, members: list[str], hospitals: list[Json]) -> ConsortiumStatus:
    return cons_b.next_status(
        previous,
        name="riverton",
        generation=3,
        spec=consortium_spec(members),
        hospitals={h["metadata"]["name"]: h for h in hospitals},
        now=T0,
    )


def test_a_consortium_counts_its_ready_members_and_lists_the_missing() -> None:
    members = ["city", "county", "township", "village"]
    status = cons_status(ConsortiumStatus(), members, [hospital("city"), hospital("county", ready=False)])
    assert (status.member_count, status.ready_members) == (4, 1)
    ready = status.condition("Ready")
    assert ready is not None
    assert ready.reason == "MembersMissing"
    assert "township, village" in ready.message
    assert "Not Ready: county" in ready.message
    assert status.phase is Phase.PENDING
    assert status.observed_generation == 3

    coming = cons_status(status, members, [hospital(h, ready=h != "village") for h in members])
    assert conditions(coming)["Ready"] == ("False", "MembersNotReady")
    assert coming.ready_members == 3
    assert coming.phase is Phase.PROVISIONING

    all_ready = cons_status(coming, members, [hospital(h) for h in members])
    assert conditions(all_ready)["Ready"] == ("True", "AllMembersReady")
    assert all_ready.ready_members == 4
    assert all_ready.phase is Phase.READY
    gone = cons_status(all_ready, members, [hospital(h) for h in members[:3]])
    assert gone.phase is Phase.DEGRADED


def test_membership_must_agree_with_the_hospitals_own_spec() -> None:
    hospitals = [hospital("city"), hospital("county", consortium="elsewhere"), hospital("stray")]
    status = cons_status(ConsortiumStatus(), ["city", "county"], hospitals)
    membership = status.condition("MembershipConsistent")
    assert membership is not None
    assert membership.reason == "MembershipMismatch"
    assert "county" in membership.message
    assert "stray" in membership.message
    # Not Ready is about members being up; agreement is reported beside it.
    assert conditions(status)["Ready"] == ("True", "AllMembersReady")
    agreed = cons_status(ConsortiumStatus(), ["city"], [hospital("city")])
    assert conditions(agreed)["MembershipConsistent"] == ("True", "Consistent")


def test_long_member_lists_are_shortened_in_messages() -> None:
    members = [f"clinic-{i:03d}" for i in range(40)]
    status = cons_status(ConsortiumStatus(), members, [])
    ready = status.condition("Ready")
    assert ready is not None
    assert "and 30 more" in ready.message


BROKER_CA = {"broker_client_ca_file": "/etc/broker/ca.crt", "broker_client_ca_key_file": "/etc/broker/ca.key"}


def test_with_the_brokers_ca_the_gateway_pod_mounts_its_broker_client_certificate_read_only() -> None:
    children = build_gw(gw_spec(), broker_host="broker.medcloud-system.svc", broker_port=8883, **BROKER_CA)
    spec = pod(children["Deployment"])
    container = spec["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts[gw_b.BROKER_VOLUME] == {
        "name": "broker-tls",
        "mountPath": "/etc/medcloud/broker-tls",
        "readOnly": True,
    }
    assert volumes[gw_b.BROKER_VOLUME]["secret"] == {"secretName": "gw-wards-broker", "defaultMode": 0o440}
    assert all(m["readOnly"] for m in container["volumeMounts"] if m["name"] != "tmp")
    # With every protocol on, the gateway's own settings are complete (it refused mqtt before: no certificates).
    read = _gateway_reads(container)
    assert (str(read.mqtt_ca_file), str(read.mqtt_cert_file), str(read.mqtt_key_file)) == (
        "/etc/medcloud/broker-tls/ca.crt",
        "/etc/medcloud/broker-tls/tls.crt",
        "/etc/medcloud/broker-tls/tls.key",
    )
    assert (read.mqtt_broker_host, read.broker_port) == ("broker.medcloud-system.svc", 8883)
    # One share group per gateway: on a broker every hospital shares, no other gateway takes its readings.
    assert read.mqtt_share_group == f"gw-wards.{NS}" == gw_b.broker_identity("wards", NS)
    other = build_gw(gw_spec(), name="icu", **BROKER_CA)["Deployment"]
    assert {e["name"]: e["value"] for e in pod(other)["containers"][0]["env"]}[
        "MEDCLOUD_GATEWAY_MQTT_SHARE_GROUP"
    ] != read.mqtt_share_group


def test_without_mqtt_or_the_brokers_ca_no_broker_certificate_is_mounted() -> None:
    for children in (build_gw(gw_spec(protocols=["https", "hl7v2"]), **BROKER_CA), build_gw(gw_spec())):
        spec = pod(children["Deployment"])
        assert gw_b.BROKER_VOLUME not in {v["name"] for v in spec["volumes"]}
        assert "MEDCLOUD_GATEWAY_MQTT_CERT_FILE" not in {e["name"] for e in spec["containers"][0]["env"]}
    with pytest.raises(ValueError, match="both"):
        WorkloadSettings(broker_client_ca_file="/etc/broker/ca.crt")


def test_a_renewed_certificate_rolls_the_gateway_pods_and_the_same_one_changes_nothing() -> None:
    spec = gw_spec()
    gateway = body("DeviceGateway", "wards", spec.model_dump(by_alias=True, exclude_none=True))

    def template(*certificates: bytes) -> Json:
        deployment = gw_b.build_deployment(gateway, spec, "c", w.Ceiling(), WorkloadSettings(), certificates)
        return deployment["spec"]["template"]  # type: ignore[no-any-return]

    first = template(b"serving-1", b"broker-1")
    assert first == template(b"serving-1", b"broker-1")
    assert (
        first["metadata"]["annotations"][gw_b.CERTIFICATES_ANNOTATION]
        != template(b"serving-2", b"broker-1")["metadata"]["annotations"][gw_b.CERTIFICATES_ANNOTATION]
    )
    assert template(b"serving-1", b"broker-1") != template(b"serving-1", b"broker-2")
    assert "annotations" not in template()["metadata"]


def test_devices_reach_the_gateways_listeners_from_anywhere_and_its_readiness_is_its_listeners() -> None:
    children = build_gw(gw_spec(protocols=["mqtt", "https", "hl7v2"]))
    policy = children["NetworkPolicy"]
    assert policy["metadata"]["name"] == "gw-wards"
    assert policy["spec"]["podSelector"] == children["Deployment"]["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # Any source (devices are outside every namespace), the device ports only: not the health port, and not
    # 8883, where the gateway listens on nothing (it subscribes to the broker).
    assert policy["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 2575}, {"protocol": "TCP", "port": 8443}]}
    ]
    assert build_gw(gw_spec(protocols=["mqtt"]))["NetworkPolicy"]["spec"]["ingress"] == []
    container = pod(children["Deployment"])["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


OPERATOR_PODS = {"app.kubernetes.io/name": "medcloud", "app.kubernetes.io/component": "operator"}


def test_the_operators_pods_alone_reach_the_gateways_health_port_when_it_runs_as_pods() -> None:
    presence = {"gateway_presence_from_namespace": "medcloud-system", "gateway_presence_from_pod_labels": OPERATOR_PODS}
    rules = build_gw(gw_spec(protocols=["mqtt", "https"]), **presence)["NetworkPolicy"]["spec"]["ingress"]
    assert rules == [
        {"ports": [{"protocol": "TCP", "port": 8443}]},
        # One peer with both selectors (ANDed): the operator's pods of its namespace, not every pod there,
        # and not pods with those labels in a tenant's namespace; on the health port only.
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "medcloud-system"}},
                    "podSelector": {"matchLabels": OPERATOR_PODS},
                }
            ],
            "ports": [{"protocol": "TCP", "port": gw_b.HEALTH_PORT}],
        },
    ]
    # An MQTT-only gateway: no device port, and still the operator's rule (never an empty peer list).
    (only,) = build_gw(gw_spec(protocols=["mqtt"]), **presence)["NetworkPolicy"]["spec"]["ingress"]
    assert only["from"]
    assert only["ports"] == [{"protocol": "TCP", "port": gw_b.HEALTH_PORT}]


def test_an_operator_on_the_node_gets_no_presence_rule_and_half_a_peer_is_refused() -> None:
    assert gw_b.presence_ingress(WorkloadSettings()) is None
    with pytest.raises(ValueError, match="both"):
        WorkloadSettings(gateway_presence_from_namespace="medcloud-system")  # every pod of the namespace
    with pytest.raises(ValueError, match="both"):
        WorkloadSettings(gateway_presence_from_pod_labels=OPERATOR_PODS)  # no namespace named
