"""X.509 pieces every CA MedCloud makes shares: the tenant device CAs and the local cluster's CAs (pure).

Certificates start five minutes in the past, so that a peer whose clock is a
little behind the signer's does not refuse a certificate issued a moment ago.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

CLOCK_SKEW = dt.timedelta(minutes=5)

CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
"""What a CA's key is for: signing certificates and CRLs, and digital signatures."""
CERTIFICATE_MARKER = b"CERTIFICATE"
CRL_MARKER = b"X509 CRL"
"""The labels of PEM blocks (``-----BEGIN <label>-----``) that :func:`pem_blocks` splits bundles by."""


def pem_blocks(bundle: bytes, marker: bytes) -> list[bytes]:
    """Each ``marker`` PEM block of a bundle (several certificates or CRLs in one file), in order, newline-ended."""
    begin = b"-----BEGIN " + marker + b"-----"
    end = b"-----END " + marker + b"-----"
    blocks = []
    rest = bundle
    while (start := rest.find(begin)) >= 0:
        stop = rest.index(end, start) + len(end)
        blocks.append(rest[start:stop] + b"\n")
        rest = rest[stop:]
    return blocks


def private_key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (callers keep it in a 0600 file or a Secret)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    *,
    now: dt.datetime,
    validity: dt.timedelta,
    path_length: int | None,
) -> x509.Certificate:
    """A self-signed CA certificate for ``key``; ``path_length`` 0 lets it sign leaves only."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def leaf_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    usages: Sequence[x509.ObjectIdentifier],
    *,
    now: dt.datetime,
    not_after: dt.datetime,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """An end-entity certificate for ``usages`` (extended key usages), to add names to and sign.

    ``serial`` defaults to a random one; pass it when the caller must remember it (a CRL revokes by serial).
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    )
