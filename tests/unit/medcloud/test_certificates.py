"""The shared X.509 builders: what every MedCloud CA and leaf certificate carries."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medcloud.certificates import CA_KEY_USAGE, CLOCK_SKEW, leaf_builder, private_key_pem, self_signed_ca

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.mark.parametrize("path_length", [None, 0])
def test_a_self_signed_ca_may_sign_certificates_and_crls_only_as_deep_as_asked(path_length: int | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed_ca(key, _name("test CA"), now=NOW, validity=dt.timedelta(days=10), path_length=path_length)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == path_length
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value == CA_KEY_USAGE
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.key_encipherment
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    assert ca.issuer == ca.subject == _name("test CA")
    assert ca.not_valid_before_utc == NOW - CLOCK_SKEW
    assert ca.not_valid_after_utc == NOW + dt.timedelta(days=10)
    ca.verify_directly_issued_by(ca)


def test_a_leaf_is_no_ca_carries_its_usages_and_the_serial_asked_for_and_verifies_under_its_issuer() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed_ca(ca_key, _name("test CA"), now=NOW, validity=dt.timedelta(days=10), path_length=0)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    not_after = NOW + dt.timedelta(days=1)
    leaf = leaf_builder(
        _name("device-1"), ca.subject, key.public_key(), usages, now=NOW, not_after=not_after, serial=4242
    ).sign(ca_key, hashes.SHA256())
    assert leaf.serial_number == 4242
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (NOW - CLOCK_SKEW, not_after)
    leaf.verify_directly_issued_by(ca)
    other = leaf_builder(_name("d"), ca.subject, key.public_key(), usages, now=NOW, not_after=not_after)
    assert other.sign(ca_key, hashes.SHA256()).serial_number != 4242


def test_a_private_key_pem_is_unencrypted_pkcs8_of_the_same_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
