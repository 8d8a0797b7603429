"""The platform broker's trust bundle and ACL as the operator builds them (pure)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from medcloud.tenancy import deviceca, mqtt
from medcloud.tenancy.devicecrl import build_crl
from medcloud_operator.builders import brokertrust

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def gateway(name: str, namespace: str, protocols: list[str]) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"protocols": protocols, "deviceClasses": ["spo2"], "recordStore": "vitals"},
    }


def test_each_mqtt_gateway_is_granted_its_own_hospitals_topics_only() -> None:
    grants = brokertrust.gateway_grants(
        [
            gateway("wards", "hospital-city", ["mqtt", "https"]),
            gateway("clinic", "hospital-county", ["mqtt"]),
            gateway("lab", "hospital-city", ["hl7v2"]),
            gateway("stray", "default", ["mqtt"]),
        ]
    )
    assert grants == [
        mqtt.GatewayGrant("gw-wards.hospital-city", "city"),
        mqtt.GatewayGrant("gw-clinic.hospital-county", "county"),
    ]
    acl = mqtt.acl(grants)
    wards = acl.split("user gw-wards.hospital-city\n")[1].split("\n\n")[0]
    assert wards.splitlines() == [
        "topic read devices/city/+/readings",
        "topic read $share/+/devices/city/+/readings",
        "topic write devices/city/+/errors",
    ]
    assert "county" not in wards
    assert acl.endswith("pattern write devices/%u/readings\npattern read devices/%u/errors\n")


def test_a_device_identity_names_its_hospital_and_splits_one_way() -> None:
    assert mqtt.device_identity("city", "ox-12") == "city/ox-12"
    assert mqtt.parse_device_identity("city/ox-12") == ("city", "ox-12")
    assert mqtt.parse_device_identity("ox-12") == (None, "ox-12")
    assert mqtt.readings_topic("city", "ox-12") == "devices/city/ox-12/readings"
    assert mqtt.errors_topic("city", "ox-12") == "devices/city/ox-12/errors"


def test_the_bundle_holds_every_ca_and_crl_and_is_the_same_bytes_for_the_same_inputs() -> None:
    city, county, platform = (deviceca.new_ca(name, now=NOW) for name in ("city", "county", "platform"))
    trust = [(ca.cert_pem, build_crl(ca.cert_pem, ca.key_pem, [], now=NOW, number=1)) for ca in (city, county)]
    platform_crl = build_crl(platform.cert_pem, platform.key_pem, [], now=NOW, number=1)
    first = brokertrust.trust_configmap("medcloud-system", trust, platform.cert_pem, platform_crl, [])
    again = brokertrust.trust_configmap("medcloud-system", list(reversed(trust)), platform.cert_pem, platform_crl, [])
    assert first == again
    assert not brokertrust.trust_due(first, again)
    cas = x509.load_pem_x509_certificates(first["data"][mqtt.CA_BUNDLE_KEY].encode())
    assert {c.subject for c in cas} == {
        x509.load_pem_x509_certificate(ca.cert_pem).subject for ca in (city, county, platform)
    }
    assert first["data"][mqtt.CRL_BUNDLE_KEY].count("BEGIN X509 CRL") == 3
    # The platform CA's CRL is kept while fresh (no rewrite each reconcile), signed again near nextUpdate.
    assert brokertrust.platform_crl_in_force(first, platform.cert_pem, NOW) == platform_crl.strip() + b"\n"
    assert brokertrust.platform_crl_in_force(first, platform.cert_pem, NOW + dt.timedelta(days=6)) is None
    assert brokertrust.platform_crl_in_force(first, deviceca.new_ca("other", now=NOW).cert_pem, NOW) is None


def test_a_bundle_holds_a_hospitals_part_only_with_its_ca_crl_grants_and_a_fresh_platform_crl() -> None:
    city, county, platform = (deviceca.new_ca(name, now=NOW) for name in ("city", "county", "platform"))
    city_trust = (city.cert_pem, build_crl(city.cert_pem, city.key_pem, [], now=NOW, number=1))
    county_trust = (county.cert_pem, build_crl(county.cert_pem, county.key_pem, [], now=NOW, number=1))
    platform_crl = build_crl(platform.cert_pem, platform.key_pem, [], now=NOW, number=1)
    wards = brokertrust.gateway_grants([gateway("wards", "hospital-city", ["mqtt"])])
    live = brokertrust.trust_configmap("medcloud-system", [city_trust], platform.cert_pem, platform_crl, wards)
    assert brokertrust.bundle_holds(live, platform.cert_pem, city_trust, wards, NOW)
    # What the reconcile of another gateway or hospital would add is missing: it rebuilds.
    ward2 = brokertrust.gateway_grants([gateway("ward", "hospital-city", ["mqtt"])])
    assert not brokertrust.bundle_holds(live, platform.cert_pem, city_trust, ward2, NOW)
    assert not brokertrust.bundle_holds(live, platform.cert_pem, county_trust, [], NOW)
    resigned = (city.cert_pem, build_crl(city.cert_pem, city.key_pem, [], now=NOW, number=2))
    assert not brokertrust.bundle_holds(live, platform.cert_pem, resigned, wards, NOW)
    assert not brokertrust.bundle_holds(live, platform.cert_pem, city_trust, wards, NOW + dt.timedelta(days=6))
    assert not brokertrust.bundle_holds(None, platform.cert_pem, city_trust, wards, NOW)
