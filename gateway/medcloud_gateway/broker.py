"""The platform MQTT broker's configuration (Mosquitto 2): every hospital's device CA and CRL, hospital topics (pure).

The gateway subscribes to the broker; it never sees a publisher's certificate.
So the broker is where a device is authenticated and bound to its topic
(names in :mod:`medcloud.tenancy.mqtt`):

- ``require_certificate`` with one ``cafile`` holding every hospital's device
  CA (and the broker's own client CA, which issues the gateways' identities),
  and one ``crlfile`` holding every one of those CAs' CRLs: a device without a
  valid, unrevoked certificate of some hospital cannot connect;
- ``use_identity_as_username``: the certificate's CN, ``<hospital>/<deviceId>``,
  is the MQTT user, and the ACL lets it write ``devices/<hospital>/<deviceId>/readings``
  and read its errors topic only; each gateway's identity reads its own
  hospital's readings and writes its error topics, nothing of another hospital.

What Mosquitto 2.0 re-reads on SIGHUP (src/loop.c, ``config__read(reload)`` then
``mosquitto_security_apply_default``): the ACL file, and, for a listener with
``crlfile`` and ``require_certificate``, a new TLS context with ``cafile``,
``capath``, ``certfile``, ``keyfile`` and ``crlfile`` read again (fixed in 1.6.5,
"CRL file not being reloaded on HUP"). Listener options themselves (ports,
``use_identity_as_username``, the file paths) are not reloadable. So a new
hospital's CA, a new CRL or a new gateway takes effect at the next SIGHUP, for
new connections; a device already connected keeps its session until it
reconnects (Mosquitto re-derives its user name from the certificate it holds but
does not re-check revocation), which bounds revocation on MQTT by the device's
reconnect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BrokerFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path
    acl_file: Path


def mosquitto_config(
    files: BrokerFiles,
    *,
    hosts: Sequence[str],
    port: int,
    max_queued: int = 10000,
    pid_file: Path | None = None,
) -> str:
    """A mosquitto.conf with a TLS listener per address that only enrolled, unrevoked devices (and gateways)
    can use; with ``pid_file``, where the broker's sync finds the process to send SIGHUP.

    The ACL is :func:`medcloud.tenancy.mqtt.acl`'s; the CA and CRL files are bundles of every hospital's.
    """
    # TLS settings belong to each listener (per_listener_settings false covers security, not TLS).
    listeners = [
        line
        for host in dict.fromkeys(hosts)
        for line in (
            f"listener {port} {host}",
            f"cafile {files.ca_file}",
            f"certfile {files.cert_file}",
            f"keyfile {files.key_file}",
            f"crlfile {files.crl_file}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
        )
    ]
    return "\n".join(
        [
            "per_listener_settings false",
            "allow_anonymous false",
            *([f"pid_file {pid_file}"] if pid_file is not None else []),
            # QoS 1 readings held while the gateway has not acknowledged them (it does once stored).
            f"max_queued_messages {max_queued}",
            # Unacknowledged readings sent to the gateway at once (default 20): it takes up to 500 a batch and
            # acknowledges them once the batch is stored (mqtt.MAX_BATCH).
            "max_inflight_messages 1000",
            f"acl_file {files.acl_file}",
            *listeners,
            "",
        ]
    )
