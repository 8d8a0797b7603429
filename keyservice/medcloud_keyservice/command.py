"""`medcloud keyservice`: serve the key service (settings from ``MEDCLOUD_KEYSERVICE_*``)."""

from __future__ import annotations

import logging


def run() -> None:
    """Serve the key service: a RecordStore's data keys, for callers the cluster authorises, every answer audited."""
    import uvicorn

    from medcloud_keyservice.app import create_app
    from medcloud_keyservice.settings import KeyServiceSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = KeyServiceSettings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        # The access log names paths only, never headers; the audit log is the record that matters.
        access_log=False,
    )
