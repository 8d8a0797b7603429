"""`medcloud api`: run the control API (FastAPI under uvicorn)."""

from __future__ import annotations

import logging.config
from pathlib import Path
from typing import Annotated

import typer

from medcloud_api.config import APISettings


def logging_config(level: str) -> dict[str, object]:
    """Audit lines go to stdout exactly as written (one JSON object a line); everything else to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "raw": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "audit": {"class": "logging.StreamHandler", "formatter": "raw", "stream": "ext://sys.stdout"},
        },
        "loggers": {"medcloud_api.audit": {"handlers": ["audit"], "level": "INFO", "propagate": False}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [env MEDCLOUD_API_HOST; default 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [env MEDCLOUD_API_PORT; default 8080].")] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            help="Kubeconfig of the API's own identity [env MEDCLOUD_API_KUBECONFIG; default: in-cluster, $KUBECONFIG]."
        ),
    ] = None,
) -> None:
    """Run the MedCloud control API: onboarding, hospital views, progress streams, consortia."""
    import uvicorn

    from medcloud_api.main import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "kubeconfig": kubeconfig}.items() if v is not None}
    settings = APISettings(**overrides)  # type: ignore[arg-type]  # pydantic-settings merges env and overrides
    logging.config.dictConfig(logging_config(settings.log_level))
    app = create_app(settings)
    typer.echo(f"MedCloud control API on http://{settings.host}:{settings.port} (OpenAPI at /docs)", err=True)
    # log_config=None: keep the configuration above (uvicorn's would replace it).
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
