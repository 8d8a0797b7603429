"""TLS that admits only devices holding a valid, unrevoked certificate of the hospital's device CA.

Every listener (HTTPS, MLLP over TLS) requires a client certificate chaining to
the device CA and checks it against the CRL (``VERIFY_CRL_CHECK_LEAF``; see
:mod:`medcloud.tenancy.devicecrl`). The CRL file is re-read when it changes,
checked every ``reload_seconds``: that is the revocation bound for new
connections. Each handshake takes the current context (through the SNI callback,
which OpenSSL calls for every ClientHello), so a new CRL needs no restart; an
MLLP connection already open is also checked message by message
(:meth:`DeviceTrust.revoked`). A CRL that cannot be read or is not the CA's
leaves the previous one in force (logged); an expired CRL makes OpenSSL refuse
every device: fail closed. While the hospital's device CA is rotated the CA file
holds two CAs and the CRL file one CRL of each (:mod:`medcloud.tenancy.deviceca`):
OpenSSL loads every certificate and CRL of a file, so devices of both are
admitted, each checked against its own CA's CRL; both files are watched, so the
old CA's retirement (one CA and one CRL again) takes effect the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

from medcloud.tenancy.devicecrl import revoked_certificates
from medcloud.tenancy.mqtt import parse_device_identity

log = logging.getLogger(__name__)

DEVICE_SCOPE_KEY = "medcloud.device"
"""ASGI scope key under which the HTTPS listener passes the connected device's id (its certificate's CN)."""


def device_of_certificate(der: bytes) -> str:
    """The device id a device certificate names: its subject CN ``<hospital>/<deviceId>`` (or, older, the id alone).

    The listener trusts its own hospital's CA only, so the hospital part is always its own.
    """
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError("the device certificate has no common name")
    return parse_device_identity(str(names[0].value))[1]


@dataclass
class DeviceTrust:
    ca_file: Path
    crl_file: Path
    cert_file: Path
    key_file: Path
    reload_seconds: float = 10.0
    _current: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _digest: str = field(default="", init=False, repr=False)
    _revoked: frozenset[tuple[bytes, int]] = field(default=frozenset(), init=False, repr=False)
    """(issuer DER, serial) of each revoked certificate: serials are unique per CA only."""

    def __post_init__(self) -> None:
        if not self.refresh():
            raise ValueError(f"the device CRL {self.crl_file} cannot be used; see the log")

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.ca_file))
        context.load_verify_locations(cafile=str(self.crl_file))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context

    def refresh(self) -> bool:
        """Re-read the CAs and CRLs if either file changed; False if they cannot be used (the previous stay)."""
        try:
            crl, cas = self.crl_file.read_bytes(), self.ca_file.read_bytes()
            digest = hashlib.sha256(hashlib.sha256(crl).digest() + hashlib.sha256(cas).digest()).hexdigest()
            if digest == self._digest:
                return True
            revoked = revoked_certificates(crl, cas)
            context = self._context()
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("device CRL %s not loaded: %s", self.crl_file, exc)
            return False
        self._current, self._digest, self._revoked = context, digest, revoked
        log.info("device CRL loaded: %d revoked certificate(s)", len(revoked))
        return True

    def current(self) -> ssl.SSLContext:
        assert self._current is not None
        return self._current

    def server_context(self) -> ssl.SSLContext:
        """The context a listener serves with: each handshake switches to the current one."""
        base = self._context()

        def switch(connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
            connection.context = self.current()

        base.sni_callback = switch
        return base

    def revoked(self, peer_der: bytes | None) -> bool:
        """Whether a connected peer's certificate (DER) is revoked by the CRL now in force."""
        if peer_der is None:
            return True
        cert = x509.load_der_x509_certificate(peer_der)
        return (cert.issuer.public_bytes(), cert.serial_number) in self._revoked

    async def watch(self) -> None:
        """Re-read the CRL every ``reload_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.reload_seconds)
            await asyncio.to_thread(self.refresh)


def device_http_protocol(trust: DeviceTrust) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, telling the app which device is connected and closing revoked ones.

    Every request gets the certificate's device id in its scope (:data:`DEVICE_SCOPE_KEY`); a request on a
    keep-alive connection whose certificate was revoked since the handshake is not served: the connection closes.
    """

    class DeviceH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            tls = transport.get_extra_info("ssl_object")
            certificate = tls.getpeercert(binary_form=True) if tls is not None else None
            device = device_of_certificate(certificate) if certificate else None
            app = self.app

            async def with_device(scope: Any, receive: Any, send: Any) -> None:
                if trust.revoked(certificate):
                    transport.close()
                    return
                scope[DEVICE_SCOPE_KEY] = device
                await app(scope, receive, send)

            self.app = with_device

    return DeviceH11Protocol
