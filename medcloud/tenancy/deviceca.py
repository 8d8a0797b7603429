"""A hospital's tenant device CA: its Secrets' formats, making it, and signing device CSRs (pure).

The operator makes one CA per hospital and keeps it in the Secret
:data:`CA_SECRET` of the hospital's namespace (``tls.crt``, ``tls.key``): only
the operator reads that Secret. What a gateway needs, the CA certificate and
the CRL (:mod:`medcloud.tenancy.devicecrl`), is in a second Secret,
:data:`TRUST_SECRET` (``ca.crt``, ``ca.crl``), which the gateway's pods mount:
a gateway never holds the CA key. Both live in the hospital's namespace, so
offboarding (the namespace deleted) removes the key with everything the
hospital had; there is no copy elsewhere.

A device certificate names the hospital and the device in its subject CN,
``<hospital>/<deviceId>`` (:func:`medcloud.tenancy.mqtt.device_identity`: the
platform MQTT broker's user name, unique across hospitals; the hospital is the
CA's own ``O``), while the device's CSR names the device id alone; it is for
TLS client authentication only, and carries a random 159-bit
serial, the number the CRL revokes.

Rotation (docs/devices.md, "Rotating the device CA"): a new CA, of the next
*generation*, becomes :data:`CA_SECRET`; the one it replaces moves to
:data:`PREVIOUS_CA_SECRET` and stays trusted (its certificate in ``ca.crt``,
its CRL in ``ca.crl``, both bundles) while an unexpired, unrevoked device
certificate it issued remains (:func:`trusted_until`), then it is dropped and
its key deleted. Each generation has its own subject (:func:`ca_common_name`),
so OpenSSL finds each device's CA and each CRL's signer by name, and a
certificate of the previous CA is told from the current one's by its issuer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medcloud.certificates import leaf_builder, private_key_pem, self_signed_ca
from medcloud.tenancy.mqtt import device_identity

CA_SECRET = "medcloud-device-ca"  # noqa: S105 - a Secret's name
"""The Secret (type kubernetes.io/tls) holding the tenant CA's certificate and key; the operator's alone."""
PREVIOUS_CA_SECRET = "medcloud-device-ca-previous"  # noqa: S105 - a Secret's name
"""The CA a rotation replaced, while its devices still need it (same format as :data:`CA_SECRET`)."""
TRUST_SECRET = "medcloud-device-trust"  # noqa: S105 - a Secret's name
"""The Secret the gateway mounts: the CA certificate (:data:`CA_CERT_KEY`) and the CRL (``ca.crl``)."""
CA_CERT_KEY = "ca.crt"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
CRL_NUMBER_ANNOTATION = "medcloud.io/crl-number"
"""On the trust Secret: the number of the CRL it holds (each new CRL's number is one more)."""
CRL_NEXT_UPDATE_ANNOTATION = "medcloud.io/crl-next-update"
"""On the trust Secret: the CRL's nextUpdate (ISO 8601), so a timer knows when to sign a fresh one."""
GENERATION_ANNOTATION = "medcloud.io/device-ca-generation"
"""On a CA Secret: its CA's generation, 1 for a hospital's first CA, one more on each rotation."""
ROTATE_NOW_ANNOTATION = "medcloud.io/device-ca-rotate-now"
"""On a CA Secret: the Hospital's ``spec.deviceCaRotation.rotateNow`` its CA answers (a larger one asks anew)."""
SUCCESSOR_ROTATE_NOW_ANNOTATION = "medcloud.io/device-ca-successor-rotate-now"
"""On the previous CA Secret: the ``rotateNow`` its successor answers, so a rotation cut short is finished as asked."""
CA_VALIDITY = dt.timedelta(days=3650)
DEVICE_VALIDITY = dt.timedelta(days=365)
CA_RENEW_BEFORE = DEVICE_VALIDITY + dt.timedelta(days=30)
"""A CA is rotated by itself once it has this long left: past it, a device certificate would be cut short by the
CA's end (:func:`sign_device`), so a new CA takes over while its predecessor still covers every device it signed."""
MIN_RSA_BITS = 2048
MAX_CSR_BYTES = 8192
RESERVED_DEVICE_IDS = frozenset({"medcloud-gateway"})
"""Names no device may take: the gateway's own MQTT identity, which the broker's ACL lets read every device's topic."""


class CSRError(ValueError):
    """A certificate signing request the CA will not sign; the message says why."""


@dataclass(frozen=True)
class TenantCA:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    serial: int
    not_after: dt.datetime


def ca_common_name(hospital: str, generation: int) -> str:
    """The subject CN of ``hospital``'s CA of ``generation``: the first keeps the name CAs always had."""
    return f"{hospital} device CA" if generation == 1 else f"{hospital} device CA {generation}"


def new_ca(hospital: str, *, now: dt.datetime, generation: int = 1) -> TenantCA:
    """A fresh P-256 CA for ``hospital``'s devices, valid for :data:`CA_VALIDITY`, named for its ``generation``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, hospital),
            x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name(hospital, generation)),
        ]
    )
    cert = self_signed_ca(key, name, now=now, validity=CA_VALIDITY, path_length=0)
    return TenantCA(cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key))


def rotation_due(ca_cert_pem: bytes, *, rotate_now: int, observed_rotate_now: int, now: dt.datetime) -> str | None:
    """Why the CA must be replaced now (for the Event), or None: asked for (``rotate_now`` grew past what the
    CA answers), or it has :data:`CA_RENEW_BEFORE` or less left."""
    if rotate_now > observed_rotate_now:
        return f"spec.deviceCaRotation.rotateNow is {rotate_now}"
    not_after = x509.load_pem_x509_certificate(ca_cert_pem).not_valid_after_utc
    if not_after - now <= CA_RENEW_BEFORE:
        return f"it expires at {not_after.isoformat()}, within {CA_RENEW_BEFORE.days} days"
    return None


def trusted_until(ca_cert_pem: bytes, certificates: Iterable[bytes], now: dt.datetime) -> dt.datetime | None:
    """Until when a replaced CA must stay trusted: the latest expiry of the unrevoked device ``certificates``
    it issued and that are still valid, never past its own; None once no such certificate remains (or it expired),
    when it is dropped from trust and its key deleted. Certificates of other CAs, or unreadable, are ignored."""
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    if ca.not_valid_after_utc <= now:
        return None
    ends = []
    for pem in certificates:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        if cert.issuer == ca.subject and cert.not_valid_after_utc > now:
            ends.append(cert.not_valid_after_utc)
    return min(max(ends), ca.not_valid_after_utc) if ends else None


def check_csr(csr_pem: str, device_id: str) -> x509.CertificateSigningRequest:
    """The CSR, if it is one the CA signs for ``device_id``; :class:`CSRError` saying why not otherwise."""
    if device_id in RESERVED_DEVICE_IDS:
        raise CSRError(f"{device_id!r} is the gateway's own identity, not a device's")
    if len(csr_pem.encode()) > MAX_CSR_BYTES:
        raise CSRError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise CSRError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise CSRError("the CSR's signature does not verify: it was not made with the key it carries")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [str(n.value) for n in names] != [device_id]:
        raise CSRError(f"the CSR's subject CN must be the device id {device_id!r}, got {[n.value for n in names]}")
    public = csr.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            raise CSRError(f"an RSA key must have at least {MIN_RSA_BITS} bits, this one has {public.key_size}")
    elif not (isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in ("secp256r1", "secp384r1")):
        raise CSRError("the key must be EC P-256, EC P-384 or RSA of at least 2048 bits")
    return csr


def ca_name(cert_pem: bytes) -> str:
    """A CA's subject CN, as Events and status name it (the certificate is public; nothing of its key)."""
    names = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def hospital_of_ca(cert_pem: bytes) -> str:
    """The hospital a tenant device CA belongs to: its subject's organisation (:func:`new_ca`)."""
    names = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(names) != 1:
        raise ValueError("a tenant device CA names its hospital as its one subject O")
    return str(names[0].value)


def sign_device(ca: TenantCA, csr_pem: str, device_id: str, *, now: dt.datetime) -> Issued:
    """The device's client certificate: CN ``<hospital>/<device_id>`` and the CSR's key, nothing else from the CSR.

    The CSR names the device id alone (what a device knows of itself); the CA adds its hospital, so a device
    of one hospital never shares a broker identity with another hospital's device of the same id.
    """
    csr = check_csr(csr_pem, device_id)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the tenant CA key must be an EC private key")
    serial = x509.random_serial_number()
    not_after = min(now + DEVICE_VALIDITY, issuer.not_valid_after_utc)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, device_identity(hospital_of_ca(ca.cert_pem), device_id))]
    )
    builder = leaf_builder(
        subject,
        issuer.subject,
        csr.public_key(),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        now=now,
        not_after=not_after,
        serial=serial,
    ).add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), serial, not_after)


def serial_text(serial: int) -> str:
    """A serial as status and ``kubectl`` show it: upper-case hex, as ``openssl x509 -serial`` prints it."""
    return format(serial, "X")


SERVING_VALIDITY = dt.timedelta(days=90)
SERVING_RENEW_BEFORE = dt.timedelta(days=30)


def serving_secret_name(child: str) -> str:
    """The Secret (kubernetes.io/tls) with a gateway's serving certificate, named after its Deployment."""
    return f"{child}-serving"


def broker_secret_name(child: str) -> str:
    """The Secret (kubernetes.io/tls plus ``ca.crt``) with a gateway's MQTT client certificate towards the broker."""
    return f"{child}-broker"


def sign_server(ca: TenantCA, dns_names: list[str], *, now: dt.datetime) -> TenantCA:
    """A fresh key and a server certificate for ``dns_names`` (the gateway's Service names), by the tenant CA.

    Devices then need one CA: the hospital's, for the gateway they talk to and for themselves.
    """
    return _sign_leaf(ca, dns_names[0], ExtendedKeyUsageOID.SERVER_AUTH, dns_names, now=now)


def sign_client(ca: TenantCA, common_name: str, *, now: dt.datetime) -> TenantCA:
    """A fresh key and a TLS client certificate with subject CN ``common_name`` (what a broker takes as user)."""
    return _sign_leaf(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], now=now)


def _sign_leaf(
    ca: TenantCA, common_name: str, usage: x509.ObjectIdentifier, dns_names: list[str], *, now: dt.datetime
) -> TenantCA:
    issuer = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the issuing CA key must be an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = leaf_builder(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        issuer.subject,
        key.public_key(),
        [usage],
        now=now,
        not_after=min(now + SERVING_VALIDITY, issuer.not_valid_after_utc),
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return TenantCA(cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key))


def serving_due(cert_pem: bytes | None, ca_cert_pem: bytes, dns_names: list[str], now: dt.datetime) -> bool:
    """Whether a gateway's serving certificate must be issued again: none, another CA's, other names, or near expiry."""
    return leaf_due(cert_pem, ca_cert_pem, now, dns_names=dns_names)


def client_due(cert_pem: bytes | None, ca_cert_pem: bytes, common_name: str, now: dt.datetime) -> bool:
    """Whether a client certificate must be issued again: none, another CA's, another CN, or near expiry."""
    return leaf_due(cert_pem, ca_cert_pem, now, common_name=common_name)


def leaf_due(
    cert_pem: bytes | None,
    ca_cert_pem: bytes,
    now: dt.datetime,
    *,
    dns_names: list[str] | None = None,
    common_name: str | None = None,
) -> bool:
    """Whether a certificate the operator issued must be issued again.

    Due when there is none, it is unreadable, another CA issued it, its names
    are not the wanted ones, or it has :data:`SERVING_RENEW_BEFORE` or less
    left: renewed a month before it expires, by the reconcile that notices.
    """
    if not cert_pem:
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        if dns_names is not None:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if sorted(san.get_values_for_type(x509.DNSName)) != sorted(dns_names):
                return True
    except (ValueError, x509.ExtensionNotFound):
        return True
    if common_name is not None:
        names = [str(n.value) for n in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [common_name]:
            return True
    issuer = x509.load_pem_x509_certificate(ca_cert_pem)
    return cert.issuer != issuer.subject or cert.not_valid_after_utc - now <= SERVING_RENEW_BEFORE
