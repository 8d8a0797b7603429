"""`medcloud crds`: write the CRD YAML from the models, check it for drift, or install it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medcloud import crdgen

app = typer.Typer(
    help="CustomResourceDefinitions generated from the pydantic models.",
    no_args_is_help=True,
    add_completion=False,
)

DirectoryOption = Annotated[
    Path,
    typer.Option("--dir", "-d", help="Folder of the CRD files.", file_okay=False),
]


@app.command()
def generate(
    directory: DirectoryOption = Path("crds"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if the files differ from the models.")
    ] = False,
) -> None:
    """Write crds/<group>_<plural>.yaml for every kind, or check that they are up to date."""
    if check:
        problems = crdgen.check_crds(directory)
        if problems:
            typer.echo(f"CRDs in {directory} are out of date with medcloud/models:\n", err=True)
            for problem in problems:
                typer.echo(problem + "\n", err=True)
            typer.echo("Run `medcloud crds generate` and commit the result.", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"CRDs in {directory} match the models.")
        return
    for path in crdgen.write_crds(directory):
        typer.echo(f"wrote {path}")


@app.command()
def install(
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Kubeconfig to use; default: $KUBECONFIG or ~/.kube/config.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the CRDs to be Established.")] = 60.0,
) -> None:
    """Apply the CRDs to a cluster (server-side apply) and wait until they are Established."""
    from kubernetes import config
    from kubernetes.client.exceptions import ApiException

    from medcloud.kube.crds import CRDNotEstablishedError, api_error_message, install_crds

    # The kubernetes package leaves its config loaders unannotated.
    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig) if kubeconfig else None
    )
    try:
        for name in install_crds(api_client, timeout=timeout):
            typer.echo(f"established {name}")
    except ApiException as exc:
        typer.echo(f"the API server refused the CRDs ({exc.status}): {api_error_message(exc)}", err=True)
        raise typer.Exit(code=1) from exc
    except CRDNotEstablishedError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from exc
    finally:
        api_client.close()
