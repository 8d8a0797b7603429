"""Kubeconfig files for the local cluster's identities."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from medcloud_cli.localcluster.pki import KeyPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig(server: str, ca_cert: Path, user: str, credentials: dict[str, str], context: str) -> dict[str, object]:
    # Everything embedded, so the file alone is enough to connect.
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
        "preferences": {},
    }


def build_kubeconfig(
    server: str, ca_cert: Path, user: str, client: KeyPair, context: str = "medcloud-dev"
) -> dict[str, object]:
    """A kubeconfig that authenticates with a client certificate."""
    credentials = {"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)}
    return _kubeconfig(server, ca_cert, user, credentials, context)


def build_token_kubeconfig(
    server: str, ca_cert: Path, user: str, token: str, context: str = "medcloud-dev"
) -> dict[str, object]:
    """A kubeconfig that authenticates with a bearer token (a service account's, from TokenRequest)."""
    return _kubeconfig(server, ca_cert, user, {"token": token}, context)


def write_kubeconfig(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # It embeds a private key or a token.
    path.chmod(0o600)
    return path
