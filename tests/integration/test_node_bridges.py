"""The real node's bridges on the machine: a pod bridge an interrupted teardown left alone is taken
over, one a pod still uses is refused, and `undo` removes both (Linux root, `ip`; skipped elsewhere
or while a real node runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from medcloud_cli.localcluster import netsetup

pytestmark = [pytest.mark.node]

# A documentation range (RFC 5737): routed to the pod bridge only while the test runs.
TEST_SERVICE_CIDR = "198.51.100.0/24"
PORT = "mc-test-port0"
PEER = "mc-test-peer0"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def footprint(tmp_path: Path) -> Iterator[netsetup.HostFootprint]:
    if os.geteuid() != 0 or shutil.which("ip") is None or not Path("/sys/class/net").is_dir():
        pytest.skip("needs Linux root with iproute2")
    if netsetup.link_exists(netsetup.NODE_BRIDGE) or netsetup.link_exists(netsetup.POD_BRIDGE):
        pytest.skip("a real node runs on this machine")
    recorded = netsetup.HostFootprint.record(TEST_SERVICE_CIDR)
    yield recorded
    subprocess.run(["ip", "link", "del", PORT], capture_output=True, check=False)
    assert recorded.undo(tmp_path) == []
    assert not netsetup.link_exists(netsetup.NODE_BRIDGE)
    assert not netsetup.link_exists(netsetup.POD_BRIDGE)


def test_a_pod_bridge_left_alone_without_ports_is_taken_over(footprint: netsetup.HostFootprint) -> None:
    ip("link", "add", netsetup.POD_BRIDGE, "type", "bridge")
    assert netsetup.stale_pod_bridge()

    footprint.create_bridges()

    assert netsetup.link_exists(netsetup.NODE_BRIDGE)
    assert netsetup.link_exists(netsetup.POD_BRIDGE)


def test_a_pod_bridge_with_a_port_is_refused_and_kept(footprint: netsetup.HostFootprint) -> None:
    ip("link", "add", netsetup.POD_BRIDGE, "type", "bridge")
    ip("link", "add", PORT, "type", "veth", "peer", "name", PEER)  # as the CNI bridge plugin attaches a pod
    ip("link", "set", PORT, "master", netsetup.POD_BRIDGE)
    assert not netsetup.stale_pod_bridge()

    with pytest.raises(netsetup.HostCommandError, match="mc-pods0 exists already"):
        footprint.create_bridges()

    assert netsetup.link_exists(netsetup.POD_BRIDGE)
    assert not netsetup.link_exists(netsetup.NODE_BRIDGE)
