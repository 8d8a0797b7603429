"""Certificates and keys of the local cluster, made with `cryptography`.

One cluster CA signs the API server's serving certificate and every client
identity (admin, controllers, test users); a separate CA signs the MQTT
broker's certificates so that device identities never authenticate to the
Kubernetes API. Keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medcloud.certificates import leaf_builder, private_key_pem, self_signed_ca

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, name: str, common_name: str) -> None:
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        if self.paths.cert.exists() and self.paths.key.exists():
            self._key = serialization.load_pem_private_key(self.paths.key.read_bytes(), password=None)
            self._cert = x509.load_pem_x509_certificate(self.paths.cert.read_bytes())
            return
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = self_signed_ca(key, subject, now=dt.datetime.now(dt.UTC), validity=10 * _VALIDITY, path_length=None)
        _write_private(self.paths.key, private_key_pem(key))
        self.paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key = key
        self._cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: tuple[str, ...] = (),
        *,
        server_names: tuple[str, ...] = (),
        client: bool = True,
    ) -> KeyPair:
        """Issue a certificate; ``server_names`` (DNS names or IPs) make it a serving certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        now = dt.datetime.now(dt.UTC)
        issuer_key = self._key
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
        builder = leaf_builder(
            x509.Name(attributes), self._cert.subject, key.public_key(), usages, now=now, not_after=now + _VALIDITY
        ).add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        if server_names:
            alt_names: list[x509.GeneralName] = []
            for entry in server_names:
                try:
                    alt_names.append(x509.IPAddress(ipaddress.ip_address(entry)))
                except ValueError:
                    alt_names.append(x509.DNSName(entry))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        _write_private(pair.key, private_key_pem(key))
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair


def service_account_signer(directory: Path) -> KeyPair:
    """RSA key pair the API server signs service-account tokens with (``cert`` holds the public key)."""
    pair = KeyPair(directory / "sa-signer.pub", directory / "sa-signer.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(pair.key, private_key_pem(key))
    pair.cert.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pair
