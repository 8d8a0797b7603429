"""The platform broker's side of the trust bundle: the operator's ConfigMap to Mosquitto's files, then SIGHUP.

The operator keeps every hospital's device CA, every CRL and the ACL in the
ConfigMap :data:`medcloud.tenancy.mqtt.TRUST_CONFIGMAP`. This loop, beside the
broker, reads it every ``interval`` seconds, writes what changed into the
directory Mosquitto's ``cafile``, ``crlfile`` and ``acl_file`` name (each file
replaced atomically, so the broker never reads half a bundle) and sends the
broker SIGHUP, on which Mosquitto 2.0 reads the three again
(:mod:`medcloud_gateway.broker` says exactly what it re-reads). Extras are
prepended to the operator's files, key by key: what the operator does not know
(a local cluster's own client CA, its CRL and its test client's ACL entry), so
the broker keeps trusting them whatever an operator writes.

Run: ``python -m medcloud_gateway.brokersync --directory D --pid-file P [--namespace N]
[--extra-ca F] [--extra-crl F] [--extra-acl F]`` with a kubeconfig (``KUBECONFIG``)
allowed to ``get`` that one ConfigMap.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from medcloud.kube.client import CONFIG_MAP, Kube
from medcloud.tenancy import mqtt

# By its module name even when run as ``python -m`` (where __name__ is "__main__").
log = logging.getLogger("medcloud_gateway.brokersync")

FILES = {mqtt.CA_BUNDLE_KEY: "ca-bundle.crt", mqtt.CRL_BUNDLE_KEY: "crl-bundle.crl", mqtt.ACL_KEY: "acl"}
"""ConfigMap key -> file name in the broker's trust directory."""
EXTRA_FLAGS = {mqtt.CA_BUNDLE_KEY: "--extra-ca", mqtt.CRL_BUNDLE_KEY: "--extra-crl", mqtt.ACL_KEY: "--extra-acl"}
"""ConfigMap key -> the option naming a file to prepend to it."""
EXTRA_HELP = {
    mqtt.CA_BUNDLE_KEY: "PEM certificates trusted beside the bundle's",
    mqtt.CRL_BUNDLE_KEY: "PEM CRLs of the extra CAs",
    mqtt.ACL_KEY: "ACL lines before the operator's",
}


def write_trust_files(data: Mapping[str, str], directory: Path, extra: Mapping[str, str] | None = None) -> bool:
    """The bundle's files brought to ``data`` (each after its ``extra``); True if any changed. A bundle
    missing a key changes nothing."""
    if any(key not in data for key in FILES):
        return False
    wanted = {key: (extra or {}).get(key, "") + data[key] for key in FILES}
    changed = False
    for key, name in FILES.items():
        target = directory / name
        content = wanted[key].encode()
        if target.exists() and target.read_bytes() == content:
            continue
        partial = target.with_name(f".{name}.tmp")
        partial.write_bytes(content)
        partial.replace(target)
        changed = True
    return changed


def reload_broker(pid_file: Path) -> bool:
    """SIGHUP to the broker whose pid ``pid_file`` holds (Mosquitto's ``pid_file``); False if it is not running."""
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
    except (OSError, ValueError):
        return False
    return True


def sync_once(
    kube: Kube, namespace: str, directory: Path, pid_file: Path, extra: Mapping[str, str] | None = None
) -> bool:
    """One pass: the ConfigMap read, the files written if it changed, the broker told; True if it was."""
    live = kube.get(CONFIG_MAP, mqtt.TRUST_CONFIGMAP, namespace)
    if live is None or not write_trust_files(live.get("data") or {}, directory, extra):
        return False
    if not reload_broker(pid_file):
        log.warning("trust bundle written to %s but no broker to reload (%s)", directory, pid_file)
    else:
        log.info("trust bundle written to %s; broker reloaded", directory)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path, required=True)
    parser.add_argument("--namespace", default="medcloud-system")
    for key, flag in EXTRA_FLAGS.items():
        parser.add_argument(flag, dest=key, metavar="FILE", type=Path, default=None, help=EXTRA_HELP[key])
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.load_kube_config()  # type: ignore[no-untyped-call]
    kube = Kube(client.ApiClient(), field_manager="medcloud-broker-sync")
    extra = {key: path.read_text() for key in EXTRA_FLAGS if (path := getattr(args, key)) is not None}
    while True:
        try:
            sync_once(kube, args.namespace, args.directory, args.pid_file, extra)
        except (ApiException, HTTPError, OSError) as exc:
            log.warning("broker trust bundle not read: %s", exc)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
