"""The device certificate revocation list (CRL) of a hospital's tenant CA: its format, building and reading it.

cert-manager's CA issuer cannot revoke, so MedCloud keeps its own CRL: a PEM
X.509 v2 CRL signed by the tenant CA, listing the serial numbers of revoked
device certificates, with a ``nextUpdate`` by which a fresh one must be
published (a listener refuses every device once its CRL has expired: fail
closed). The operator writes it (Secret key :data:`CRL_KEY`); the gateway's
listeners read it from a mounted file and reload it when it changes. While a
CA rotation overlaps (:mod:`medcloud.tenancy.deviceca`) the key holds one PEM
CRL per trusted CA, concatenated: OpenSSL's file lookup (Python's
``load_verify_locations``, Mosquitto's ``crlfile``) loads every CRL of a file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from medcloud.certificates import CRL_MARKER, pem_blocks

CRL_KEY = "ca.crl"
"""Key of the CRL (PEM) in the Secret the operator maintains and the gateway mounts."""
DEFAULT_VALIDITY = dt.timedelta(days=7)


@dataclass(frozen=True)
class Revocation:
    serial: int
    revoked_at: dt.datetime


def build_crl(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    revoked: Iterable[Revocation],
    *,
    now: dt.datetime,
    number: int,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> bytes:
    """A PEM CRL of the CA listing ``revoked``; ``number`` must grow with each CRL the CA issues."""
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be an EC or RSA private key")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for item in sorted(revoked, key=lambda r: r.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(item.serial).revocation_date(item.revoked_at).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def revoked_certificates(crl_bundle: bytes, ca_bundle: bytes) -> frozenset[tuple[bytes, int]]:
    """(issuer DER, serial) of every certificate the bundle's CRLs revoke, each CRL checked against its CA.

    During a CA rotation the trust Secret holds two CAs (``ca.crt``) and one CRL of each (``ca.crl``): a CRL is
    matched to the CA named its issuer and must be signed by it. ValueError when a CRL's issuer is not in the CA
    bundle or did not sign it, or when a CA has no CRL (OpenSSL would then refuse its every device).
    """
    cas = {ca.subject.public_bytes(): ca for ca in x509.load_pem_x509_certificates(ca_bundle)}
    revoked: set[tuple[bytes, int]] = set()
    covered: set[bytes] = set()
    for block in pem_blocks(crl_bundle, CRL_MARKER):
        crl = x509.load_pem_x509_crl(block)
        issuer = crl.issuer.public_bytes()
        ca = cas.get(issuer)
        public = ca.public_key() if ca is not None else None
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or not crl.is_signature_valid(public):
            raise ValueError(
                f"the CRL of {crl.issuer.rfc4514_string()} is not signed by the device CA of that name in the bundle"
            )
        covered.add(issuer)
        revoked |= {(issuer, r.serial_number) for r in crl}
    if missing := [ca.subject.rfc4514_string() for name, ca in cas.items() if name not in covered]:
        raise ValueError(f"no CRL of the device CA {', '.join(missing)}")
    return frozenset(revoked)


def revoked_serials(crl_bundle: bytes, ca_bundle: bytes) -> frozenset[int]:
    """The serials the bundle's CRLs revoke, after checking that each CRL's CA signed it (ValueError otherwise)."""
    return frozenset(serial for _, serial in revoked_certificates(crl_bundle, ca_bundle))
