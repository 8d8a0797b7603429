"""A real PostgreSQL server on loopback for the local cluster: the consortium exchange's database.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<major>/bin``).
Each start initialises a fresh data folder with ``initdb`` and runs ``postgres`` on a free
127.0.0.1 port with password (SCRAM) authentication only, no Unix socket. With a real node it
listens on the node address too and admits the pod range (platformservices.py).

PostgreSQL refuses to run as root. When this process is root, the server runs as the
``postgres`` system user (``setpriv``, which execs in place, so the server stays the
process we watch and stop), and its data folder lives in a directory of its own under
the system temp folder, owned by that user: a test run's state folder is private to
root (mode 0700) and that user could not enter it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medcloud_cli.localcluster import netsetup
from medcloud_cli.localcluster.process import StartupError, free_port, port_accepts

if TYPE_CHECKING:
    from medcloud_cli.localcluster.cluster import LocalCluster

PROCESS_NAME = "postgres"
SUPERUSER = "medcloud"
DATABASE = "medcloud"
SERVICE_USER = "postgres"
_PG_ROOT = Path("/usr/lib/postgresql")


@dataclass
class PostgresInfo:
    """Where the server listens and its superuser's credentials (state.json is mode 0600)."""

    host: str
    port: int
    user: str
    password: str
    database: str
    data_dir: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries; ``MEDCLOUD_POSTGRES_BIN`` overrides."""
    override = os.environ.get("MEDCLOUD_POSTGRES_BIN")
    if override:
        return Path(override)
    majors = sorted(
        (p for p in _PG_ROOT.glob("*/bin") if (p / "postgres").exists() and re.fullmatch(r"\d+", p.parent.name)),
        key=lambda p: int(p.parent.name),
    )
    if not majors:
        raise StartupError("PostgreSQL is not installed: apt-get install postgresql (scripts/bootstrap.sh does)")
    return majors[-1]


def _run_as() -> list[str]:
    """The prefix that runs a command as the unprivileged server user (nothing when we are not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise StartupError(f"as root, PostgreSQL runs as the {SERVICE_USER} user (Debian's package)") from None
    return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups"]


def _data_root() -> Path:
    path = Path(tempfile.mkdtemp(prefix="medcloud-postgres-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    return path


def start_postgres(cluster: LocalCluster) -> PostgresInfo:
    """initdb a fresh data folder and start the server; returns once it accepts connections."""
    state = cluster._require_state()
    binaries = bin_dir()
    prefix = _run_as()
    root = _data_root()
    data = root / "data"
    password = secrets.token_urlsafe(24)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if prefix:
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    pwfile.chmod(0o600)
    init = subprocess.run(
        [
            *prefix,
            str(binaries / "initdb"),
            f"--pgdata={data}",
            f"--username={SUPERUSER}",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    pwfile.unlink()
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise StartupError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    if cluster.node is not None:
        # Pods reach it through the platform Service (the node address); they connect from the pod range.
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {netsetup.POD_CIDR} scram-sha-256\n")
    port = free_port()
    state.ports[PROCESS_NAME] = port
    args = [
        *prefix,
        str(binaries / "postgres"),
        "-D",
        str(data),
        "-c",
        f"listen_addresses={','.join(dict.fromkeys(('127.0.0.1', cluster.server_host)))}",
        "-c",
        f"port={port}",
        # TCP only: no socket file to place where the server user may write.
        "-c",
        "unix_socket_directories=",
        # A throwaway development server: durability is not worth the fsync latency.
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "log_min_messages=warning",
    ]
    if prefix and not cluster.options.detach:
        # setpriv drops the parent-death signal with the credentials; it sets it again just before exec.
        args.insert(len(prefix), "--pdeathsig=TERM")
    proc = cluster.spawn(PROCESS_NAME, args, (port,), env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    proc.wait_ready(lambda: port_accepts(port) and _accepts_login(binaries, port), 60)
    info = PostgresInfo(
        host="127.0.0.1",
        port=port,
        user=SUPERUSER,
        password=password,
        database=DATABASE,
        data_dir=str(root),
    )
    _create_database(binaries, info)
    return info


def _accepts_login(binaries: Path, port: int) -> bool:
    ready = subprocess.run(
        [str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False, capture_output=True
    )
    return ready.returncode == 0


def _create_database(binaries: Path, info: PostgresInfo) -> None:
    done = subprocess.run(
        [str(binaries / "createdb"), "-h", info.host, "-p", str(info.port), "-U", info.user, info.database],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": info.password},
    )
    if done.returncode != 0:
        raise StartupError(f"createdb {info.database} failed: {done.stderr.strip()}")


def remove_data(info: PostgresInfo | None) -> None:
    """Drop the data folder of a stopped server (a fresh one is made at each start)."""
    if info is not None and Path(info.data_dir).name.startswith("medcloud-postgres-"):
        with contextlib.suppress(OSError):
            shutil.rmtree(info.data_dir)
