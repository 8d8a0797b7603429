"""The platform MQTT broker's contract with hospitals: topics, identities, the ACL and the trust bundle (pure).

One broker serves every hospital, and device ids are unique within a hospital
only, so every name the broker sees carries the hospital:

- a device publishes on ``devices/<hospital>/<deviceId>/readings`` and reads
  ``devices/<hospital>/<deviceId>/errors``;
- its certificate (signed by the hospital's device CA,
  :mod:`medcloud.tenancy.deviceca`) has the subject CN ``<hospital>/<deviceId>``,
  which Mosquitto takes as the user (``use_identity_as_username``), so the ACL
  pattern ``devices/%u/readings`` is exactly the device's own topic: a device
  cannot write another device's topic, nor another hospital's. Hospital names are
  DNS labels and device ids have no ``/``, so the CN splits one way only;
- a gateway's identity (CN ``gw-<name>.<namespace>``, from the broker's own
  client CA) reads only its hospital's readings (``$share/<its group>/devices/
  <hospital>/+/readings``) and writes only its hospital's error topics: one
  ``user`` block of the ACL per MQTT gateway, which the operator writes.

The trust bundle is what the operator hands the broker in the ConfigMap
:data:`TRUST_CONFIGMAP`: every hospital's device CA certificate and the broker's
client CA in one ``cafile`` (:data:`CA_BUNDLE_KEY`), every one of those CAs'
CRLs in one ``crlfile`` (:data:`CRL_BUNDLE_KEY`: with a CRL file Mosquitto wants
a CRL for every issuer, or it refuses the certificate), and the ACL
(:data:`ACL_KEY`). Only certificates and CRLs: nothing in it is secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TRUST_CONFIGMAP = "medcloud-broker-trust"
"""The ConfigMap (in the operator's namespace) with the broker's trust bundle and ACL."""
CA_BUNDLE_KEY = "ca-bundle.crt"
CRL_BUNDLE_KEY = "crl-bundle.crl"
ACL_KEY = "acl"
DIGEST_ANNOTATION = "medcloud.io/broker-trust-digest"
"""On the ConfigMap: a digest of its data, which the broker's sync compares before writing files."""
IDENTITY_SEPARATOR = "/"


def device_identity(hospital: str, device_id: str) -> str:
    """A device's name at the broker and its certificate's CN: ``<hospital>/<deviceId>``."""
    return f"{hospital}{IDENTITY_SEPARATOR}{device_id}"


def parse_device_identity(common_name: str) -> tuple[str | None, str]:
    """(hospital, device id) of a device certificate's CN; hospital None for a CN of the device id alone (older)."""
    hospital, separator, device_id = common_name.partition(IDENTITY_SEPARATOR)
    if not separator:
        return None, common_name
    return hospital, device_id


def readings_topic(hospital: str, device_id: str) -> str:
    return f"devices/{device_identity(hospital, device_id)}/readings"


def errors_topic(hospital: str, device_id: str) -> str:
    return f"devices/{device_identity(hospital, device_id)}/errors"


def readings_filter(hospital: str) -> str:
    """Every readings topic of one hospital."""
    return f"devices/{hospital}/+/readings"


def shared_readings_filter(hospital: str, share_group: str) -> str:
    """What a gateway subscribes: its hospital's readings, shared among its replicas unless the group is empty."""
    return f"$share/{share_group}/{readings_filter(hospital)}" if share_group else readings_filter(hospital)


@dataclass(frozen=True)
class GatewayGrant:
    """One MQTT gateway's broker identity and the hospital whose topics it may read."""

    identity: str
    hospital: str


def grant_block(grant: GatewayGrant) -> str:
    """One gateway's lines of the ACL, ending with a blank line."""
    lines = [
        f"user {grant.identity}",
        f"topic read {readings_filter(grant.hospital)}",
        # A shared subscription is checked against the whole filter, $share/<group>/ included.
        f"topic read $share/+/{readings_filter(grant.hospital)}",
        f"topic write devices/{grant.hospital}/+/errors",
        "",
    ]
    return "\n".join(lines)


def acl(gateways: Iterable[GatewayGrant]) -> str:
    """Mosquitto's ACL file: each device its own topics; each gateway its hospital's topics and nothing else."""
    lines: list[str] = []
    for grant in sorted(set(gateways), key=lambda g: (g.identity, g.hospital)):
        lines.append(grant_block(grant))
    # Patterns apply to every user, gateways included: a gateway's identity has no "/" and is no hospital's
    # device, so devices/<gateway>/readings names nothing anyone reads.
    lines += ["pattern write devices/%u/readings", "pattern read devices/%u/errors", ""]
    return "\n".join(lines)
