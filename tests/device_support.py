"""A device as the node tests play one: its own key and CSR, and a reading over mutual TLS to a gateway."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Json = dict[str, Any]


def device_csr(directory: Path, device: str) -> tuple[str, Path]:
    """A key (kept here, as a device keeps it) and its CSR with CN = the device id."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = directory / f"{device}.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key_file


def device(name: str, namespace: str, gateway: str, device_class: str, csr: str) -> Json:
    """A Device of ``gateway``, approved, as the control API writes one (the gateway label makes it listable)."""
    return {
        "apiVersion": "medcloud.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": namespace, "labels": {"medcloud.io/device-gateway": gateway}},
        "spec": {"gateway": gateway, "deviceClass": device_class, "owner": "ward 7", "csr": csr, "approved": True},
    }


def blood_pressure(patient: str, systolic: int, diastolic: int, time: str = "2024-05-01T08:30:00+08:00") -> Json:
    """A reading in the gateway's own JSON, as a cuff sends it over HTTPS. Its Observation id comes from
    the device, kind and time: the same reading sent twice is stored once."""
    return {
        "patient": patient,
        "kind": "blood-pressure",
        "systolic": systolic,
        "diastolic": diastolic,
        "unit": "mmHg",
        "time": time,
    }


def https_reading(host: str, server_name: str, ca_pem: bytes, cert: Path, key: Path, reading: Json) -> tuple[int, Json]:
    """POST /v1/readings over mutual TLS; the status and JSON body."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.load_cert_chain(str(cert), str(key))
    connection = http.client.HTTPSConnection(host, 8443, timeout=30, context=context)
    # The certificate names the Service, not its address: check it for the name (SNI and hostname).
    connection.sock = context.wrap_socket(
        socket.create_connection((host, 8443), timeout=30), server_hostname=server_name
    )
    try:
        connection.request("POST", "/v1/readings", json.dumps(reading), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(json.loads(response.read()))
    finally:
        connection.close()


def mqtt_reading(host: str, port: int, ca_file: str, cert: Path, key: Path, topic: str, reading: Json) -> bool:
    """One QoS 1 PUBLISH with the device's certificate, acknowledged by the broker; False if it refused us."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{cert.stem}")
    publisher.tls_set(ca_certs=ca_file, certfile=str(cert), keyfile=str(key))
    try:
        publisher.connect(host, port)
    except (ssl.SSLError, OSError):
        return False
    publisher.loop_start()
    try:
        info = publisher.publish(topic, json.dumps(reading), qos=1)
        info.wait_for_publish(timeout=30)
        return info.is_published()
    except (RuntimeError, ValueError):  # not connected: the broker closed the connection
        return False
    finally:
        publisher.disconnect()
        publisher.loop_stop()
