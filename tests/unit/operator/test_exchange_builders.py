"""The exchange's RBAC from a Consortium, without a cluster: as far as spec.sharing reaches, and no further."""

from __future__ import annotations

from typing import Any

from medcloud.models.consortium import ConsortiumSpec
from medcloud.models.deidentification import DeidentificationPolicy
from medcloud_operator.builders.exchange import account_name, build_exchange_rbac, exchange_selector, exchange_stores

OWNER: dict[str, Any] = {
    "apiVersion": "medcloud.io/v1alpha1",
    "kind": "Consortium",
    "metadata": {"name": "riverton", "uid": "u-1"},
}


def spec(*rules: dict[str, Any]) -> ConsortiumSpec:
    return ConsortiumSpec.model_validate(
        {"displayName": "R", "leadHospital": "city", "members": ["city", "county", "village"], "sharing": list(rules)}
    )


def test_one_role_per_member_shared_from_and_none_for_the_others() -> None:
    docs = build_exchange_rbac(
        OWNER, spec({"category": "emr", "from": ["county"], "to": ["city"]}), "medcloud-system", "medcloud-exchange"
    )
    roles = [d for d in docs if d["kind"] == "Role"]
    assert [r["metadata"]["namespace"] for r in roles] == ["hospital-county"]
    assert roles[0]["rules"] == [
        {"apiGroups": ["medcloud.io"], "resources": ["recordstores/keys"], "resourceNames": ["emr"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["emr-credentials"], "verbs": ["get"]},
    ]
    (cluster_binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == "medcloud-exchange"
    subject = {"kind": "ServiceAccount", "name": "medcloud-exchange-riverton", "namespace": "medcloud-system"}
    assert all(d.get("subjects") in (None, [subject]) for d in docs)
    assert all(d["metadata"]["ownerReferences"][0]["uid"] == "u-1" for d in docs)
    selector = dict(pair.split("=") for pair in exchange_selector("riverton").split(","))
    assert all(selector.items() <= d["metadata"]["labels"].items() for d in docs)


def test_every_member_for_a_star_and_nothing_without_rules() -> None:
    star = build_exchange_rbac(
        OWNER, spec({"category": "emr", "from": ["*"], "to": ["city"]}), "medcloud-system", "medcloud-exchange"
    )
    assert sorted(d["metadata"]["namespace"] for d in star if d["kind"] == "RoleBinding") == [
        "hospital-city",
        "hospital-county",
        "hospital-village",
    ]
    assert [d["kind"] for d in build_exchange_rbac(OWNER, spec(), "medcloud-system", "x")] == ["ClusterRoleBinding"]


def test_the_account_name_is_a_valid_name_however_long_the_consortium() -> None:
    assert account_name("riverton") == "medcloud-exchange-riverton"
    long = account_name("a" * 63)
    assert len(long) <= 63
    assert long != account_name("a" * 62 + "b")


def test_a_device_store_in_the_policy_grants_it_in_every_member_and_nothing_more() -> None:
    consortium = spec({"category": "emr", "from": ["county"], "to": ["city"]}).model_copy(
        update={"deidentification": DeidentificationPolicy.model_validate({"purposes": [{"name": "indicators"}]})}
    )
    roles = {
        r["metadata"]["namespace"]: r["rules"]
        for r in build_exchange_rbac(OWNER, consortium, "medcloud-system", "medcloud-exchange")
        if r["kind"] == "Role"
    }
    assert sorted(roles) == ["hospital-city", "hospital-county", "hospital-village"]
    assert roles["hospital-county"][0]["resourceNames"] == ["device-data", "emr"]
    assert roles["hospital-county"][1]["resourceNames"] == ["device-data-credentials", "emr-credentials"]
    assert roles["hospital-village"][0]["resourceNames"] == ["device-data"]
    assert roles["hospital-village"][1]["resourceNames"] == ["device-data-credentials"]
    assert exchange_stores(consortium) == {
        "city": ["device-data"],
        "county": ["device-data", "emr"],
        "village": ["device-data"],
    }
    # A policy exporting no device readings grants no device store.
    none = consortium.model_copy(
        update={
            "deidentification": DeidentificationPolicy.model_validate(
                {"purposes": [{"name": "indicators"}], "deviceStore": None}
            )
        }
    )
    assert exchange_stores(none) == {"county": ["emr"]}
