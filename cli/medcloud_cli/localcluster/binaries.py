"""Build (once) and locate the binaries of the local cluster.

Every binary is built from its Go module with the machine's Go toolchain into a
versioned cache outside the repository (``~/.cache/medcloud/bin`` by default),
so a second run finds them and builds nothing. Users who already have binaries
point ``KUBEBUILDER_ASSETS`` (the envtest convention), ``TEST_ASSET_<NAME>`` or
``MEDCLOUD_BIN_<NAME>`` at them instead.

Why wrapper modules: ``go install k8s.io/kubernetes/cmd/...`` fails because the
kubernetes go.mod replaces every ``k8s.io/*`` staging module with a relative
path; a small module that requires ``k8s.io/kubernetes`` and replaces each
staging module with its published twin builds. etcd's server module has
relative replaces as well, so it is built from a three-line ``main`` that
calls ``etcdmain.Main``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"
# MinIO's community edition is source-only and has no tags on the module proxy;
# a pinned pseudo-version keeps builds reproducible (never "latest").
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
# The NetworkPolicy enforcer of the real node; v2.1.0 is the only v2 release the module proxy serves.
KUBE_ROUTER_VERSION = "v2.1.0"
# The real node's cluster DNS (a host process); the newest release the module proxy serves.
COREDNS_VERSION = "v1.15.0"

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# The real node's binaries: same Kubernetes module and wrapper, a component of
# their own so that clusters without a real node never wait for them.
NODE_BINARIES = ("kubelet", "kube-proxy")
ALL_BINARIES = (*KUBE_BINARIES, "etcd", "kwok", "minio", "helm")
REAL_NODE_BINARIES = (*NODE_BINARIES, "kube-router", "coredns")

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A binary could not be built; the message carries the command and its output."""


def cache_root() -> Path:
    """Where built binaries live; outside the repository so clean clones reuse them."""
    configured = os.environ.get("MEDCLOUD_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "medcloud"


@dataclass(frozen=True)
class Component:
    """One Go build producing one or more binaries into a versioned folder."""

    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def bin_dir(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}"

    def is_built(self) -> bool:
        return all((self.bin_dir / b).is_file() for b in self.binaries)


COMPONENTS: tuple[Component, ...] = (
    Component("etcd", ETCD_VERSION, ("etcd",)),
    Component("kubernetes", KUBERNETES_VERSION, KUBE_BINARIES),
    Component("kwok", KWOK_VERSION, ("kwok",)),
    Component("minio", MINIO_VERSION, ("minio",)),
    Component("helm", HELM_VERSION, ("helm",)),
    Component("kubernetes-node", KUBERNETES_VERSION, NODE_BINARIES),
    Component("kube-router", KUBE_ROUTER_VERSION, ("kube-router",)),
    Component("coredns", COREDNS_VERSION, ("coredns",)),
)


def component_for(binary: str) -> Component:
    for component in COMPONENTS:
        if binary in component.binaries:
            return component
    raise KeyError(f"unknown binary {binary!r}; known: {', '.join((*ALL_BINARIES, *REAL_NODE_BINARIES))}")


def _env_key(binary: str) -> str:
    return binary.upper().replace("-", "_")


def configured_path(binary: str) -> Path | None:
    """A binary the user points at explicitly, or None.

    Order: ``MEDCLOUD_BIN_<NAME>``, ``TEST_ASSET_<NAME>`` (envtest), then
    ``$KUBEBUILDER_ASSETS/<name>``. An explicit setting that does not exist is an
    error rather than a silent fallback to building.
    """
    key = _env_key(binary)
    for var in (f"MEDCLOUD_BIN_{key}", f"TEST_ASSET_{key}"):
        value = os.environ.get(var)
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise BuildError(f"{var}={value} does not name an existing file")
            return path
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        candidate = Path(assets).expanduser() / binary
        if candidate.is_file():
            return candidate
    return None


def locate(binary: str) -> Path | None:
    """The path of a binary without building anything, or None if absent."""
    explicit = configured_path(binary)
    if explicit is not None:
        return explicit
    path = component_for(binary).bin_dir / binary
    return path if path.is_file() else None


def kubernetes_staging_modules(version: str, run: Callable[..., str]) -> list[str]:
    """Staging modules that k8s.io/kubernetes replaces with ``./staging/...``.

    Read from the module's own go.mod (via the module cache), not from a list
    kept here, so a version bump needs no edit.
    """
    info = json.loads(run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"]))
    gomod = Path(info["GoMod"]).read_text()
    return parse_staging_modules(gomod)


def parse_staging_modules(gomod: str) -> list[str]:
    """Module paths replaced by a ``./staging/`` directory in a go.mod text."""
    pattern = re.compile(r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)
    return sorted(set(pattern.findall(gomod)))


def kubernetes_wrapper_gomod(version: str, staging: Iterable[str]) -> str:
    """go.mod of a module that builds k8s.io/kubernetes commands at ``version``."""
    twin = "v0." + version.removeprefix("v1.")
    lines = [
        "module medcloud.local/kubebuild",
        "",
        "go 1.25",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{module} => {module} {twin}" for module in staging),
        ")",
        "",
    ]
    return "\n".join(lines)


def kubernetes_ldflags(version: str) -> str:
    """Version stamps; without them the server says v0.0.0 and Helm's kubeVersion checks fail."""
    major, minor = version.removeprefix("v").split(".")[:2]
    stamps = {
        "k8s.io/component-base/version.gitVersion": version,
        "k8s.io/component-base/version.gitMajor": major,
        "k8s.io/component-base/version.gitMinor": minor,
        "k8s.io/client-go/pkg/version.gitVersion": version,
        "k8s.io/client-go/pkg/version.gitMajor": major,
        "k8s.io/client-go/pkg/version.gitMinor": minor,
        "k8s.io/component-base/version.gitTreeState": "clean",
    }
    return "-s -w " + " ".join(f"-X {k}={v}" for k, v in stamps.items())


def _locked(lock: IO[str]) -> bool:
    """True when another process holds ``lock`` right now."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(lock, fcntl.LOCK_UN)
    return False


ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


class Builder:
    """Runs the Go builds, printing progress lines and keeping each build's log."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress: Progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.log_dir = cache_root() / "build-logs"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("CGO_ENABLED", "0")
        env["GOFLAGS"] = "-mod=mod -buildvcs=false"
        env.setdefault("GOTOOLCHAIN", "local")
        return env

    def _run(self, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "last-command.log"
        proc = subprocess.run(args, cwd=cwd, env=env or self._env(), capture_output=True, text=True, check=False)
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\n")
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
            raise BuildError(f"`{' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
        return proc.stdout

    def ensure(self, names: Iterable[str] = ALL_BINARIES) -> dict[str, Path]:
        """Paths of the named binaries, building the missing components."""
        if shutil.which("go") is None:
            missing = [n for n in names if locate(n) is None]
            if missing:
                raise BuildError("the Go toolchain is needed to build " + ", ".join(missing) + " (apt or go.dev)")
        result: dict[str, Path] = {}
        for name in names:
            path = locate(name)
            if path is None:
                self.build(component_for(name))
                path = component_for(name).bin_dir / name
            result[name] = path
        return result

    def build(self, component: Component) -> None:
        lock_path = cache_root() / f".{component.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # Two processes (a test run and `dev up`, or parallel helpers) must not
        # build into the same folder: the second waits, then finds it built.
        with lock_path.open("w") as lock:
            if _locked(lock):
                self.progress(f"waiting for another build of {component.name} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._build_locked(component)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _build_locked(self, component: Component) -> None:
        if component.is_built():
            return
        started = time.monotonic()
        self.progress(
            f"building {component.name} {component.version} "
            f"({', '.join(component.binaries)}) into {component.bin_dir} ..."
        )
        staging_dir = component.bin_dir.with_name(component.bin_dir.name + ".partial")
        shutil.rmtree(staging_dir, ignore_errors=True)
        staging_dir.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix=f"medcloud-build-{component.name}-") as tmp:
            work = Path(tmp)
            getattr(self, f"_build_{component.name.replace('-', '_')}")(component, work, staging_dir)
        # Publish atomically, so an interrupted build never looks complete.
        shutil.rmtree(component.bin_dir, ignore_errors=True)
        staging_dir.rename(component.bin_dir)
        self.progress(f"built {component.name} in {time.monotonic() - started:.0f}s")

    def _go_install(self, package: str, out: Path) -> None:
        env = self._env()
        env["GOBIN"] = str(out)
        env["GOFLAGS"] = "-buildvcs=false"
        self._run(["go", "install", "-trimpath", "-ldflags=-s -w", package], env=env)

    def _build_kubernetes(self, component: Component, work: Path, out: Path) -> None:
        staging = kubernetes_staging_modules(component.version, self._run)
        (work / "go.mod").write_text(kubernetes_wrapper_gomod(component.version, staging))
        packages = [f"k8s.io/kubernetes/cmd/{b}" for b in component.binaries]
        self.progress("  resolving modules (first time: a few minutes) ...")
        self._run(["go", "mod", "download"], cwd=work)
        # Every package pinned: a bare `go get pkg` would upgrade k8s.io/kubernetes.
        self._run(["go", "get", *(f"{p}@{component.version}" for p in packages)], cwd=work)
        self.progress("  compiling (cold: tens of minutes on 2 cores) ...")
        self._run(
            [
                "go",
                "build",
                "-trimpath",
                f"-ldflags={kubernetes_ldflags(component.version)}",
                "-o",
                str(out) + "/",
                *packages,
            ],
            cwd=work,
        )

    def _build_kubernetes_node(self, component: Component, work: Path, out: Path) -> None:
        # The same wrapper module as the control plane: with its modules and
        # build cache warm, only the kubelet's and kube-proxy's own packages compile.
        self._build_kubernetes(component, work, out)

    def _build_kube_router(self, component: Component, work: Path, out: Path) -> None:
        self._go_install(f"github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@{component.version}", out)

    def _build_coredns(self, component: Component, work: Path, out: Path) -> None:
        self._go_install(f"github.com/coredns/coredns@{component.version}", out)

    def _build_etcd(self, component: Component, work: Path, out: Path) -> None:
        (work / "go.mod").write_text(
            f"module medcloud.local/etcdbuild\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 {component.version}\n"
        )
        (work / "main.go").write_text(ETCD_MAIN)
        self._run(["go", "get", f"go.etcd.io/etcd/server/v3@{component.version}"], cwd=work)
        self._run(["go", "mod", "tidy"], cwd=work)
        self._run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "etcd"), "."], cwd=work)

    def _build_kwok(self, component: Component, work: Path, out: Path) -> None:
        self._go_install(f"sigs.k8s.io/kwok/cmd/kwok@{component.version}", out)

    def _build_minio(self, component: Component, work: Path, out: Path) -> None:
        self._go_install(f"github.com/minio/minio@{component.version}", out)

    def _build_helm(self, component: Component, work: Path, out: Path) -> None:
        major = component.version.split(".")[0]
        self._go_install(f"helm.sh/helm/{major}/cmd/helm@{component.version}", out)


# kwok needs stage definitions to move nodes and pods along; these are the ones
# kwokctl uses by default, taken from the kwok module's own source.
KWOK_STAGE_DIRS = ("kustomize/stage/node/fast", "kustomize/stage/node/heartbeat-with-lease", "kustomize/stage/pod/fast")


def ensure_kwok_stages(progress: Progress | None = None) -> Path:
    """A multi-document YAML of kwok's default stages, cached next to the binaries."""
    path = cache_root() / "bin" / f"kwok-stages-{KWOK_VERSION}.yaml"
    if path.is_file():
        return path
    builder = Builder(progress)
    info = json.loads(builder._run(["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{KWOK_VERSION}"]))
    source = Path(info["Dir"])
    documents = [
        stage.read_text()
        for folder in KWOK_STAGE_DIRS
        for stage in sorted((source / folder).glob("*.yaml"))
        if stage.name != "kustomization.yaml"
    ]
    if not documents:
        raise BuildError(f"no kwok stages found under {source}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("\n---\n".join(doc.strip() for doc in documents) + "\n")
    partial.rename(path)
    return path


def ensure_binaries(names: Iterable[str] = ALL_BINARIES, progress: Progress | None = None) -> dict[str, Path]:
    """Paths of the named binaries, building whatever is missing."""
    return Builder(progress).ensure(names)


def main() -> None:  # pragma: no cover - thin CLI glue for `python -m`
    names = sys.argv[1:] or list(ALL_BINARIES)
    for name, path in ensure_binaries(names).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":  # pragma: no cover
    main()
