"""What `medcloud dev up` prints and what `medcloud dev status` shows, from a recorded state (no servers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medcloud_cli.commands import dev
from medcloud_cli.localcluster import node
from medcloud_cli.localcluster.broker import BrokerInfo
from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster, MinioInfo
from medcloud_cli.localcluster.platform import KEY_SERVICE_AUDIENCE, PlatformInfo, broker_env, storage_env
from medcloud_cli.main import app as medcloud_cli


def _state(tmp_path: Path) -> ClusterState:
    return ClusterState(
        state_dir=str(tmp_path),
        server="https://127.0.0.1:6443",
        kubeconfig=str(tmp_path / "kubeconfig"),
        user_kubeconfig=str(tmp_path / "kubeconfig-unprivileged"),
        audit_log=str(tmp_path / "logs" / "audit.log"),
        minio=MinioInfo(endpoint="127.0.0.1:9000", access_key="root", secret_key="s3cret"),
    )


def _platform(api_url: str) -> PlatformInfo:
    return PlatformInfo(
        api_url=api_url,
        city_admin_token="tok",
        operator_metrics="http://127.0.0.1:9090/metrics",
        key_service_url="http://127.0.0.1:8443",
        prometheus_url="http://127.0.0.1:9091",
    )


def test_dev_up_prints_the_key_service_url_and_how_to_get_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev._print_ready(_state(tmp_path), _platform("http://127.0.0.1:8001"))
    captured = capsys.readouterr()
    exports = [line for line in captured.out.splitlines() if line.startswith("export ")]
    # The variable `medcloud records` reads, on stdout (so `eval "$(medcloud dev up)"` picks it up).
    assert "export MEDCLOUD_KEY_SERVICE_URL=http://127.0.0.1:8443" in exports
    assert f"--audience {KEY_SERVICE_AUDIENCE}" in captured.err


def test_dev_status_lists_the_key_service_and_its_url(tmp_path: Path) -> None:
    state = _state(tmp_path)
    # This test process stands in for live servers.
    state.pids = {"etcd": os.getpid(), "keyservice": os.getpid(), "operator": os.getpid()}
    state.ports = {"etcd": 2379, "keyservice": 8443, "operator-metrics": 9090, "operator-probe": 8080}
    state.extra["urls"] = {"keyservice": "http://127.0.0.1:8443", "api": "http://127.0.0.1:8001"}
    state.save(tmp_path / LocalCluster.STATE_FILE)

    result = CliRunner().invoke(medcloud_cli, ["dev", "status", "--state-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "8443" in rows["keyservice"]
    assert "running" in rows["keyservice"]
    assert "9090" in rows["operator"]
    assert "keyservice: http://127.0.0.1:8443" in result.output


def test_storage_env_is_what_the_operator_settings_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`dev up`'s operator must see MinIO, or no RecordStore (and so no key) ever gets provisioned."""
    from medcloud_operator.settings import OperatorSettings

    cluster = LocalCluster(tmp_path)
    cluster.state = _state(tmp_path)
    env = storage_env(cluster)
    fields = set(OperatorSettings.model_fields)
    for field in fields:
        monkeypatch.delenv(f"MEDCLOUD_{field.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert {n.removeprefix("MEDCLOUD_").lower() for n in env} <= fields, "a variable no setting reads"
    storage = OperatorSettings()
    assert storage.configured
    assert storage.minio_endpoint == "http://127.0.0.1:9000"
    assert OperatorSettings().storage_port == 9000


def test_broker_env_gives_the_operator_the_brokers_client_ca(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`dev up`'s operator issues gateways' broker certificates from the CA the local broker checks."""
    from medcloud_operator.settings import OperatorSettings

    cluster = LocalCluster(tmp_path)
    cluster.state = _state(tmp_path)
    assert broker_env(cluster) == {}
    cluster.state.broker = BrokerInfo(
        "127.0.0.1", 8883, "/pki/mqtt-ca.crt", "/pki/c.crt", "/pki/c.key", "/pki/mqtt-ca.key"
    )
    for field in OperatorSettings.model_fields:
        monkeypatch.delenv(f"MEDCLOUD_{field.upper()}", raising=False)
    for name, value in broker_env(cluster).items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert (settings.broker_client_ca_file, settings.broker_client_ca_key_file) == (
        "/pki/mqtt-ca.crt",
        "/pki/mqtt-ca.key",
    )
    # A state written before the CA key was recorded: nothing, rather than half a setting.
    cluster.state.broker = BrokerInfo("127.0.0.1", 8883, "/pki/mqtt-ca.crt", "/pki/c.crt", "/pki/c.key")
    assert broker_env(cluster) == {}


def _envvars_read_by_commands() -> dict[str, set[str]]:
    """Every environment variable a `medcloud` option reads, with the commands that read it."""
    import typer.main

    read: dict[str, set[str]] = {}

    def walk(command: Any, path: str) -> None:
        for param in command.params:
            names = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for name in names:
                if name:
                    read.setdefault(str(name), set()).add(path)
        # Typer carries its own copy of click: a group is whatever has sub-commands.
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(medcloud_cli), "")
    return read


def test_dev_up_exports_the_names_the_commands_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eval "$(medcloud dev up)"`, then `medcloud onboard` reaches the API `dev up` started (not 127.0.0.1:8080)."""
    dev._print_ready(_state(tmp_path), _platform("http://127.0.0.1:43001"))
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("export ")
    )
    read = _envvars_read_by_commands()

    assert exports["MEDCLOUD_API_URL"] == "http://127.0.0.1:43001"
    assert "onboard" in read["MEDCLOUD_API_URL"]
    assert "onboard" in read["MEDCLOUD_TOKEN"]
    assert "records put" in read["MEDCLOUD_KEY_SERVICE_URL"]
    # Every variable `dev up` prints for the platform is one a command reads (no second spelling).
    for name in ("MEDCLOUD_API_URL", "MEDCLOUD_TOKEN", "MEDCLOUD_KEY_SERVICE_URL"):
        assert name in exports
        assert name in read
    api_names = {name for name in read if "API" in name}
    assert api_names == {"MEDCLOUD_API_URL"}, "one name for the control API's URL"


def _stopped_state_dir(tmp_path: Path) -> Path:
    """A state directory as `dev up` leaves it, with no server alive (the state file names none)."""
    state_dir = tmp_path / "dev"
    for entry in ("etcd/member", "minio-data", "pki", "logs"):
        (state_dir / entry).mkdir(parents=True)
    (state_dir / "etcd" / "member" / "wal").write_text("hospitals")
    state = ClusterState(
        state_dir=str(state_dir),
        server="https://127.0.0.1:6443",
        kubeconfig=str(state_dir / "kubeconfig"),
        user_kubeconfig=str(state_dir / "kubeconfig-unprivileged"),
        audit_log=str(state_dir / "logs" / "audit.log"),
    )
    state.save(state_dir / LocalCluster.STATE_FILE)
    return state_dir


def test_dev_down_says_what_it_keeps_and_how_to_start_clean(tmp_path: Path) -> None:
    state_dir = _stopped_state_dir(tmp_path)

    result = CliRunner().invoke(medcloud_cli, ["dev", "down", "--state-dir", str(state_dir)])

    assert result.exit_code == 0, result.output
    assert (state_dir / "etcd" / "member" / "wal").exists(), "down keeps the cluster's data"
    assert f"kept in {state_dir}" in result.output
    assert "etcd/" in result.output
    assert "every Hospital" in result.output
    assert "minio-data/" in result.output
    assert "medcloud dev down --purge" in result.output


def test_dev_down_purge_deletes_the_state(tmp_path: Path) -> None:
    state_dir = _stopped_state_dir(tmp_path)

    result = CliRunner().invoke(medcloud_cli, ["dev", "down", "--purge", "--state-dir", str(state_dir)])

    assert result.exit_code == 0, result.output
    assert not state_dir.exists()
    assert f"deleted {state_dir}" in result.output


def test_dev_down_purge_never_deletes_a_folder_the_cluster_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")

    result = CliRunner().invoke(medcloud_cli, ["dev", "down", "--purge", "--state-dir", str(precious)])

    assert result.exit_code == 1
    assert (precious / "chapter1.tex").exists()
    assert "not deleting it" in result.output


@pytest.mark.parametrize(
    ("supported", "args", "says"),
    [
        (False, ["--platform", "chart"], "no real node here"),
        (True, ["--platform", "chart", "--no-real-node"], "drop --no-real-node"),
    ],
)
def test_chart_mode_without_a_real_node_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, supported: bool, args: list[str], says: str
) -> None:
    monkeypatch.setattr(node, "real_node_supported", lambda: (supported, "the real node needs root"))
    result = CliRunner().invoke(medcloud_cli, ["dev", "up", "--state-dir", str(tmp_path), *args])
    assert result.exit_code == 1
    assert says in result.output
    assert list(tmp_path.iterdir()) == []
