"""The device CRL: built and signed by the tenant CA, read back only if that CA signed it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from medcloud.tenancy.devicecrl import Revocation, build_crl, revoked_serials
from medcloud_cli.localcluster.pki import CertificateAuthority

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def test_a_crl_lists_the_revoked_serials_and_expires(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "devices", "city-hospital device CA")
    pair = ca.issue("ox-12", "ox-12")
    serial = x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number
    crl_pem = build_crl(ca.cert_pem, ca.paths.key.read_bytes(), [Revocation(serial, NOW)], now=NOW, number=3)
    assert revoked_serials(crl_pem, ca.cert_pem) == {serial}
    crl = x509.load_pem_x509_crl(crl_pem)
    assert crl.next_update_utc == NOW + dt.timedelta(days=7)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    empty = build_crl(ca.cert_pem, ca.paths.key.read_bytes(), [], now=NOW, number=4)
    assert revoked_serials(empty, ca.cert_pem) == frozenset()


def test_a_crl_of_another_ca_is_refused(tmp_path: Path) -> None:
    ours = CertificateAuthority(tmp_path / "a", "devices", "city-hospital device CA")
    theirs = CertificateAuthority(tmp_path / "b", "devices", "city-hospital device CA")
    forged = build_crl(theirs.cert_pem, theirs.paths.key.read_bytes(), [Revocation(1, NOW)], now=NOW, number=1)
    with pytest.raises(ValueError, match="not signed by the device CA"):
        revoked_serials(forged, ours.cert_pem)
