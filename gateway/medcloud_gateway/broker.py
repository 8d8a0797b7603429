"""The device-facing MQTT broker's configuration (Mosquitto 2): device certificates, topic per device, CRL (pure).

The gateway subscribes to the broker; it never sees a publisher's certificate.
So the broker is where a device is authenticated and bound to its topic:

- ``require_certificate`` with the hospital's device CA, and the CRL
  (``crlfile``): a device without a valid, unrevoked certificate cannot connect;
- ``use_identity_as_username``: the certificate's common name is the MQTT user,
  and the ACL lets user ``<deviceId>`` write ``devices/<deviceId>/readings``
  and read ``devices/<deviceId>/errors`` only (``pattern ... %u``), so a device
  publishes for itself alone; the gateway's identity reads every readings topic
  and writes the error topics.

Mosquitto re-reads the ACL and the CRL on SIGHUP (the operator sends one when
the CRL Secret changes); an already connected device keeps its session until it
reconnects, which bounds revocation on MQTT by the device's reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BrokerFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path
    acl_file: Path


def acl(gateway_identity: str) -> str:
    """The ACL: each device its own topics, the gateway every readings topic and the error topics."""
    return "\n".join(
        [
            f"user {gateway_identity}",
            "topic read devices/+/readings",
            "topic read $share/+/devices/+/readings",
            "topic write devices/+/errors",
            "",
            "pattern write devices/%u/readings",
            "pattern read devices/%u/errors",
            "",
        ]
    )


def mosquitto_config(files: BrokerFiles, *, host: str, port: int, max_queued: int = 10000) -> str:
    """A mosquitto.conf with one TLS listener that only enrolled, unrevoked devices can use."""
    return "\n".join(
        [
            "per_listener_settings false",
            "allow_anonymous false",
            # QoS 1 readings held while the gateway has not acknowledged them (it does once stored).
            f"max_queued_messages {max_queued}",
            # Unacknowledged readings sent to the gateway at once (default 20): it takes up to 500 a batch and
            # acknowledges them once the batch is stored (mqtt.MAX_BATCH).
            "max_inflight_messages 1000",
            f"acl_file {files.acl_file}",
            f"listener {port} {host}",
            f"cafile {files.ca_file}",
            f"certfile {files.cert_file}",
            f"keyfile {files.key_file}",
            f"crlfile {files.crl_file}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
            "",
        ]
    )
