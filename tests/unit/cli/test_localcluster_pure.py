"""Pure parts of the local cluster: wrapper modules, binary lookup, certificates, kubeconfigs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medcloud_cli.localcluster import binaries, process
from medcloud_cli.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from medcloud_cli.localcluster.pki import CertificateAuthority

GOMOD_EXCERPT = """module k8s.io/kubernetes

go 1.25.0

require (
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/some/fork => github.com/other/fork v1.2.3
)
"""


def test_staging_modules_are_read_from_the_gomod() -> None:
    assert binaries.parse_staging_modules(GOMOD_EXCERPT) == ["k8s.io/api", "k8s.io/client-go"]


def test_wrapper_replaces_each_staging_module_with_its_published_twin() -> None:
    gomod = binaries.kubernetes_wrapper_gomod("v1.35.4", ["k8s.io/api", "k8s.io/client-go"])
    assert "require k8s.io/kubernetes v1.35.4" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.35.4" in gomod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.35.4" in gomod


def test_ldflags_stamp_the_server_version() -> None:
    flags = binaries.kubernetes_ldflags("v1.35.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/component-base/version.gitMinor=35" in flags
    assert "-X k8s.io/client-go/pkg/version.gitVersion=v1.35.4" in flags


def test_explicit_binaries_win_over_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLOUD_CACHE_DIR", str(tmp_path / "cache"))
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "etcd").write_text("#!/bin/sh\n")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert binaries.locate("etcd") == assets / "etcd"
    assert binaries.locate("kube-apiserver") is None

    explicit = tmp_path / "my-apiserver"
    explicit.write_text("#!/bin/sh\n")
    monkeypatch.setenv("TEST_ASSET_KUBE_APISERVER", str(explicit))
    assert binaries.locate("kube-apiserver") == explicit


def test_an_explicit_binary_that_does_not_exist_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLOUD_BIN_MINIO", "/nonexistent/minio")
    with pytest.raises(binaries.BuildError, match="MEDCLOUD_BIN_MINIO=/nonexistent/minio does not name"):
        binaries.locate("minio")


def test_cached_binaries_live_in_versioned_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLOUD_CACHE_DIR", str(tmp_path))
    component = binaries.component_for("kube-scheduler")
    assert component.bin_dir == tmp_path / "bin" / f"kubernetes-{binaries.KUBERNETES_VERSION}"
    assert not component.is_built()
    component.bin_dir.mkdir(parents=True)
    for name in component.binaries:
        (component.bin_dir / name).write_text("")
    assert component.is_built()
    assert binaries.locate("kubectl") == component.bin_dir / "kubectl"


def test_unknown_binary_names_are_refused() -> None:
    with pytest.raises(KeyError, match="unknown binary 'kubelet-typo'"):
        binaries.component_for("kubelet-typo")


def test_the_node_binaries_come_from_the_same_kubernetes_module() -> None:
    node = binaries.component_for("kubelet")
    assert node is binaries.component_for("kube-proxy")
    assert node.version == binaries.component_for("kube-apiserver").version
    assert node.name != "kubernetes"  # their own component: control-plane-only clusters never build them
    assert binaries.component_for("kube-router").version == binaries.KUBE_ROUTER_VERSION


def test_issued_certificates_carry_identity_and_usage(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca", "test-ca")
    pair = ca.issue("alice", "alice", ("hospital-admins", "city"))
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["hospital-admins", "city"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert oct(pair.key.stat().st_mode & 0o777) == "0o600"
    ca_cert = x509.load_pem_x509_certificate(ca.paths.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)


def test_serving_certificates_name_ips_and_hosts(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca", "test-ca")
    pair = ca.issue("server", "srv", server_names=("127.0.0.1", "localhost"), client=False)
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_a_ca_is_reused_from_its_directory(tmp_path: Path) -> None:
    first = CertificateAuthority(tmp_path, "ca", "test-ca")
    second = CertificateAuthority(tmp_path, "ca", "test-ca")
    assert first.cert_pem == second.cert_pem


def test_kubeconfig_embeds_credentials_and_is_private(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca", "test-ca")
    pair = ca.issue("bob", "bob")
    path = write_kubeconfig(
        tmp_path / "kubeconfig", build_kubeconfig("https://127.0.0.1:6443", ca.paths.cert, "bob", pair)
    )
    config = yaml.safe_load(path.read_text())
    assert config["current-context"] == "medcloud-dev"
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-key-data"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_server_ports_come_from_outside_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    ephemeral = process._ephemeral_range()
    ports = [process.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if p in ephemeral]
