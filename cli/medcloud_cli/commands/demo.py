"""`medcloud demo scenario`: the example alliance's clinical scenario against a running exchange, step by step.

Each member acts with a token of its own for the exchange's audience. Give them (``--token
HOSPITAL=FILE``, e.g. ``kubectl create token ... --audience medcloud-exchange``), or let ``--mint``
make them with your kubeconfig (a cluster administrator's, as ``dev up`` writes it): a ServiceAccount
``medcloud-demo`` in each member's namespace, bound to the shipped ``medcloud-exchange-client``
ClusterRole, exactly what a hospital's own system gets (docs/apps/README.md).

``--through-apps`` sends every step to the catalog app that fronts it at its hospital, the AppInstances'
pods of ``kubectl apply -f examples/`` reached at their Services (docs/apps/scenario.md); the tokens are
then only the EMR-sharing integration's (Consent, the disclosure, the county's free slot).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from rich.console import Console

from medcloud.models.common import hospital_namespace
from medcloud_cli import environment as env
from medcloud_cli.demo.podapps import cluster_app_urls
from medcloud_cli.demo.scenario import (
    Cast,
    Desk,
    ScenarioStepError,
    app_desks,
    exchange_desks,
    publish_free_slot,
    run_scenario,
)

app = typer.Typer(help="Run the example alliance's scenarios against a running exchange.", no_args_is_help=True)
console = Console(stderr=True)
DEMO_ACCOUNT = "medcloud-demo"
CLIENT_ROLE = "medcloud-exchange-client"
EXCHANGE_AUDIENCE = "medcloud-exchange"


def parse_tokens(values: list[str]) -> dict[str, str]:
    """``HOSPITAL=FILE`` pairs -> each hospital's token (the file's text)."""
    out = {}
    for value in values:
        hospital, sep, path = value.partition("=")
        if not sep or not hospital or not path:
            raise typer.BadParameter(f"--token takes HOSPITAL=FILE, got {value!r}")
        out[hospital] = Path(path).read_text().strip()
    return out


def mint_token(api: client.ApiClient, hospital: str) -> str:
    """A token of ``medcloud-demo`` in the hospital's namespace, bound to medcloud-exchange-client there."""
    namespace = hospital_namespace(hospital)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    meta = client.V1ObjectMeta
    with contextlib.suppress(ApiException):  # already there from an earlier run
        core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=meta(name=DEMO_ACCOUNT)))
    binding = client.V1RoleBinding(
        metadata=meta(name=f"{DEMO_ACCOUNT}-exchange"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=CLIENT_ROLE),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=DEMO_ACCOUNT, namespace=namespace)],
    )
    with contextlib.suppress(ApiException):
        rbac.create_namespaced_role_binding(namespace, binding)
    spec = client.V1TokenRequestSpec(audiences=[EXCHANGE_AUDIENCE], expiration_seconds=3600)
    issued = core.create_namespaced_service_account_token(
        DEMO_ACCOUNT, namespace, client.AuthenticationV1TokenRequest(spec=spec)
    )
    if issued.status is None:
        raise RuntimeError(f"no token issued for {namespace}/{DEMO_ACCOUNT}")
    return str(issued.status.token)


def wait_admitted(url: str, tokens: dict[str, str], timeout: float = 30) -> None:
    """RBAC grants reach the exchange's authorizer a moment after they are written: wait for each member."""
    probe = f"/fhir/DocumentReference?patient=Patient/{uuid.uuid4()}"
    headers = {"X-MedCloud-Practitioner": "Practitioner/medcloud-demo", "X-MedCloud-Purpose-Of-Use": "TREAT"}
    with httpx.Client(base_url=url, timeout=30) as http:
        for hospital, token in tokens.items():
            deadline = time.monotonic() + timeout
            while http.get(probe, headers={**headers, "Authorization": f"Bearer {token}"}).status_code != 200:
                if time.monotonic() > deadline:
                    console.print(f"[red]{hospital} is not admitted to the exchange[/red] at {url}")
                    raise typer.Exit(1)
                time.sleep(0.5)


def scenario_desks(url: str, tokens: dict[str, str], *, through_apps: bool) -> tuple[Desk, Callable[[], None]]:
    """The exchange with each member's token; or, ``through_apps``, each catalog app at its Service (your
    kubeconfig's cluster), with only what no app fronts going to the exchange with the tokens."""
    direct, close_direct = exchange_desks(url, tokens)
    if not through_apps:
        return direct, close_direct
    with config.new_client_from_config() as api:  # type: ignore[no-untyped-call]
        urls = cluster_app_urls(api)
    console.print(f"through {len(urls)} catalog apps at their Services")
    through, close_apps = app_desks(urls, direct)

    def close() -> None:
        close_apps()
        close_direct()

    return through, close


@app.command("scenario")
def scenario(
    exchange_url: Annotated[
        str, typer.Option(envvar=env.EXCHANGE_URL, help="The exchange's URL (FHIR at /fhir), as `dev up` prints it.")
    ],
    token: Annotated[list[str], typer.Option(help="HOSPITAL=FILE: a member's token for medcloud-exchange.")] = [],  # noqa: B006 - typer's list option
    mint: Annotated[bool, typer.Option(help="Make each member's token with your kubeconfig.")] = False,
    village: Annotated[str, typer.Option(help="The village clinic's Hospital.")] = "village-willow",
    county: Annotated[str, typer.Option(help="The county hospital's Hospital.")] = "county-people",
    city: Annotated[str, typer.Option(help="The city hospital's Hospital.")] = "city-general",
    publish_slot: Annotated[
        bool, typer.Option(help="Publish a free slot of the county first (else its appointments app's schedule).")
    ] = True,
    through_apps: Annotated[
        bool, typer.Option(help="Go through each hospital's catalog apps (their AppInstances' Services).")
    ] = False,
    community: Annotated[str, typer.Option(help="A member that takes no part (the disclosure must not name it).")] = (
        "community-eastgate"
    ),
) -> None:
    """A village clinic to county to city referral with a recognised result and a remote consultation."""
    cast = Cast(village=village, county=county, city=city, community=community)
    tokens = parse_tokens(token)
    if mint:
        with config.new_client_from_config() as api:  # type: ignore[no-untyped-call]
            tokens.update({h: mint_token(api, h) for h in (village, county, city, community) if h not in tokens})
    missing = sorted({village, county, city, community} - set(tokens))
    if missing:
        console.print(f"[red]no token for {', '.join(missing)}[/red]: --token HOSPITAL=FILE or --mint")
        raise typer.Exit(2)
    wait_admitted(exchange_url, tokens)
    desk, close = scenario_desks(exchange_url, tokens, through_apps=through_apps)
    try:
        if publish_slot:
            publish_free_slot(desk, county)
        with httpx.Client(base_url=exchange_url, timeout=30) as exchange:
            run_scenario(cast, desk, say=typer.echo, metrics=lambda: exchange.get("/metrics").text)
    except ScenarioStepError as error:
        console.print(f"[red]scenario stopped[/red] at {error}")
        raise typer.Exit(1) from None
    finally:
        close()
    typer.echo("scenario complete")
