"""The real node's footprint on the machine outside its state folder, and its undoing.

A kubelet node cannot live in a folder alone: it needs a node address on a
bridge, the pod bridge and its routes, iptables chains (kubelet, kube-proxy,
kube-router), ipsets (kube-router), cgroups, mounts and a few fixed paths the
components create whatever their flags say. `HostFootprint` records what the
machine looked like before (``ip_forward``, which fixed paths existed), sets up
the two bridges, and `undo()` removes every trace, so that `dev down` (or the
end of a test run) leaves the machine as it found it.

Only the project's own bridges and addresses are touched: the node address is
a /32 on a bridge with no ports (local only), and the service range is routed
to the pod bridge so that no pod or service address ever leaves through the
machine's own interfaces.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

NODE_BRIDGE = "mc-node0"
POD_BRIDGE = "mc-pods0"
# The node's address: the kubelet refuses a loopback node IP, and pods must reach the API server.
NODE_IP = "10.89.0.1"
POD_CIDR = "10.88.0.0/24"
CNI_NETWORK = "medcloud"
# Chains and ipsets the kubelet, kube-proxy and kube-router create all start so.
KUBE_PREFIXES = ("KUBE-",)
IPSET_PREFIXES = ("KUBE-", "kube-router", "inet6:KUBE-", "inet6:kube-router")
CGROUP_NAMES = ("kubepods", "k8s.io")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))
# Created by the components regardless of their flags (containerd 1.6's shim
# socket folder and fifo folder are fixed; the kubelet's device-plugin folder too).
FIXED_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/run/containerd"),
    Path("/var/lib/cni"),
    Path("/run/netns"),
)


class HostCommandError(RuntimeError):
    """A command changing the machine's network failed."""


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise HostCommandError(f"`{shlex.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def stale_pod_bridge() -> bool:
    """The pod bridge exists with no port attached (no pod's veth)."""
    ports = Path("/sys/class/net", POD_BRIDGE, "brif")
    return ports.is_dir() and not any(ports.iterdir())


@dataclass
class HostFootprint:
    """What the node may change outside its state folder, recorded before it starts."""

    service_cidr: str
    ip_forward: str = "0"
    preexisting: list[str] = field(default_factory=list)

    @classmethod
    def record(cls, service_cidr: str) -> HostFootprint:
        return cls(
            service_cidr=service_cidr,
            ip_forward=IP_FORWARD.read_text().strip(),
            preexisting=[str(p) for p in FIXED_PATHS if p.exists()],
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> HostFootprint:
        preexisting = raw.get("preexisting") or []
        assert isinstance(preexisting, list)
        return cls(
            service_cidr=str(raw["service_cidr"]),
            ip_forward=str(raw.get("ip_forward", "0")),
            preexisting=[str(p) for p in preexisting],
        )

    # ------------------------------------------------------------ set up
    def create_bridges(self) -> None:
        """The node bridge with its /32 address, and the pod bridge the service range is routed to."""
        if not link_exists(NODE_BRIDGE) and stale_pod_bridge():
            # Every node creates both bridges and removes the pod bridge first: one left
            # alone, with no port, is an interrupted teardown's (no pod can use it).
            _run(["ip", "link", "del", POD_BRIDGE], check=False)
        for bridge in (NODE_BRIDGE, POD_BRIDGE):
            if link_exists(bridge):
                raise HostCommandError(f"{bridge} exists already: another real node runs, or a teardown was skipped")
        _run(["ip", "link", "add", NODE_BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_BRIDGE])
        _run(["ip", "link", "set", NODE_BRIDGE, "up"])
        # The CNI bridge plugin adopts an existing bridge; creating it here lets the
        # service route exist before the first pod, so unmatched service IPs never
        # follow the default route out of the machine.
        _run(["ip", "link", "add", POD_BRIDGE, "type", "bridge"])
        _run(["ip", "link", "set", POD_BRIDGE, "up"])
        _run(["ip", "route", "add", self.service_cidr, "dev", POD_BRIDGE])

    # -------------------------------------------------------------- undo
    def undo(self, state_dir: Path) -> list[str]:
        """Remove every trace; returns what could not be removed (empty when clean)."""
        problems: list[str] = []
        remove_kube_iptables()
        problems += destroy_kube_ipsets()
        problems += unmount_under([state_dir, *NETNS_DIRS, Path("/run/containerd"), Path("/var/lib/kubelet")])
        problems += remove_cgroups()
        for bridge in (POD_BRIDGE, NODE_BRIDGE):
            if link_exists(bridge):
                _run(["ip", "link", "del", bridge], check=False)
        with contextlib.suppress(OSError):
            IP_FORWARD.write_text(self.ip_forward + "\n")
        for path in FIXED_PATHS:
            if str(path) not in self.preexisting:
                shutil.rmtree(path, ignore_errors=True)
        problems += [f"link {b} remains" for b in (POD_BRIDGE, NODE_BRIDGE) if link_exists(b)]
        return problems


# ---------------------------------------------------------------- iptables
def is_kube_chain(name: str) -> bool:
    return name.startswith(KUBE_PREFIXES)


def kube_rule_deletions(saved: str) -> dict[str, tuple[list[list[str]], list[str]]]:
    """From ``iptables-save`` text: per table, the rules of built-in chains that jump to
    KUBE-* chains (as ``-D`` argument lists) and the KUBE-* chains themselves."""
    result: dict[str, tuple[list[list[str]], list[str]]] = {}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            result[table] = ([], [])
        elif line.startswith(":") and table:
            chain = line[1:].split()[0]
            if is_kube_chain(chain):
                result[table][1].append(chain)
        elif line.startswith("-A ") and table:
            words = shlex.split(line)
            chain = words[1]
            target = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")), "")
            if not is_kube_chain(chain) and is_kube_chain(target):
                result[table][0].append(["-D", *words[1:]])
    return {t: v for t, v in result.items() if v[0] or v[1]}


def kube_chains_left() -> list[str]:
    """``table/chain`` of every KUBE-* chain in iptables and ip6tables (empty when clean)."""
    left = []
    for tool in ("iptables", "ip6tables"):
        saved = _save(tool)
        for table, (_rules, chains) in kube_rule_deletions(saved).items():
            left += [f"{tool}:{table}/{c}" for c in chains]
            left += [f"{tool}:{table}/jump {' '.join(r[1:])}" for r in _rules]
    return left


def _save(tool: str) -> str:
    if shutil.which(f"{tool}-save") is None:
        return ""
    return _run([f"{tool}-save"], check=False).stdout


def remove_kube_iptables() -> None:
    """Delete the jumps into KUBE-* chains, then flush and delete those chains."""
    for tool in ("iptables", "ip6tables"):
        for table, (rules, chains) in kube_rule_deletions(_save(tool)).items():
            for rule in rules:
                _run([tool, "-w", "-t", table, *rule], check=False)
            for chain in chains:
                _run([tool, "-w", "-t", table, "-F", chain], check=False)
            for chain in chains:
                _run([tool, "-w", "-t", table, "-X", chain], check=False)


# ------------------------------------------------------------------ ipsets
def kube_ipsets() -> list[str]:
    if shutil.which("ipset") is None:
        return []
    names = _run(["ipset", "list", "-n"], check=False).stdout.split()
    return [n for n in names if n.startswith(IPSET_PREFIXES)]


def destroy_kube_ipsets() -> list[str]:
    for name in kube_ipsets():
        _run(["ipset", "destroy", name], check=False)
    return [f"ipset {n} remains" for n in kube_ipsets()]


# ------------------------------------------------------------------ mounts
def mounts_under(roots: Iterable[Path]) -> list[str]:
    """Mount points at or below any of ``roots``, deepest (latest) first."""
    prefixes = [str(r.resolve()) if r.exists() else str(r) for r in roots]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            points.append(point)
    return list(reversed(points))


def unmount_under(roots: list[Path]) -> list[str]:
    # The kubelet bind-mounts its root onto itself and pods' volumes under it;
    # containerd mounts rootfs and shm; CNI binds network namespaces.
    for _ in range(3):
        points = mounts_under(roots)
        if not points:
            return []
        for point in points:
            if _run(["umount", point], check=False).returncode != 0:
                _run(["umount", "-l", point], check=False)
    return [f"mount {p} remains" for p in mounts_under(roots)]


# ----------------------------------------------------------------- cgroups
def kube_cgroups() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    found = []
    for hierarchy in [CGROUP_ROOT, *sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]:
        for name in CGROUP_NAMES:
            path = hierarchy / name
            if path.is_dir() and (path / "cgroup.procs").exists():
                found.append(path)
    return found


def cgroup_pids() -> list[int]:
    """Processes still in the node's cgroups: containers whose shim died (a crash) live on there."""
    pids: set[int] = set()
    for top in kube_cgroups():
        for folder, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
    return sorted(pids)


def remove_cgroups() -> list[str]:
    """Kill what is left in the kubelet's and containerd's cgroups, then rmdir them, children first."""
    # Only the node's containers live in these cgroups (one real node per machine).
    deadline = time.monotonic() + 10
    while (pids := cgroup_pids()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for top in kube_cgroups():
        for folder, _dirs, _files in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    return [f"cgroup {p} remains" for p in kube_cgroups()]


def leftovers(state_dir: Path, footprint: HostFootprint) -> list[str]:
    """Everything of a node still on the machine; empty after a clean teardown."""
    left = kube_chains_left()
    left += [f"ipset {n}" for n in kube_ipsets()]
    left += [f"cgroup {p}" for p in kube_cgroups()]
    left += [f"link {b}" for b in (NODE_BRIDGE, POD_BRIDGE) if link_exists(b)]
    left += [f"mount {m}" for m in mounts_under([state_dir, *NETNS_DIRS, Path("/run/containerd")])]
    left += [f"path {p}" for p in FIXED_PATHS if p.exists() and str(p) not in footprint.preexisting]
    if IP_FORWARD.read_text().strip() != footprint.ip_forward:
        left.append("ip_forward changed")
    return left
