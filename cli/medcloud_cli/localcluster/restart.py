"""Start again the servers of a local cluster that have died, as they were started the first time.

`medcloud dev up` on a cluster whose servers all run is refused; on one where
some have died (killed, crashed, the machine's OOM killer) it starts only
those, with the command, environment and ports recorded in ``state.json``, so
everything that talks to them (kubeconfigs, the operator's MinIO endpoint,
the exported URLs) stays right, and the data directories are the same.
"""

from __future__ import annotations

import time
from pathlib import Path

from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster, Progress
from medcloud_cli.localcluster.process import ServerProcess, StartupError, log_tail, pid_alive, port_is_free

READY_TIMEOUT = 60.0


def _wait_listening(proc: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(port_is_free(port) for port in proc.ports):
        if not proc.running():
            raise StartupError(f"{proc.name} exited again; last lines of {proc.log_path}:\n{log_tail(proc.log_path)}")
        if time.monotonic() > deadline:
            raise StartupError(f"{proc.name} did not listen on {list(proc.ports)} within {timeout:.0f}s")
        time.sleep(0.2)


def restart_missing(state_dir: Path, progress: Progress = lambda _msg: None) -> list[str]:
    """Start the recorded servers that are not running; their names. Raises StartupError if one cannot be."""
    path = state_dir / LocalCluster.STATE_FILE
    state = ClusterState.load(path)
    dead = [name for name, pid in state.pids.items() if not pid_alive(pid)]
    unknown = [name for name in dead if name not in state.commands]
    if unknown:
        raise StartupError(
            f"state.json does not say how {', '.join(unknown)} was started (written by an older medcloud); "
            "`medcloud dev down` then `medcloud dev up` restarts the whole cluster, data kept"
        )
    for name in dead:
        command = state.commands[name]
        proc = ServerProcess(
            name=name,
            args=command["args"],
            log_path=Path(command["log"]),
            env=command["env"],
            ports=tuple(command["ports"]),
            cwd=Path(command["cwd"]) if command["cwd"] else None,
        )
        progress(f"starting {name} again ...")
        proc.start()
        assert proc.pid is not None
        _wait_listening(proc, READY_TIMEOUT)
        state.pids[name] = proc.pid
        # Saved after each one: should a later one fail, dev status and dev down still find this one.
        state.save(path)
    return dead
