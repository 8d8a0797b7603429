"""Start, watch and stop the local cluster's server processes.

Each server runs in its own session (process group) with its output in a log
file, so `medcloud dev up` can return while the servers keep running, and so
that stopping one also stops anything it forked. Readiness is a probe the
caller passes, polled until a deadline; a server that exits or never becomes
ready raises `StartupError` carrying the tail of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A server did not start; the message names it and shows the end of its log."""


# Ports for our servers come from below the kernel's ephemeral range: a port
# the kernel handed out for "bind to 0" is also one it may give the next
# outgoing connection (to MinIO, the API server, ...) before our server binds
# it, which made busy test runs fail with "address already in use". They also
# stay below Kubernetes' NodePort range (30000-32767): kube-proxy opens node
# ports on the real node's address, where our servers listen too, and
# kube-router lets every pod reach a node-local port in that range whatever
# the NetworkPolicies say (its "allow LOCAL TCP traffic to node ports" rule).
_SERVER_PORTS = range(20000, 30000)
_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range, not handed out before."""
    ephemeral = _ephemeral_range()
    candidates = [p for p in _SERVER_PORTS if p not in ephemeral and p not in _handed_out]
    # Random order: several test runs on one machine rarely try the same port first.
    for port in random.sample(candidates, len(candidates)):
        if port_is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when nothing listens on the port (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # Every address, never listened on: a server on the real node's address (10.89.0.1) holds
            # its port as surely as one on loopback.
            sock.bind(("0.0.0.0", port))  # noqa: S104 - bound to test the port, closed at once
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Test clusters must not outlive a test run that is killed hard.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class ServerProcess:
    """One running server: its name, command, log and the ports it holds."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    ports: tuple[int, ...] = ()
    cwd: Path | None = None
    die_with_parent: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.pid = self.popen.pid

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll ``probe`` until it is true; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if not self.running():
                raise StartupError(
                    f"{self.name} exited during startup; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(Exception):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{self.name} was not ready within {timeout:.0f}s; last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=0.1)
            if not pid_alive(self.pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5)
        # Children that left the group (none of ours do) would be missed here;
        # tests check for stray processes and ports to catch that.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
