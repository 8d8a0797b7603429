"""What `medcloud dev up` prints and what `medcloud dev status` shows, from a recorded state (no servers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medcloud_cli.commands import dev
from medcloud_cli.localcluster.cluster import ClusterState, LocalCluster, MinioInfo
from medcloud_cli.localcluster.platform import KEY_SERVICE_AUDIENCE, PlatformInfo, storage_env
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


def test_dev_up_prints_the_key_service_url_and_how_to_get_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    platform = PlatformInfo(
        api_url="http://127.0.0.1:8001",
        city_admin_token="tok",
        operator_metrics="http://127.0.0.1:9090/metrics",
        key_service_url="http://127.0.0.1:8443",
    )
    dev._print_ready(_state(tmp_path), platform)
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
    from medcloud_operator.storage import StorageSettings

    cluster = LocalCluster(tmp_path)
    cluster.state = _state(tmp_path)
    env = storage_env(cluster)
    fields = set(StorageSettings.model_fields) | set(OperatorSettings.model_fields)
    for field in fields:
        monkeypatch.delenv(f"MEDCLOUD_{field.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert {n.removeprefix("MEDCLOUD_").lower() for n in env} <= fields, "a variable no settings class reads"
    storage = StorageSettings()
    assert storage.configured
    assert storage.minio_endpoint == "http://127.0.0.1:9000"
    assert OperatorSettings().storage_port == 9000
