"""`medcloud dev`: run MedCloud's main job on the embedded local cluster."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medcloud_cli import environment as env
from medcloud_cli.localcluster import binaries, chartplatform, images, node
from medcloud_cli.localcluster.cluster import (
    KEPT_STATE,
    AlreadyRunningError,
    ClusterOptions,
    ClusterState,
    LocalCluster,
    NotAStateDirError,
    iter_status,
    purge_state,
    stop_from_state,
)
from medcloud_cli.localcluster.platform import PlatformInfo, start_platform
from medcloud_cli.localcluster.process import StartupError
from medcloud_cli.localcluster.restart import restart_missing

app = typer.Typer(help="Run MedCloud on a local cluster on 127.0.0.1 (like `kind`, without containers).")
# Neither wraps: export lines and the commands shown on stderr must stay copyable.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def default_state_dir() -> Path:
    configured = os.environ.get(env.DEV_DIR)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "medcloud" / "dev"


class PlatformMode(StrEnum):
    """How `dev up` runs MedCloud's operator, API and key service."""

    CHART = "chart"
    PROCESS = "process"


StateDir = Annotated[
    Path,
    typer.Option("--state-dir", help="Where data, certificates, kubeconfigs and logs live.", envvar=env.DEV_DIR),
]


@app.command()
def build(
    names: Annotated[list[str] | None, typer.Argument(help="Binaries to build (default: all).")] = None,
) -> None:
    """Build the local cluster's binaries into the cache (once; later runs reuse them)."""
    default = list(binaries.ALL_BINARIES)
    if node.real_node_supported()[0]:
        default += binaries.REAL_NODE_BINARIES
    try:
        paths = binaries.ensure_binaries(names or default, progress=console.print)
    except binaries.BuildError as exc:
        console.print(f"[red]build failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    for name, path in paths.items():
        out.print(f"{name}\t{path}")


@app.command()
def up(
    state_dir: StateDir = default_state_dir(),  # noqa: B008 - typer reads defaults at definition time
    nodes: Annotated[int, typer.Option(help="Fake (KWOK) nodes to create.")] = 3,
    cluster_only: Annotated[
        bool, typer.Option("--cluster-only", help="Start the servers only: no CRDs, key service, operator or API.")
    ] = False,
    real_node: Annotated[
        bool | None,
        typer.Option(
            "--real-node/--no-real-node",
            help="Run a real kubelet node (containerd) beside the KWOK ones; default: on when Linux root.",
        ),
    ] = None,
    platform_mode: Annotated[
        PlatformMode | None,
        typer.Option(
            "--platform",
            help=(
                "chart: MedCloud from its Helm chart, as pods on the real node (the default with a real node); "
                "process: as local processes (the default without one)."
            ),
        ),
    ] = None,
) -> None:
    """Start the local cluster with MedCloud's key service, operator and API in the background; return once ready."""
    supported, why = node.real_node_supported()
    if (real_node or platform_mode is PlatformMode.CHART) and not supported:
        console.print(f"[red]no real node here:[/red] {why}")
        raise typer.Exit(1)
    with_node = supported if real_node is None else real_node
    if platform_mode is PlatformMode.CHART and not with_node:
        console.print("[red]--platform chart runs MedCloud on the real node:[/red] drop --no-real-node")
        raise typer.Exit(1)
    mode = platform_mode or (PlatformMode.CHART if with_node else PlatformMode.PROCESS)
    options = ClusterOptions(nodes=nodes, detach=True, real_node=with_node)
    cluster = LocalCluster(state_dir, options, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    platform: PlatformInfo | None = None
    try:
        with console.status("starting the MedCloud local cluster ..."):
            state = cluster.start()
            if cluster.node is not None:
                image = images.ensure_imported(node.ctr_args(cluster.node.dir), progress=cluster.progress)
                state.extra["image"] = image.reference
                cluster.save_state()
            if not cluster_only and mode is PlatformMode.CHART:
                platform = chartplatform.start_chart_platform(cluster, image.reference)
            elif not cluster_only:
                platform = start_platform(cluster)
    except AlreadyRunningError as exc:
        # Not ours to stop: the running cluster and its state.json stay as they are.
        if not exc.dead:
            console.print(f"[red]dev up refused:[/red] {exc}")
            raise typer.Exit(1) from exc
        _restart_missing(state_dir)
        return
    except (StartupError, binaries.BuildError, RuntimeError, OSError) as exc:
        console.print(f"[red]dev up failed:[/red] {exc}")
        console.print(f"logs: {state_dir / 'logs'}")
        cluster.stop()
        raise typer.Exit(1) from exc
    _print_ready(state, platform)


def _restart_missing(state_dir: Path) -> None:
    """Part of the cluster died: start those servers again, as they were, and touch nothing else."""
    try:
        restarted = restart_missing(state_dir, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    except StartupError as exc:
        console.print(f"[red]dev up failed:[/red] {exc}")
        console.print(f"logs: {state_dir / 'logs'}")
        raise typer.Exit(1) from exc
    console.print(f"[green]started again:[/green] {', '.join(restarted)}; the rest kept running.")
    console.print("see: medcloud dev status")


def _print_ready(state: ClusterState, platform: PlatformInfo | None) -> None:
    console.print("[green]MedCloud is running on the local cluster.[/green]")
    out.print(f"export {env.KUBECONFIG}={state.kubeconfig}")
    if state.minio is not None:
        out.print(f"export {env.MINIO_ENDPOINT}=http://{state.minio.endpoint}")
        out.print(f"export {env.MINIO_ACCESS_KEY}={state.minio.access_key}")
        out.print(f"export {env.MINIO_SECRET_KEY}={state.minio.secret_key}")
    if state.broker is not None:
        out.print(f"export {env.MQTT_URL}=mqtts://{state.broker.host}:{state.broker.port}")
    if platform is not None:
        out.print(f"export {env.API_URL}={platform.api_url}")
        out.print(f"export {env.API_TOKEN}={platform.city_admin_token}")
        out.print(f"export {env.KEY_SERVICE_URL}={platform.key_service_url}")
        if platform.exchange_url:
            out.print(f"export {env.EXCHANGE_URL}={platform.exchange_url}")
            console.print(
                f"exchange of Consortium {platform.exchange_consortium}: {platform.exchange_url}/fhir "
                "(answers once the Consortium is applied; callers: docs/exchange.md)"
            )
        console.print(f"operator metrics: {platform.operator_metrics}")
        console.print(f"Prometheus (the chart's alert rules loaded): {platform.prometheus_url}")
        console.print("try: kubectl apply -f examples/   or   medcloud onboard hospital.yaml")
        console.print(
            f"record keys: a token for audience {platform.key_service_audience} of an account granted "
            "`get recordstores/keys` (docs/local-cluster.md), e.g.\n"
            f"  export {env.KEY_SERVICE_TOKEN}=$(kubectl create token APP -n NAMESPACE "
            f"--audience {platform.key_service_audience})"
        )
    release = state.extra.get("release")
    if release:
        console.print(
            f"MedCloud from its chart: release {release['name']} in {release['namespace']} "
            "(operator, API, key service as pods; `medcloud dev status` lists them)"
        )
    node = state.extra.get("node")
    if node:
        console.print(
            f"real node: {node['name']} ({node['ip']}), image {state.extra.get('image', '?')} "
            "(imagePullPolicy: Never; rebuild with `medcloud dev images`)"
        )
    console.print(f"unprivileged identity: KUBECONFIG={state.user_kubeconfig}")
    console.print(f"logs: {Path(state.state_dir) / 'logs'}   stop: medcloud dev down")


@app.command("images")
def build_images(state_dir: StateDir = default_state_dir()) -> None:  # noqa: B008
    """Build MedCloud's image from the source (no registry) and import it into the running real node."""
    try:
        node_dir = state_dir / "node"
        if (node_dir / "containerd" / "containerd.sock").exists():
            image = images.ensure_imported(node.ctr_args(node_dir), progress=console.print)
            console.print(f"imported into the node: {image.reference}")
        else:
            image = images.ensure_medcloud_archive(progress=console.print)
            console.print("no real node runs: built only")
    except binaries.BuildError as exc:
        console.print(f"[red]image build failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    out.print(image.reference)


@app.command()
def status(state_dir: StateDir = default_state_dir()) -> None:  # noqa: B008
    """Show which local servers run."""
    rows = list(iter_status(state_dir))
    if not rows:
        console.print(f"no local cluster recorded in {state_dir}")
        raise typer.Exit(1)
    state = ClusterState.load(state_dir / LocalCluster.STATE_FILE)
    table = Table("server", "pid", "port", "state")
    for name, pid, alive in rows:
        # The operator holds two ports (metrics, probes); its metrics port is the one people look for.
        port = state.ports.get(name) or state.ports.get(f"{name}-metrics")
        table.add_row(name, str(pid), str(port or ""), "[green]running[/green]" if alive else "[red]exited[/red]")
    out.print(table)
    out.print(f"KUBECONFIG={state.kubeconfig}")
    for name, url in (state.extra.get("urls") or {}).items():
        out.print(f"{name}: {url}")
    release = state.extra.get("release")
    if release and all(alive for _, _, alive in rows):
        cluster = LocalCluster(state_dir)
        out.print(chartplatform.helm(cluster, "list", timeout=30).stdout.rstrip())
        pods = cluster.kubectl("get", "pods", "-n", release["namespace"], "-o", "wide", check=False)
        out.print((pods.stdout or pods.stderr).rstrip())
    if not all(alive for _, _, alive in rows):
        raise typer.Exit(1)


@app.command()
def down(
    state_dir: StateDir = default_state_dir(),  # noqa: B008
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the state directory: the next `dev up` starts empty.")
    ] = False,
) -> None:
    """Stop every local server. The state directory stays (the next `dev up` resumes it) unless --purge."""
    stopped = stop_from_state(state_dir)
    if stopped:
        console.print(f"stopped: {', '.join(stopped)}")
    else:
        console.print("nothing was running")
    if purge:
        try:
            purged = purge_state(state_dir)
        except NotAStateDirError as exc:
            console.print(f"[red]not purged:[/red] {exc}")
            raise typer.Exit(1) from exc
        console.print(f"deleted {state_dir}" if purged else f"nothing to delete at {state_dir}")
        return
    if state_dir.exists():
        console.print(f"kept in {state_dir}:")
        for entry, what in KEPT_STATE:
            if (state_dir / entry).exists():
                console.print(f"  {entry}/: {what}")
        console.print("start clean: medcloud dev down --purge")
