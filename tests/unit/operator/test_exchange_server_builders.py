"""The exchange's workload, Secrets and ExchangeReady from pure builders (no servers)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from medcloud.models import ConditionStatus, ConsortiumReason, ConsortiumStatus, Phase
from medcloud.models.consortium import ConsortiumExchangeStatus
from medcloud_operator.builders import exchangeserver as build
from medcloud_operator.builders.exchangeserver import Database, ExchangeNames
from medcloud_operator.exchangeserver import ExchangeOutcome, with_exchange
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.status import Check

NOW = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
BODY: dict[str, Any] = {
    "apiVersion": "medcloud.io/v1alpha1",
    "kind": "Consortium",
    "metadata": {"name": "riverton", "uid": "u-1"},
}
NAMES = ExchangeNames.of("riverton", "medcloud-system")
DATABASE = Database("exchange-riverton-app", "uri")


def settings() -> OperatorSettings:
    return OperatorSettings(own_image="registry.example/medcloud@sha256:" + "a" * 64)


def deployment(replicas: int = 1, available: int = 1, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
        },
    }


def test_the_deployment_runs_medclouds_image_restricted_with_keys_from_secrets_only() -> None:
    built = build.build_deployment(BODY, NAMES, DATABASE, settings(), "minio.example:9000", True, "http://ks:8080")
    pod = built["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/medcloud@sha256:" + "a" * 64
    assert container["args"] == ["exchange"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in container["env"]}
    for secret in ("DATABASE_URL", "BLIND_INDEX_KEY", "AUDIT_ACCESS_KEY", "AUDIT_SECRET_KEY"):
        assert "value" not in env[f"MEDCLOUD_EXCHANGE_{secret}"], secret
    assert env["MEDCLOUD_EXCHANGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "exchange-riverton-app",
        "key": "uri",
    }
    assert env["MEDCLOUD_EXCHANGE_AUDIT_SECURE"]["value"] == "true"
    (projected,) = [v for v in pod["volumes"] if "projected" in v]
    assert projected["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "medcloud-keyservice"
    assert pod["serviceAccountName"] == "medcloud-exchange-riverton"
    assert built["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_the_service_selects_the_pods_and_the_endpoint_names_it() -> None:
    service = build.build_service(BODY, NAMES)
    pod_labels = build.build_deployment(BODY, NAMES, DATABASE, settings(), "m:9000", False, "http://ks")["spec"][
        "template"
    ]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert NAMES.endpoint() == "http://medcloud-exchange-riverton.medcloud-system.svc/fhir"


def test_the_blind_index_secret_holds_the_key_as_the_exchange_reads_it() -> None:
    key = bytes(range(32))
    secret = build.build_blind_index_secret(BODY, NAMES, key)
    assert base64.b64decode(base64.b64decode(secret["data"]["key"])) == key


def test_the_audit_policy_allows_no_delete_and_no_other_bucket() -> None:
    policy = build.audit_policy(NAMES.audit_bucket)
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert not any("Delete" in a or "Retention" in a or "Lock" in a or a == "s3:*" for a in actions)
    assert resources == {f"arn:aws:s3:::{NAMES.audit_bucket}", f"arn:aws:s3:::{NAMES.audit_bucket}/*"}


def test_names_stay_valid_for_a_long_consortium() -> None:
    names = ExchangeNames.of("c" * 63, "medcloud-system")
    assert len(names.audit_bucket) <= 63
    assert len(names.account) <= 63
    assert ExchangeNames.of("d" * 63, "medcloud-system").audit_bucket != names.audit_bucket


def test_the_database_secret_is_the_specs_else_the_default_for_the_consortium() -> None:
    assert build.database_secret_name("exchange-{consortium}-app", "riverton", None) == "exchange-riverton-app"
    assert build.database_secret_name("exchange-{consortium}-app", "riverton", "pg-uri") == "pg-uri"


def test_exchange_ready_starting_serving_unavailable_and_back() -> None:
    starting = build.judge_exchange(deployment(available=0), None)
    assert (starting.status, starting.reason) == (ConditionStatus.FALSE, ConsortiumReason.EXCHANGE_STARTING)
    serving = build.judge_exchange(deployment(), None)
    assert (serving.status, serving.reason) == (ConditionStatus.TRUE, ConsortiumReason.EXCHANGE_SERVING)

    status = ConsortiumStatus(phase=Phase.READY, exchange=ConsortiumExchangeStatus(service_account="medcloud-system/x"))
    served = with_exchange(status, ExchangeOutcome(serving, NAMES.endpoint(), NAMES.audit_bucket), 1, NOW)
    assert served.phase is Phase.READY
    assert served.exchange is not None
    assert served.exchange.endpoint == NAMES.endpoint()

    lost = build.judge_exchange(deployment(available=0), served.condition("ExchangeReady"))
    assert lost.reason == ConsortiumReason.EXCHANGE_UNAVAILABLE
    assert "PostgreSQL" in lost.message
    degraded = with_exchange(status, ExchangeOutcome(lost, NAMES.endpoint()), 1, NOW)
    assert degraded.phase is Phase.DEGRADED

    healed = build.judge_exchange(deployment(), degraded.condition("ExchangeReady"))
    assert healed.reason == ConsortiumReason.EXCHANGE_SERVING
    assert with_exchange(status, ExchangeOutcome(healed), 1, NOW).phase is Phase.READY


def test_what_the_exchange_answers_overrides_pods_that_report_ready() -> None:
    """KWOK (or a late kubelet) reports the pods ready; the exchange's own /readyz says otherwise."""
    down = "http://x/readyz answers 503: PostgreSQL (the index) does not answer"
    never = build.judge_exchange(deployment(), None, unready=down)
    assert (never.status, never.reason) == (ConditionStatus.FALSE, ConsortiumReason.EXCHANGE_STARTING)
    status = ConsortiumStatus(phase=Phase.READY)
    served = with_exchange(status, ExchangeOutcome(build.judge_exchange(deployment(), None)), 1, NOW)
    lost = build.judge_exchange(deployment(), served.condition("ExchangeReady"), unready=down)
    assert (lost.status, lost.reason) == (ConditionStatus.FALSE, ConsortiumReason.EXCHANGE_UNAVAILABLE)
    assert "PostgreSQL (the index) does not answer" in lost.message
    degraded = with_exchange(status, ExchangeOutcome(lost), 1, NOW)
    assert degraded.phase is Phase.DEGRADED
    # Still down: still Unavailable (not Starting); answering again: Serving.
    still = build.judge_exchange(deployment(), degraded.condition("ExchangeReady"), unready=down)
    assert still.reason == ConsortiumReason.EXCHANGE_UNAVAILABLE
    healed = build.judge_exchange(deployment(), degraded.condition("ExchangeReady"), unready=None)
    assert healed.reason == ConsortiumReason.EXCHANGE_SERVING


def test_a_foreign_change_not_yet_seen_by_the_controller_keeps_the_verdict() -> None:
    serving = ConsortiumStatus(phase=Phase.READY)
    serving = with_exchange(serving, ExchangeOutcome(build.judge_exchange(deployment(), None)), 1, NOW)
    touched = deployment()
    touched["metadata"]["generation"] = 2  # an annotation someone else added; the controller has not looked yet
    kept = build.judge_exchange(touched, serving.condition("ExchangeReady"), written=False)
    assert kept.reason == ConsortiumReason.EXCHANGE_SERVING
    rolling = deployment()
    rolling["status"]["updatedReplicas"] = 0
    assert build.judge_exchange(rolling, None).reason == ConsortiumReason.EXCHANGE_STARTING


def test_the_same_findings_give_the_same_status() -> None:
    status = ConsortiumStatus(phase=Phase.READY)
    check = Check(ConditionStatus.FALSE, ConsortiumReason.DATABASE_SECRET_MISSING, "Secret x missing.")
    once = with_exchange(status, ExchangeOutcome(check), 1, NOW)
    twice = with_exchange(once, ExchangeOutcome(check), 1, datetime(2026, 12, 2, 5, 0, tzinfo=UTC))
    assert once == twice


def test_the_exchange_requests_no_more_cpu_than_the_operators_max_cpu_request() -> None:
    small = settings().model_copy(update={"max_cpu_request": "25m"})
    built = build.build_deployment(BODY, NAMES, DATABASE, small, "m:9000", False, "http://ks")
    resources = built["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "25m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
