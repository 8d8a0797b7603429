"""Device certificates on the HTTPS and MLLP-over-TLS listeners, and revocation through the CRL within its bound.

The device CA and the certificates are real (cryptography, as the tenant CA
issues them); the gateway serves on loopback and stores into the real MinIO.
A device without a certificate, or with one of another CA, is refused at the
handshake; once its serial is in the CRL file, new connections are refused
within ``crl_reload_seconds`` and an MLLP connection already open is closed
at its next message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from medcloud.records.client import RecordClient
from medcloud.tenancy.devicecrl import Revocation, build_crl
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import MinioInfo
from medcloud_cli.localcluster.pki import CertificateAuthority, KeyPair
from medcloud_gateway.hl7v2 import MllpDecoder, frame
from medcloud_gateway.ingest import Ingestor
from medcloud_gateway.metrics import GatewayMetrics
from medcloud_gateway.service import Gateway
from medcloud_gateway.settings import GatewaySettings
from tests.integration import test_gateway as base
from tests.support import wait_for

pytestmark = [pytest.mark.minio, pytest.mark.broker]

records = base.records
serving_ca = base.serving_ca
RELOAD = 0.2
"""The CRL re-read interval these tests run with: the revocation bound they check."""
READING = {"patient": "Patient/p-1001", "kind": "spo2", "value": 97, "unit": "%"}
ORU = (
    "MSH|^~\\&|OXI^0011223344556677^EUI-64||||20240501083000+0800||ORU^R01^ORU_R01|TLS-{n}|P|2.6\r"
    "PID|||p-1001\r"
    "OBR|1|||182777000^monitoring of patient^SCT|||20240501083000+0800\r"
    "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.{n}|97|262688^MDC_DIM_PERCENT^MDC|||||F||||||||ox-12\r"
)


class Devices:
    """The hospital's device CA, the CRL file the listeners read, and revocation."""

    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority(directory, "device-ca", "city-hospital device CA")
        self.crl = directory / "ca.crl"
        self.number = 0
        self.revoked: list[Revocation] = []
        self.publish()

    def issue(self, device_id: str) -> KeyPair:
        return self.ca.issue(device_id, device_id, ("city-hospital",))

    def publish(self) -> None:
        self.number += 1
        now = dt.datetime.now(dt.UTC)
        pem = build_crl(self.ca.cert_pem, self.ca.paths.key.read_bytes(), self.revoked, now=now, number=self.number)
        partial = self.crl.with_suffix(".tmp")
        partial.write_bytes(pem)
        partial.replace(self.crl)  # atomic, as a mounted Secret changes

    def revoke(self, pair: KeyPair) -> None:
        serial = x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number
        self.revoked.append(Revocation(serial, dt.datetime.now(dt.UTC)))
        self.publish()


def device_tls_settings(plain: GatewaySettings, ca_file: Path, crl_file: Path, protocols: list[str]) -> GatewaySettings:
    """``plain`` with device certificates required (``ca_file``, ``crl_file`` re-read every ``RELOAD`` s)."""
    return GatewaySettings.model_validate(
        {
            **plain.model_dump(),
            "protocols": protocols,
            "device_ca_file": ca_file,
            "device_crl_file": crl_file,
            "crl_reload_seconds": RELOAD,
            "hl7v2_tls": "hl7v2" in protocols,
        }
    )


@contextlib.contextmanager
def device_tls_gateway(
    records: RecordClient,
    minio_server: MinioInfo,
    mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
    ca_file: Path,
    crl_file: Path,
    protocols: list[str],
) -> Iterator[base.Running]:
    """The session's gateway with device certificates required on ``protocols``, running until the block ends."""
    plain = base.session_gateway_settings(records, minio_server, mqtt_broker, serving_ca)
    settings = device_tls_settings(plain, ca_file, crl_file, protocols)
    with base.running(Gateway(settings, Ingestor(records, GatewayMetrics())), serving_ca.paths.cert) as running:
        yield running


@pytest.fixture
def devices(tmp_path: Path) -> Devices:
    return Devices(tmp_path / "devices")


@pytest.fixture
def gateway(
    records: RecordClient,
    minio_server: MinioInfo,
    mqtt_broker: BrokerInfo,
    serving_ca: CertificateAuthority,
    devices: Devices,
) -> Iterator[base.Running]:
    with device_tls_gateway(
        records, minio_server, mqtt_broker, serving_ca, devices.ca.paths.cert, devices.crl, ["https", "hl7v2"]
    ) as running:
        yield running


def client_context(running: base.Running, pair: KeyPair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(running.ca_file))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def post(running: base.Running, pair: KeyPair | None, device_id: str | None, minute: int) -> int | str:
    """The status of one reading over a new HTTPS connection, or the TLS failure's name."""
    url = f"https://127.0.0.1:{running.settings.https_port}"
    reading = {**READING, "time": f"2024-05-01T08:{minute:02d}:00+08:00"}
    if device_id is not None:
        reading["deviceId"] = device_id
    try:
        with httpx.Client(base_url=url, verify=client_context(running, pair), timeout=30) as client:
            return client.post("/v1/readings", json=reading).status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        return type(exc).__name__


class MllpTls:
    """One MLLP-over-TLS connection kept open across messages."""

    def __init__(self, running: base.Running, pair: KeyPair) -> None:
        raw = socket.create_connection(("127.0.0.1", running.settings.hl7v2_port), timeout=30)
        self.conn = client_context(running, pair).wrap_socket(raw, server_hostname="127.0.0.1")
        self.decoder = MllpDecoder()

    def send(self, message: str) -> str | None:
        """The ACK, or None when the gateway closed the connection instead."""
        self.conn.sendall(frame(message))
        while True:
            try:
                data = self.conn.recv(65536)
            except (ConnectionError, ssl.SSLError):
                return None
            if not data:
                return None
            acks = self.decoder.feed(data)
            if acks:
                return acks[0].decode()

    def close(self) -> None:
        self.conn.close()


def test_only_devices_with_a_valid_certificate_are_served(
    gateway: base.Running, devices: Devices, records: RecordClient
) -> None:
    ox = devices.issue("ox-12")
    stranger = CertificateAuthority(devices.crl.parent / "other", "other-ca", "someone else's CA").issue(
        "ox-12", "ox-12"
    )
    assert post(gateway, ox, "ox-12", 1) == 201
    assert post(gateway, ox, None, 4) == 201  # the certificate says who sent it
    assert post(gateway, ox, "ox-13", 5) == 422  # a device reports only for itself
    assert {o["device"]["identifier"]["value"] for o in base.stored(records)} == {"ox-12"}
    assert post(gateway, None, "ox-12", 2) != 201
    assert post(gateway, stranger, "ox-12", 3) != 201
    # TLS 1.3: the client may finish its side of the handshake before the gateway refuses its certificate.
    try:
        refused = MllpTls(gateway, stranger)
        assert refused.send(ORU.format(n=1)) is None
        refused.close()
    except (ssl.SSLError, ConnectionError):
        pass
    mllp = MllpTls(gateway, ox)
    try:
        ack = mllp.send(ORU.format(n=1))
    finally:
        mllp.close()
    assert ack is not None
    assert ack.split("\r")[1].startswith("MSA|AA|TLS-1|")


def test_a_revoked_device_is_refused_within_the_reload_bound(gateway: base.Running, devices: Devices) -> None:
    ox, other = devices.issue("ox-12"), devices.issue("ox-13")
    mllp = MllpTls(gateway, ox)
    url = f"https://127.0.0.1:{gateway.settings.https_port}"
    kept = httpx.Client(base_url=url, verify=client_context(gateway, ox), timeout=30)  # one keep-alive connection
    try:
        first = mllp.send(ORU.format(n=1))
        assert first is not None
        assert first.split("\r")[1].startswith("MSA|AA|")
        assert post(gateway, ox, "ox-12", 1) == 201
        assert kept.post("/v1/readings", json={**READING, "time": "2024-05-01T09:00:00+08:00"}).status_code == 201
        devices.revoke(ox)
        # Refused on new connections once the CRL is re-read: within RELOAD seconds (waited for, not timed).
        wait_for(lambda: post(gateway, ox, "ox-12", 2) != 201, "the revoked certificate to be refused", timeout=30)
        # Connections opened before the revocation get no further answer.
        assert mllp.send(ORU.format(n=2)) is None
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
            kept.post("/v1/readings", json={**READING, "time": "2024-05-01T09:01:00+08:00"})
    finally:
        mllp.close()
        kept.close()
    assert post(gateway, other, "ox-13", 3) == 201  # the others are untouched
