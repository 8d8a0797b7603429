"""Whether a Consortium's exchange serves, asked of the exchange itself (its ``/readyz``).

Pods' readiness says the same thing where a kubelet runs the probe; asking the
exchange directly also holds where it does not (KWOK nodes report every pod
ready, a local cluster runs the exchange as a process) and tells *what* is
down, which the condition's message then names. The verdict is pure input to
the builders: ``None`` when it serves, else why not.
"""

from __future__ import annotations

import httpx

from medcloud_operator.settings import OperatorSettings


def readiness_url(settings: OperatorSettings, consortium: str) -> str:
    return settings.exchange_readiness_url.format(consortium=consortium, namespace=settings.operator_namespace)


def unready_because(settings: OperatorSettings, consortium: str) -> str | None:
    """``None`` when the exchange answers its readiness check with 200 (or no URL is configured: the pods'
    readiness alone decides); otherwise what it said, or why it could not be asked."""
    if not settings.exchange_readiness_url:
        return None
    url = readiness_url(settings, consortium)
    try:
        response = httpx.get(url, timeout=settings.exchange_probe_timeout_seconds)
    except httpx.HTTPError as exc:
        return f"{url} cannot be reached ({type(exc).__name__})"
    if response.status_code == 200:
        return None
    try:
        diagnostics = str(response.json()["issue"][0]["diagnostics"])
    except (ValueError, KeyError, IndexError, TypeError):
        diagnostics = response.text[:200]
    return f"{url} answers {response.status_code}: {diagnostics}"
