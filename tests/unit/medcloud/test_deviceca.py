"""The tenant device CA: CSR checks, device and serving certificates (pure, no servers)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medcloud.tenancy import deviceca

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def csr(cn: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def ca() -> deviceca.TenantCA:
    return deviceca.new_ca("city-hospital", now=NOW)


def test_the_ca_is_a_ca_for_certificates_and_crls(ca: deviceca.TenantCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert "city-hospital" in cert.subject.rfc4514_string()


def test_a_device_certificate_names_its_hospital_and_the_device_and_is_for_clients_only(
    ca: deviceca.TenantCA,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = deviceca.sign_device(ca, csr("ox-12", key), "ox-12", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    # The broker's user name: unique across hospitals, though device ids are unique within one only.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "city-hospital/ox-12"
    assert deviceca.hospital_of_ca(ca.cert_pem) == "city-hospital"
    assert cert.serial_number == issued.serial
    assert cert.public_key() == key.public_key()
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert issued.not_after == NOW + deviceca.DEVICE_VALIDITY
    assert deviceca.serial_text(issued.serial) == format(issued.serial, "X")


@pytest.mark.parametrize(
    ("request_pem", "expected"),
    [
        (lambda: csr("ox-13"), "subject CN must be the device id"),
        # The weak key the CA must refuse.
        (lambda: csr("ox-12", rsa.generate_private_key(65537, 1024)), "at least 2048 bits"),  # noqa: S505
        (lambda: csr("ox-12", ec.generate_private_key(ec.SECP256K1())), "EC P-256, EC P-384 or RSA"),
        (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
        (lambda: "x" * (deviceca.MAX_CSR_BYTES + 1), "larger than"),
    ],
)
def test_csrs_the_ca_does_not_sign_are_refused_saying_why(
    ca: deviceca.TenantCA, request_pem: object, expected: str
) -> None:
    assert callable(request_pem)
    with pytest.raises(deviceca.CSRError, match=expected):
        deviceca.sign_device(ca, request_pem(), "ox-12", now=NOW)


def test_no_device_may_take_the_gateways_own_identity(ca: deviceca.TenantCA) -> None:
    with pytest.raises(deviceca.CSRError, match="gateway's own identity"):
        deviceca.sign_device(ca, csr("medcloud-gateway"), "medcloud-gateway", now=NOW)


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: deviceca.TenantCA) -> None:
    good = x509.load_pem_x509_csr(csr("ox-12").encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte is inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(deviceca.CSRError, match="signature"):
        deviceca.sign_device(ca, forged, "ox-12", now=NOW)


def test_the_serving_certificate_is_issued_again_only_when_due(ca: deviceca.TenantCA) -> None:
    names = ["gw-ward-3.hospital-city.svc", "gw-ward-3.hospital-city.svc.cluster.local"]
    serving = deviceca.sign_server(ca, names, now=NOW)
    assert not deviceca.serving_due(serving.cert_pem, ca.cert_pem, names, NOW)
    assert deviceca.serving_due(None, ca.cert_pem, names, NOW)
    assert deviceca.serving_due(serving.cert_pem, ca.cert_pem, names[:1], NOW)
    later = NOW + deviceca.SERVING_VALIDITY - deviceca.SERVING_RENEW_BEFORE
    assert deviceca.serving_due(serving.cert_pem, ca.cert_pem, names, later)
    other = deviceca.new_ca("other-hospital", now=NOW)
    assert deviceca.serving_due(serving.cert_pem, other.cert_pem, names, NOW)


def test_a_client_certificate_names_its_holder_for_client_auth_only(ca: deviceca.TenantCA) -> None:
    issued = deviceca.sign_client(ca, "gw-wards.hospital-city", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["gw-wards.hospital-city"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert cert.issuer == x509.load_pem_x509_certificate(ca.cert_pem).subject
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_a_client_certificate_is_renewed_a_month_before_it_expires_and_not_before(ca: deviceca.TenantCA) -> None:
    issued = deviceca.sign_client(ca, "gw-wards.hospital-city", now=NOW)
    not_after = x509.load_pem_x509_certificate(issued.cert_pem).not_valid_after_utc
    renew_from = not_after - deviceca.SERVING_RENEW_BEFORE
    assert not deviceca.client_due(issued.cert_pem, ca.cert_pem, "gw-wards.hospital-city", NOW)
    assert not deviceca.client_due(
        issued.cert_pem, ca.cert_pem, "gw-wards.hospital-city", renew_from - dt.timedelta(seconds=1)
    )
    assert deviceca.client_due(issued.cert_pem, ca.cert_pem, "gw-wards.hospital-city", renew_from)
    assert deviceca.client_due(issued.cert_pem, ca.cert_pem, "gw-wards.hospital-city", not_after)
    # Another identity, another CA, none or garbage: issued again at once.
    assert deviceca.client_due(issued.cert_pem, ca.cert_pem, "gw-other.hospital-city", NOW)
    assert deviceca.client_due(issued.cert_pem, deviceca.new_ca("x", now=NOW).cert_pem, "gw-wards.hospital-city", NOW)
    assert deviceca.client_due(None, ca.cert_pem, "gw-wards.hospital-city", NOW)
    assert deviceca.client_due(b"not a certificate", ca.cert_pem, "gw-wards.hospital-city", NOW)
