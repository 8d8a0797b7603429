"""The local cluster's MQTT broker: the platform Mosquitto, held to the operator's trust bundle.

The broker is configured exactly as a production one
(:func:`medcloud_gateway.broker.mosquitto_config`): client certificates from
the CA bundle, every issuer's CRL, the ACL. Its trust files start with the
cluster's own broker CA alone (the CA the operator issues gateway identities
from, and the test client ``medcloud-dev-client``), its CRL and the client's
ACL entry; with Kubernetes, the broker's sync (``python -m medcloud_gateway.brokersync``)
then keeps them equal to the operator's ConfigMap ``medcloud-broker-trust`` in
``medcloud-system`` with those three prepended, and sends SIGHUP. So an
enrolled device of any hospital connects, a revoked one is refused after the
next sync, and a device can write only its own topic, as in production.

The sync authenticates as the user :data:`SYNC_USER`, allowed (by a Role in
``medcloud-system``) to get that one ConfigMap and nothing else.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medcloud.tenancy import devicecrl, mqtt
from medcloud_cli.localcluster import netsetup, platformservices
from medcloud_cli.localcluster.pki import CertificateAuthority
from medcloud_cli.localcluster.process import StartupError, free_port, port_accepts
from medcloud_gateway.broker import BrokerFiles, mosquitto_config
from medcloud_gateway.brokersync import EXTRA_FLAGS, FILES, write_trust_files

if TYPE_CHECKING:
    from medcloud_cli.localcluster.cluster import LocalCluster

TRUST_NAMESPACE = "medcloud-system"
"""Where the operator keeps the trust bundle (its namespace, ``OperatorSettings.operator_namespace``)."""
SYNC_USER = "medcloud:broker-sync"
DEV_CLIENT = "medcloud-dev-client"
DEV_CLIENT_ACL = f"user {DEV_CLIENT}\ntopic readwrite #\ntopic readwrite $share/#\n\n"
"""The local cluster's own test client reads and writes every topic (tests and `dev up`'s examples)."""
# The cluster's own CA's CRL: it revokes nothing and outlives any local cluster.
DEV_CRL_VALIDITY = dt.timedelta(days=3650)


@dataclass
class BrokerInfo:
    host: str
    port: int
    ca_file: str
    client_cert: str
    client_key: str
    ca_key_file: str = ""
    """The key of the CA the broker checks client certificates with: the operator issues gateways' from it."""


def sync_rbac(namespace: str = TRUST_NAMESPACE) -> list[dict[str, object]]:
    """The namespace, and a Role and RoleBinding letting :data:`SYNC_USER` get the trust ConfigMap alone."""
    name = "medcloud-broker-sync"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [mqtt.TRUST_CONFIGMAP],
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": SYNC_USER}],
        },
    ]


def start_broker(cluster: LocalCluster) -> BrokerInfo:
    """Mosquitto on TLS with the trust files, and (with Kubernetes) the sync that keeps them."""
    state = cluster._require_state()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise StartupError("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    state.ports["mosquitto"] = port
    broker_ca = CertificateAuthority(cluster.pki_dir, "mqtt-ca", "medcloud-dev-device-ca")
    # Pods reach it by its Service address (or, with DNS one day, its Service name).
    names: tuple[str, ...] = ("127.0.0.1", "localhost")
    if cluster.node is not None:
        service = platformservices.BROKER
        names += (netsetup.NODE_IP, service.cluster_ip, service.dns_name, f"{service.dns_name}.cluster.local")
    serving = broker_ca.issue("mqtt-server", "mosquitto", server_names=names, client=False)
    client = broker_ca.issue("mqtt-client", DEV_CLIENT)

    trust = cluster.state_dir / "broker-trust"
    trust.mkdir(exist_ok=True)
    extra = _extras(broker_ca)
    extra_files = _write_extras(cluster.state_dir / "broker-extra", extra)
    # Until the operator writes its bundle: the extras alone, and every device's own-topic patterns.
    write_trust_files({mqtt.CA_BUNDLE_KEY: "", mqtt.CRL_BUNDLE_KEY: "", mqtt.ACL_KEY: mqtt.acl([])}, trust, extra)
    files = BrokerFiles(
        ca_file=trust / FILES[mqtt.CA_BUNDLE_KEY],
        cert_file=serving.cert,
        key_file=serving.key,
        crl_file=trust / FILES[mqtt.CRL_BUNDLE_KEY],
        acl_file=trust / FILES[mqtt.ACL_KEY],
    )
    pid_file = cluster.state_dir / "mosquitto.pid"
    pid_file.unlink(missing_ok=True)
    config = cluster.state_dir / "mosquitto.conf"
    logging = ["log_dest stdout", "log_type error", "log_type warning", "log_type notice", "persistence false"]
    # Stay as this user: the keys are readable by it alone.
    body = mosquitto_config(files, hosts=["127.0.0.1", cluster.server_host], port=port, pid_file=pid_file)
    config.write_text("\n".join([f"user {getpass.getuser()}", *logging, body]))
    broker = cluster.spawn("mosquitto", [mosquitto, "-c", str(config)], (port,))
    broker.wait_ready(lambda: port_accepts(port), 30)

    if cluster.options.with_kubernetes:
        rbac = {"apiVersion": "v1", "kind": "List", "items": sync_rbac()}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(rbac))
        kubeconfig = cluster.kubeconfig_for_user(SYNC_USER)
        args = [sys.executable, "-m", "medcloud_gateway.brokersync", "--directory", str(trust)]
        args += ["--pid-file", str(pid_file), "--namespace", TRUST_NAMESPACE]
        args += [arg for key, path in extra_files.items() for arg in (EXTRA_FLAGS[key], str(path))]
        cluster.spawn("broker-sync", args, (), env=_sync_env(kubeconfig))

    return BrokerInfo(
        host="127.0.0.1",
        port=port,
        ca_file=str(broker_ca.paths.cert),
        client_cert=str(client.cert),
        client_key=str(client.key),
        ca_key_file=str(broker_ca.paths.key),
    )


def _extras(broker_ca: CertificateAuthority) -> dict[str, str]:
    """The cluster's own CA, its (empty) CRL and its test client's ACL entry, by ConfigMap key."""
    crl = devicecrl.build_crl(
        broker_ca.cert_pem,
        broker_ca.paths.key.read_bytes(),
        [],
        now=dt.datetime.now(dt.UTC),
        number=1,
        validity=DEV_CRL_VALIDITY,
    )
    return {
        mqtt.CA_BUNDLE_KEY: broker_ca.cert_pem.decode(),
        mqtt.CRL_BUNDLE_KEY: crl.decode(),
        mqtt.ACL_KEY: DEV_CLIENT_ACL,
    }


def _write_extras(directory: Path, extra: dict[str, str]) -> dict[str, Path]:
    """The extras as the files the sync reads (it prepends them at every write)."""
    directory.mkdir(exist_ok=True)
    paths = {key: directory / FILES[key] for key in extra}
    for key, path in paths.items():
        path.write_text(extra[key])
    return paths


def _sync_env(kubeconfig: Path) -> dict[str, str]:
    # Recorded in state.json (to start it again): nothing of the caller's environment beyond these.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home()), "KUBECONFIG": str(kubeconfig)}
