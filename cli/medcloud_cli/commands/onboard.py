"""`medcloud onboard hospital.yaml`: onboard through the control API and show each layer come up.

The file is either the API's request body (``name``, ``spec`` and optionally
``recordStores``, ``deviceGateways``, ``apps``) or the manifests a cloud
operator would `kubectl apply` (a Hospital plus RecordStores, DeviceGateways
and AppInstances, as in ``examples/``). Progress comes from the API's
Server-Sent Events stream until the hospital is Ready or fails.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from medcloud.models import hospital_namespace
from medcloud_cli import environment as env

console = Console(stderr=True)
out = Console()

STATE_STYLES = {
    "Ready": "green",
    "Provisioning": "yellow",
    "Pending": "dim",
    "Degraded": "magenta",
    "Failed": "red",
    "Terminating": "red",
}
LISTS = {"RecordStore": "recordStores", "DeviceGateway": "deviceGateways", "AppInstance": "apps"}


class OnboardFileError(ValueError):
    """The file is neither a request body nor MedCloud manifests of one hospital."""


def request_from_documents(documents: Iterable[Any]) -> dict[str, Any]:
    """The API request body a YAML file stands for."""
    docs = [d for d in documents if d]
    if not docs:
        raise OnboardFileError("the file is empty")
    if not all(isinstance(d, dict) for d in docs):
        raise OnboardFileError("every YAML document must be a mapping")
    if "kind" not in docs[0]:
        if len(docs) != 1:
            raise OnboardFileError("a request body must be a single YAML document")
        return dict(docs[0])

    hospitals = [d for d in docs if d.get("kind") == "Hospital"]
    if len(hospitals) != 1:
        raise OnboardFileError(f"expected exactly one Hospital, found {len(hospitals)}")
    name = str((hospitals[0].get("metadata") or {}).get("name") or "")
    if not name:
        raise OnboardFileError("the Hospital has no metadata.name")
    body: dict[str, Any] = {"name": name, "spec": hospitals[0].get("spec") or {}}
    # A manifest for `kubectl apply` may list the tenant Namespace first; onboarding
    # leaves making it to the operator.
    own_namespace = {"apiVersion": "v1", "kind": "Namespace", "name": hospital_namespace(name)}
    children = [
        d
        for d in docs
        if d.get("kind") != "Hospital"
        and {"apiVersion": d.get("apiVersion"), "kind": d.get("kind"), "name": (d.get("metadata") or {}).get("name")}
        != own_namespace
    ]
    if not children:
        return body  # the tier's default profile
    body.update({key: [] for key in LISTS.values()})
    for doc in children:
        kind = doc.get("kind")
        if kind not in LISTS:
            raise OnboardFileError(f"{kind} is not something onboarding creates")
        meta = doc.get("metadata") or {}
        namespace = meta.get("namespace")
        if namespace not in (None, hospital_namespace(name)):
            raise OnboardFileError(
                f"{kind} {meta.get('name')} is in namespace {namespace}, not {hospital_namespace(name)}"
            )
        body[LISTS[kind]].append({"name": meta.get("name"), "spec": doc.get("spec") or {}})
    return body


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        return value if isinstance(value, dict) else {"value": value}


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events of a text/event-stream, per the WHATWG rules this API needs (comments, multi-line data)."""
    event, event_id = "message", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield ServerSentEvent(event, "\n".join(data), event_id)


class ProgressView:
    """The rich table of components, updated from ``layer`` and ``readiness`` events."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.summary = "waiting for the first status ..."

    def update(self, sse: ServerSentEvent) -> None:
        payload = sse.json()
        if sse.event == "layer":
            self.rows[(str(payload.get("kind")), str(payload.get("name")))] = payload
        elif sse.event == "readiness":
            self.summary = f"[bold]{payload.get('state')}[/bold]: {payload.get('summary')}"

    def finish(self) -> None:
        """The stream is done: drop the running summary, which the verdict line would only repeat."""
        self.summary = ""

    def render(self) -> Group:
        table = Table(title=f"Onboarding {self.name}", expand=False)
        for column in ("layer", "kind", "name", "state", "message"):
            table.add_column(column)
        for payload in self.rows.values():
            state = str(payload.get("state"))
            table.add_row(
                str(payload.get("layer")),
                str(payload.get("kind")),
                str(payload.get("name")),
                Text(state, style=STATE_STYLES.get(state, "")),
                str(payload.get("message") or ""),
            )
        return Group(table, Text.from_markup(self.summary)) if self.summary else Group(table)


def print_problem(response: httpx.Response) -> None:
    """A problem document as a person reads it."""
    try:
        problem = response.json()
    except ValueError:
        console.print(f"[red]HTTP {response.status_code}[/red] {response.text[:500]}")
        return
    console.print(f"[red]{problem.get('title', 'Error')}[/red] (HTTP {response.status_code})")
    console.print(str(problem.get("detail", "")))
    for error in problem.get("errors") or []:
        console.print(f"  {error.get('field')}: {error.get('detail')}")
    for difference in problem.get("differences") or []:
        obj = difference.get("object") or {}
        console.print(
            f"  {obj.get('kind')} {obj.get('name')} {difference.get('path')}: "
            f"requested {difference.get('requested')!r}, existing {difference.get('existing')!r}"
        )


def show_progress(name: str, events: Iterable[ServerSentEvent], screen: Console) -> tuple[str, str]:
    """Draw the components table on ``screen`` until the stream's done event; its (result, detail).

    On a terminal the table is redrawn live; anywhere else (a pipe, a CI log)
    it is printed once, at the end. Either way it ends with a newline, and the
    verdict is left to the one line :func:`verdict` prints.
    """
    view = ProgressView(name)
    result, detail = "Error", "the progress stream ended without a result"
    live = Live(view.render(), console=screen, refresh_per_second=4) if screen.is_terminal else None
    with live or contextlib.nullcontext():
        for sse in events:
            if sse.event == "done":
                payload = sse.json()
                result, detail = str(payload.get("result")), str(payload.get("detail") or "")
                break
            view.update(sse)
            if live is not None:
                live.update(view.render())
        view.finish()
        if live is not None:
            live.update(view.render())
    if live is None:
        screen.print(view.render())
    return result, detail


def verdict(name: str, result: str, detail: str) -> str:
    """The one line that ends `medcloud onboard`: the hospital, its result and why."""
    style = "green" if result == "Ready" else "red"
    return f"[{style}]{name}: {result}[/{style}] {detail}".rstrip()


def follow(http: httpx.Client, name: str, timeout: float) -> str:
    """Show progress until the stream's done event; the result (Ready, Failed, Timeout, ...)."""
    with http.stream("GET", f"/v1/hospitals/{name}/events", params={"timeout": timeout}) as response:
        if response.status_code != 200:
            response.read()
            print_problem(response)
            return "Error"
        result, detail = show_progress(name, iter_sse(response.iter_lines()), console)
    out.print(verdict(name, result, detail))
    return result


def run(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Request body or manifests (YAML).")],
    api: Annotated[str, typer.Option(envvar=env.API_URL, help="URL of the control API.")] = "http://127.0.0.1:8080",
    token: Annotated[
        str, typer.Option(envvar=env.API_TOKEN, help="Bearer token, e.g. from `kubectl create token`.")
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Ready.")] = 600.0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow progress until Ready or failure.")] = True,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle to verify an https API with.")] = None,
) -> None:
    """Onboard a hospital through the control API and show each layer come up."""
    if not token:
        console.print(
            f"[red]a token is required[/red]: --token or {env.API_TOKEN} (e.g. `kubectl create token city-admin`)"
        )
        raise typer.Exit(2)
    try:
        body = request_from_documents(yaml.safe_load_all(file.read_text()))
    except (OnboardFileError, yaml.YAMLError) as exc:
        console.print(f"[red]{file}:[/red] {exc}")
        raise typer.Exit(2) from exc

    headers = {"Authorization": f"Bearer {token}"}
    # The stream sends a heartbeat every few seconds; a read that waits far longer means a dead connection.
    http_timeout = httpx.Timeout(60.0, connect=10.0)
    verify: str | bool = str(ca_file) if ca_file else True
    with httpx.Client(base_url=api, headers=headers, timeout=http_timeout, verify=verify) as http:
        try:
            response = http.post("/v1/hospitals", json=body)
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot reach the control API at {api}:[/red] {exc}")
            raise typer.Exit(1) from exc
        if response.status_code not in (200, 201):
            print_problem(response)
            raise typer.Exit(1)
        result = response.json()
        name = str(result["hospital"]["name"])
        created = ", ".join(f"{r['kind']} {r['name']}" for r in result.get("created") or []) or "nothing (all existed)"
        console.print(f"onboarding [bold]{name}[/bold]; created: {created}")
        if not wait:
            out.print(f"{name}: {result['hospital']['readiness']['state']}")
            return
        try:
            outcome = follow(http, name, timeout)
        except httpx.HTTPError as exc:
            console.print(f"[red]lost the progress stream:[/red] {exc}")
            raise typer.Exit(1) from exc
    if outcome != "Ready":
        raise typer.Exit(1)
