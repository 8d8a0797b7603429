"""Device CA rotation, pure: when it is due, what the trust Secret holds at each stage, when the old CA retires."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medcloud.models import DeviceStatus
from medcloud.tenancy import deviceca, devicecrl
from medcloud_operator.builders import device as b

NS = "hospital-city"
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
Json = dict[str, Any]


@pytest.fixture(scope="module")
def old() -> deviceca.TenantCA:
    return deviceca.new_ca("city", now=T0 - dt.timedelta(days=30))


@pytest.fixture(scope="module")
def new() -> deviceca.TenantCA:
    return deviceca.new_ca("city", now=T0, generation=2)


def csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def device(name: str, ca: deviceca.TenantCA, *, revoked: bool = False, signed_at: dt.datetime = T0) -> Json:
    """A Device the operator signed with ``ca`` at ``signed_at`` (and then revoked, with ``revoked``)."""
    body: Json = {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"gateway": "ward-3", "deviceClass": "spo2", "owner": "ward 3", "csr": csr(name), "approved": True},
    }
    status = b.next_status(body, DeviceStatus(), ca, signed_at)
    if revoked:
        body["spec"]["revoked"] = True
        status = b.next_status(body, status, ca, signed_at)
    body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def serial(body: Json) -> int:
    return int(body["status"]["serial"], 16)


def not_after(body: Json) -> dt.datetime:
    return DeviceStatus.model_validate(body["status"]).not_after or T0


def subject(ca: deviceca.TenantCA) -> x509.Name:
    return x509.load_pem_x509_certificate(ca.cert_pem).subject


def test_each_generation_has_its_own_name_and_the_first_keeps_the_old_one(
    old: deviceca.TenantCA, new: deviceca.TenantCA
) -> None:
    assert deviceca.ca_name(old.cert_pem) == "city device CA"
    assert deviceca.ca_name(new.cert_pem) == "city device CA 2"
    assert deviceca.hospital_of_ca(new.cert_pem) == "city"
    issued = deviceca.sign_device(new, csr("ox-1"), "ox-1", now=T0)
    assert x509.load_pem_x509_certificate(issued.cert_pem).issuer == subject(new) != subject(old)


def test_rotation_is_due_when_asked_or_near_the_cas_end(old: deviceca.TenantCA) -> None:
    assert deviceca.rotation_due(old.cert_pem, rotate_now=0, observed_rotate_now=0, now=T0) is None
    assert deviceca.rotation_due(old.cert_pem, rotate_now=1, observed_rotate_now=1, now=T0) is None
    asked = deviceca.rotation_due(old.cert_pem, rotate_now=2, observed_rotate_now=1, now=T0)
    assert asked == "spec.deviceCaRotation.rotateNow is 2"
    end = x509.load_pem_x509_certificate(old.cert_pem).not_valid_after_utc
    before = end - deviceca.CA_RENEW_BEFORE
    assert (
        deviceca.rotation_due(old.cert_pem, rotate_now=0, observed_rotate_now=0, now=before - dt.timedelta(1)) is None
    )
    near = deviceca.rotation_due(old.cert_pem, rotate_now=0, observed_rotate_now=0, now=before)
    assert near is not None
    assert "within 395 days" in near


def test_the_old_ca_is_trusted_until_its_last_unrevoked_device_certificate_ends(
    old: deviceca.TenantCA, new: deviceca.TenantCA
) -> None:
    early, late = device("ox-1", old, signed_at=T0 - dt.timedelta(days=20)), device("ox-2", old)
    theirs = device("ox-3", new, signed_at=T0 + dt.timedelta(days=5))
    certificates = b.enrolled_certificates([early, late, theirs, device("ox-4", old, revoked=True)])
    assert len(certificates) == 3  # the revoked one holds nothing
    assert deviceca.trusted_until(old.cert_pem, certificates, T0) == not_after(late)  # the new CA's is not its
    # Once both expired (or their Devices are gone), nothing needs it: retire.
    assert deviceca.trusted_until(old.cert_pem, certificates, not_after(late)) is None
    assert deviceca.trusted_until(old.cert_pem, [], T0) is None
    expired = x509.load_pem_x509_certificate(old.cert_pem).not_valid_after_utc
    assert deviceca.trusted_until(old.cert_pem, certificates, expired) is None


def test_the_trust_holds_both_cas_during_the_overlap_and_each_crl_revokes_its_own(
    old: deviceca.TenantCA, new: deviceca.TenantCA, tmp_path: Path
) -> None:
    kept, lost = device("ox-1", old), device("ox-2", old, revoked=True)
    fresh, banned = device("ox-3", new), device("ox-4", new, revoked=True)
    devices = [kept, lost, fresh, banned]

    alone = b.plan_trust(old, None, devices, T0)
    assert ([t.ca for t in alone.cas], alone.previous_until, alone.retire_previous) == ([old], None, False)
    # A rotation cut short (the previous CA's Secret is a copy of the current one): nothing overlaps yet.
    assert b.plan_trust(old, old, devices, T0) == alone

    overlap = b.plan_trust(new, old, devices, T0)
    assert [t.ca for t in overlap.cas] == [new, old]  # the current CA first
    assert (overlap.previous_until, overlap.retire_previous) == (not_after(kept), False)
    assert [[r.serial for r in t.revoked] for t in overlap.cas] == [[serial(banned)], [serial(lost)]]

    trust = b.trust_secret(NS, "city", overlap.cas, None, T0)
    cas = base64.b64decode(trust["data"][deviceca.CA_CERT_KEY])
    crls = base64.b64decode(trust["data"][devicecrl.CRL_KEY])
    assert cas == new.cert_pem + old.cert_pem
    assert devicecrl.revoked_certificates(crls, cas) == {
        (subject(new).public_bytes(), serial(banned)),
        (subject(old).public_bytes(), serial(lost)),
    }
    assert not b.crl_due(trust, overlap.cas, T0 + dt.timedelta(days=1))
    # What the gateways and Mosquitto load: OpenSSL takes every certificate and every CRL of the two files.
    (tmp_path / "ca.crt").write_bytes(cas)
    (tmp_path / "ca.crl").write_bytes(crls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(tmp_path / "ca.crt"))
    context.load_verify_locations(cafile=str(tmp_path / "ca.crl"))
    assert context.cert_store_stats() == {"x509": 2, "crl": 2, "x509_ca": 2}

    # The old CA's last device re-enrols (its Device deleted): the old CA is retired, the trust written again.
    retired = b.plan_trust(new, old, [lost, fresh, banned], T0)
    assert ([t.ca for t in retired.cas], retired.previous_until, retired.retire_previous) == ([new], None, True)
    assert b.crl_due(trust, retired.cas, T0)
    after = b.trust_secret(NS, "city", retired.cas, trust, T0)
    assert base64.b64decode(after["data"][deviceca.CA_CERT_KEY]) == new.cert_pem
    assert devicecrl.revoked_serials(base64.b64decode(after["data"][devicecrl.CRL_KEY]), new.cert_pem) == {
        serial(banned)
    }
    assert after["metadata"]["annotations"][deviceca.CRL_NUMBER_ANNOTATION] == "2"


def test_a_bundle_with_a_ca_but_no_crl_of_it_is_refused(old: deviceca.TenantCA, new: deviceca.TenantCA) -> None:
    crl = devicecrl.build_crl(old.cert_pem, old.key_pem, [], now=T0, number=1)
    with pytest.raises(ValueError, match="no CRL of the device CA CN=city device CA 2"):
        devicecrl.revoked_certificates(crl, new.cert_pem + old.cert_pem)


def test_ca_secrets_say_their_generation_and_what_rotation_they_answer(old: deviceca.TenantCA) -> None:
    current = b.ca_secret(NS, "city", old, generation=3, rotate_now=2)
    aside = b.ca_secret(
        NS, "city", old, generation=3, rotate_now=2, name=deviceca.PREVIOUS_CA_SECRET, successor_rotate_now=4
    )
    assert (b.ca_generation(current), b.ca_rotate_now(current), b.successor_rotate_now(current)) == (3, 2, 2)
    assert (aside["metadata"]["name"], b.successor_rotate_now(aside)) == (deviceca.PREVIOUS_CA_SECRET, 4)
    assert aside["immutable"] is True
    made_before_rotation = {"metadata": {"name": deviceca.CA_SECRET}}
    assert (b.ca_generation(made_before_rotation), b.ca_rotate_now(made_before_rotation)) == (1, 0)
    assert b.rotate_now_of({"spec": {"deviceCaRotation": {"rotateNow": 5}}}) == 5
    assert b.rotate_now_of(None) == 0


def test_the_status_names_the_cas_and_their_ends_and_no_key(old: deviceca.TenantCA, new: deviceca.TenantCA) -> None:
    until = T0 + dt.timedelta(days=200)
    status = b.device_ca_status(
        new.cert_pem, generation=2, rotate_now=1, previous_pem=old.cert_pem, previous_until=until, message=None
    )
    assert (status.current.name, status.generation, status.observed_rotate_now) == ("city device CA 2", 2, 1)
    assert status.previous is not None
    assert (status.previous.name, status.previous.trusted_until) == ("city device CA", until)
    assert status.current.serial == deviceca.serial_text(x509.load_pem_x509_certificate(new.cert_pem).serial_number)
    dumped = status.model_dump_json(by_alias=True)
    assert "PRIVATE KEY" not in dumped
    assert "CERTIFICATE" not in dumped
    alone = b.device_ca_status(
        new.cert_pem, generation=2, rotate_now=1, previous_pem=None, previous_until=None, message=None
    )
    assert alone.previous is None
