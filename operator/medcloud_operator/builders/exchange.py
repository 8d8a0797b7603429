"""What a Consortium's exchange may reach, as RBAC: pure, from the Consortium alone (docs/exchange.md).

- ClusterRoleBinding ``medcloud-exchange-<consortium>``: the exchange's ServiceAccount
  (in the operator namespace) gets the shared ClusterRole of deploy/exchange-rbac.yaml
  (TokenReview, SubjectAccessReview, get Consortia, create Events);
- in the namespace of each member some sharing rule shares from, and no other, a Role and
  RoleBinding ``medcloud-exchange``: ``get`` on ``recordstores/keys`` of the exchange's store
  and on that store's credentials Secret, by name; with a de-identification policy naming a
  device store, every member's Role names that store too (the Bulk export's Observations).

Every object is labelled with its Consortium, so a member that drops out of ``spec.sharing``
loses its Role on the next reconcile (the handler prunes by that label), and owned by the
Consortium, so deleting the Consortium removes them all.
"""

from __future__ import annotations

import hashlib

from medcloud.kube.client import Manifest
from medcloud.models.common import hospital_namespace
from medcloud.models.consortium import ConsortiumSpec
from medcloud.tenancy import labels
from medcloud.tenancy.labels import OPERATOR_NAME
from medcloud.tenancy.store import credentials_secret_name

COMPONENT = "exchange"
ROLE_NAME = "medcloud-exchange"
EXCHANGE_STORE = "emr"
RBAC = "rbac.authorization.k8s.io"
_NAME_MAX = 63


def account_name(consortium: str) -> str:
    """``medcloud-exchange-<consortium>``, shortened with a hash to a valid ServiceAccount name."""
    name = f"medcloud-exchange-{consortium}"
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(consortium.encode()).hexdigest()[:8]
    return f"{name[: _NAME_MAX - 9].rstrip('-')}-{digest}"


def exchange_labels(consortium: str) -> dict[str, str]:
    return {
        labels.MANAGED_BY: OPERATOR_NAME,
        labels.PART_OF: "medcloud",
        labels.COMPONENT: COMPONENT,
        labels.CONSORTIUM: consortium,
    }


def exchange_selector(consortium: str) -> str:
    """Label selector of one Consortium's exchange RBAC (what pruning may touch)."""
    return ",".join(f"{k}={v}" for k, v in exchange_labels(consortium).items())


def exchange_meta(name: str, consortium: str, owner: Manifest, namespace: str | None = None) -> Manifest:
    meta: Manifest = {
        "name": name,
        "labels": exchange_labels(consortium),
        "ownerReferences": [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ],
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def exchange_stores(spec: ConsortiumSpec) -> dict[str, list[str]]:
    """Per member, the RecordStores the exchange may read: the exchange's store of each member some rule
    shares from, and, when the de-identification policy names a device store, that store of every member
    (the FHIR Bulk export carries their device Observations, de-identified; docs/analytics.md)."""
    out: dict[str, set[str]] = {m: {EXCHANGE_STORE} for m in spec.publishers()}
    device_store = spec.deidentification.device_store if spec.deidentification else None
    if device_store:
        for member in spec.members:
            out.setdefault(member, set()).add(device_store)
    return {m: sorted(stores) for m, stores in sorted(out.items())}


def build_exchange_rbac(
    consortium: Manifest, spec: ConsortiumSpec, operator_namespace: str, cluster_role: str
) -> list[Manifest]:
    """The ClusterRoleBinding and, per publishing member, the Role and RoleBinding of the Consortium's exchange."""
    name = consortium["metadata"]["name"]
    account = account_name(name)
    subjects = [{"kind": "ServiceAccount", "name": account, "namespace": operator_namespace}]
    out: list[Manifest] = [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": exchange_meta(account, name, consortium),
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": cluster_role},
            "subjects": subjects,
        }
    ]
    for hospital, stores in exchange_stores(spec).items():
        namespace = hospital_namespace(hospital)
        out += [
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": "Role",
                "metadata": exchange_meta(ROLE_NAME, name, consortium, namespace),
                "rules": [
                    {
                        "apiGroups": ["medcloud.io"],
                        "resources": ["recordstores/keys"],
                        "resourceNames": stores,
                        "verbs": ["get"],
                    },
                    {
                        "apiGroups": [""],
                        "resources": ["secrets"],
                        "resourceNames": [credentials_secret_name(s) for s in stores],
                        "verbs": ["get"],
                    },
                ],
            },
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": "RoleBinding",
                "metadata": exchange_meta(ROLE_NAME, name, consortium, namespace),
                "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": ROLE_NAME},
                "subjects": subjects,
            },
        ]
    return out
