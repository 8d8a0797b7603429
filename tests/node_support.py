"""A private local cluster with the real kubelet node, for one test module (Linux root; one at a time per machine)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from medcloud_cli.localcluster import images, netsetup
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.node import ctr_args, real_node_supported

SUPPORTED, WHY_NOT = real_node_supported()


@contextlib.contextmanager
def private_node_cluster(directory: Path, options: ClusterOptions, label: str) -> Iterator[LocalCluster]:
    """The cluster started in ``directory`` and stopped after the block; skips where a real node cannot run."""
    if not SUPPORTED:
        pytest.skip(WHY_NOT)
    if netsetup.link_exists(netsetup.NODE_BRIDGE):
        pytest.skip("another real node runs on this machine (one at a time)")
    cluster = LocalCluster(directory, options, progress=lambda msg: print(f"[{label}] {msg}", flush=True))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def imported_image(cluster: LocalCluster) -> str:
    """MedCloud's image, built from this tree if it changed, in the node's containerd; its reference."""
    assert cluster.node is not None
    return images.ensure_imported(ctr_args(cluster.node.dir), progress=print).reference


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close(); print('open')\n"
    "except OSError:\n"
    "    print('blocked')\n"
)


def connects(cluster: LocalCluster, namespace: str, pod: str, host: str, port: int) -> str:
    """'open' or 'blocked': a TCP connection from inside ``pod`` (its image has python3: MedCloud's has)."""
    args = ["exec", "-n", namespace, pod, "--", "python3", "-c", CONNECT, host, str(port)]
    return str(cluster.kubectl(*args).stdout.strip())
