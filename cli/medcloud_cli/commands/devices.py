"""`medcloud devices enroll|approve|revoke|list|show`: device enrolment through the control API.

``enroll`` makes the device's key and CSR if it has none (the key never
leaves the machine: only the CSR is sent), asks the API, and with ``--wait``
writes the certificate next to the key once an approver has approved and
the operator has signed it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.table import Table

from medcloud_cli import environment as env
from medcloud_cli.commands.onboard import print_problem

app = typer.Typer(help="Enrol, approve, revoke and list a hospital's devices (control API).", no_args_is_help=True)
console = Console(stderr=True)
out = Console()

ApiOption = Annotated[str, typer.Option(envvar=env.API_URL, help="URL of the control API.")]
TokenOption = Annotated[str, typer.Option(envvar=env.API_TOKEN, help="Bearer token (`kubectl create token ...`).")]
HospitalOption = Annotated[str, typer.Option("--hospital", help="The Hospital the device belongs to.")]
DEFAULT_API = "http://127.0.0.1:8080"


def new_key_and_csr(device_id: str, key_file: Path) -> str:
    """A P-256 key written to ``key_file`` (mode 0600) unless it exists, and a CSR for CN ``device_id`` with it."""
    if key_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise typer.BadParameter(f"{key_file} is not an EC private key")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        key_file.touch(mode=0o600)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _client(api: str, token: str) -> httpx.Client:
    if not token:
        console.print(f"[red]a token is required[/red]: --token or {env.API_TOKEN}")
        raise typer.Exit(2)
    return httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the control API:[/red] {exc}")
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        print_problem(response)
        raise typer.Exit(1)
    body: dict[str, Any] = response.json()
    return body


def _line(device: dict[str, Any]) -> str:
    return f"{device['name']}: {device['state']}" + (f" (serial {device['serial']})" if device.get("serial") else "")


@app.command("enroll")
def enroll(
    device_id: Annotated[str, typer.Argument(help="The device id: its certificate's CN and its readings' deviceId.")],
    hospital: HospitalOption,
    gateway: Annotated[str, typer.Option(help="The DeviceGateway it sends to.")],
    device_class: Annotated[str, typer.Option("--class", help="ecg, blood-pressure, glucose, spo2, ...")],
    owner: Annotated[str, typer.Option(help="Who answers for the device (a ward, a team).")],
    directory: Annotated[Path, typer.Option(help="Where the key, and then the certificate, are kept.")] = Path(),
    wait: Annotated[float, typer.Option(help="Seconds to wait for approval and the certificate (0: do not).")] = 0,
    api: ApiOption = DEFAULT_API,
    token: TokenOption = "",
) -> None:
    """Ask to enrol a device: its CSR goes to the API; its key stays in DIRECTORY."""
    key_file = directory / f"{device_id}.key"
    csr = new_key_and_csr(device_id, key_file)
    body = {"name": device_id, "gateway": gateway, "deviceClass": device_class, "owner": owner, "csr": csr}
    with _client(api, token) as http:
        device = _call(http, "POST", f"/v1/hospitals/{hospital}/devices", json=body)
        out.print(_line(device))
        deadline = time.monotonic() + wait
        while device["state"] == "Pending" and time.monotonic() < deadline:
            time.sleep(2)
            device = _call(http, "GET", f"/v1/hospitals/{hospital}/devices/{device_id}")
    if device.get("certificate"):
        cert_file = directory / f"{device_id}.crt"
        cert_file.write_text(device["certificate"])
        out.print(f"{_line(device)}; certificate in {cert_file}, key in {key_file}")
    elif wait:
        console.print(f"{_line(device)}: no certificate yet; `medcloud devices show` later")
        raise typer.Exit(1)


@app.command("approve")
def approve(device_id: str, hospital: HospitalOption, api: ApiOption = DEFAULT_API, token: TokenOption = "") -> None:
    """Approve a device (needs `approve` on devices.medcloud.io in the hospital's namespace)."""
    with _client(api, token) as http:
        out.print(_line(_call(http, "POST", f"/v1/hospitals/{hospital}/devices/{device_id}/approval")))


@app.command("revoke")
def revoke(device_id: str, hospital: HospitalOption, api: ApiOption = DEFAULT_API, token: TokenOption = "") -> None:
    """Revoke a device's certificate (needs `revoke` on devices.medcloud.io): it goes into the hospital's CRL."""
    with _client(api, token) as http:
        out.print(_line(_call(http, "POST", f"/v1/hospitals/{hospital}/devices/{device_id}/revocation")))


@app.command("show")
def show(device_id: str, hospital: HospitalOption, api: ApiOption = DEFAULT_API, token: TokenOption = "") -> None:
    """One device, with its certificate (PEM) once issued."""
    with _client(api, token) as http:
        device = _call(http, "GET", f"/v1/hospitals/{hospital}/devices/{device_id}")
    out.print(_line(device))
    if device.get("certificate"):
        out.print(device["certificate"], end="")


@app.command("list")
def list_devices(hospital: HospitalOption, api: ApiOption = DEFAULT_API, token: TokenOption = "") -> None:
    """The hospital's devices: gateway, class, owner, state, serial."""
    with _client(api, token) as http:
        items = _call(http, "GET", f"/v1/hospitals/{hospital}/devices")["items"]
    table = Table("NAME", "GATEWAY", "CLASS", "OWNER", "STATE", "SERIAL", box=None)
    for d in items:
        table.add_row(d["name"], d["gateway"], d["deviceClass"], d["owner"], d["state"], d.get("serial") or "")
    out.print(table)
