"""A DeviceGateway's ``active`` count: its enrolled devices that some replica saw within the grace period.

Each gateway process knows the devices whose readings it stored, with
Online / Stale / Offline from its grace periods (``GET /devices`` on its
health port, ``medcloud_gateway.presence``). The operator asks every ready
endpoint of the gateway's Service (EndpointSlices: addresses, never pods)
and counts the enrolled Devices that at least one replica reports Online.
If any replica does not answer, the count is left as it was: a partial
answer would report devices offline that are not.

:func:`active_devices` is pure; :func:`endpoint_addresses` reads slices as
the API server returns them; :func:`fetch_presence` is the one HTTP call.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from medcloud.kube.client import Manifest

ONLINE = "Online"
PRESENCE_PATH = "/devices"
TIMEOUT_SECONDS = 2.0


def active_devices(reports: Iterable[Manifest], enrolled: Iterable[str]) -> int:
    """How many of ``enrolled`` (Device names) at least one replica's report shows Online."""
    online = {
        str(device.get("deviceId"))
        for report in reports
        for device in report.get("devices") or []
        if device.get("state") == ONLINE
    }
    return len(online & set(enrolled))


def endpoint_addresses(slices: Iterable[Manifest]) -> list[str]:
    """The addresses of the ready endpoints in a Service's EndpointSlices, each once, in order."""
    found: dict[str, None] = {}
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                found[str(address)] = None
    return list(found)


def fetch_presence(address: str, port: int, timeout: float = TIMEOUT_SECONDS) -> Manifest | None:
    """One replica's ``GET /devices`` (plain HTTP on its health port), or None if it does not answer well."""
    host = f"[{address}]" if ":" in address else address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{PRESENCE_PATH}", timeout=timeout) as response:
            body = json.loads(response.read(1 << 24))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def allowed(address: str, cidrs: Sequence[str]) -> bool:
    """Whether ``address`` is inside one of ``cidrs`` (the pod ranges the operator may connect to)."""
    try:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
    except ValueError:
        return False


def ask_replicas(addresses: Sequence[str], port: int, cidrs: Sequence[str]) -> list[Manifest] | None:
    """Every replica's report, asked at once; None if one is outside ``cidrs`` or does not answer."""
    if not all(allowed(a, cidrs) for a in addresses):
        return None
    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=min(len(addresses), 8)) as pool:
        reports = list(pool.map(lambda address: fetch_presence(address, port), addresses))
    if any(report is None for report in reports):
        return None
    return [r for r in reports if r is not None]
