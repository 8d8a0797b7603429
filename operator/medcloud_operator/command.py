"""`medcloud operator`: run the Kopf operator in the foreground (the operator's own entry point).

Settings come from ``MEDCLOUD_*`` environment variables (see
``medcloud_operator.settings``); the options here override the few that
decide how Kopf runs. ``python -m medcloud_operator`` runs the same command,
which is what a container or `medcloud dev up` starts.
"""

from __future__ import annotations

import logging
from typing import Annotated

import kopf
import typer

from medcloud_operator.settings import OperatorSettings

app = typer.Typer(help="Run the MedCloud operator.", add_completion=False)


@app.command()
def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Serve namespaced objects only here (repeat; globs like hospital-* work). Default: all namespaces.",
        ),
    ] = None,
    standalone: Annotated[
        bool, typer.Option("--standalone", help="No peering: for a single replica (also MEDCLOUD_STANDALONE).")
    ] = False,
    peering: Annotated[
        str | None,
        typer.Option("--peering", help="ClusterKopfPeering to coordinate replicas through (MEDCLOUD_PEERING_NAME)."),
    ] = None,
    liveness: Annotated[
        str | None,
        typer.Option(
            "--liveness",
            help="Probe endpoint, e.g. http://0.0.0.0:8080/healthz. Default: MEDCLOUD_PROBE_PORT on all addresses.",
        ),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="json, full or plain (MEDCLOUD_LOG_FORMAT; default json).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log Kopf's own progress too.")] = False,
) -> None:
    """Run the operator until interrupted: reconcile Hospitals and repair their tenancy."""
    settings = OperatorSettings()
    namespaces = list(namespace or settings.namespaces)
    standalone = standalone or settings.standalone
    if liveness is None and settings.probe_port:
        liveness = f"http://0.0.0.0:{settings.probe_port}/healthz"
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[(log_format or settings.log_format).upper()])
    if not verbose:
        # Kopf logs every handler's success per object at INFO ("Handler 'drift-roles' succeeded."): a line
        # per child event, tens of thousands while a province onboards. Its warnings and errors stay.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    # Imported here: the handlers (and what they import) load only when the operator runs.
    from medcloud_operator.main import build_registry
    from medcloud_operator.peeringpause import own_identity

    # Made here, not by Kopf: the child watches and the safety net follow Kopf's peering under the same identity.
    identity = own_identity()
    kopf.run(
        registry=build_registry(settings, identity=identity, namespaces=namespaces),
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str, not exported
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True if standalone else None,
        peering_name=None if standalone else (peering or settings.peering_name),
        priority=settings.peering_priority,
        liveness_endpoint=liveness,
    )
