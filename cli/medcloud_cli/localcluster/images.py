"""MedCloud's image, built from the source with no registry and no Docker, and imported into the node.

One image serves every deployable (operator, control API, key service,
gateway; the chart picks the command by ``args``), as the Dockerfile does for
registries elsewhere. It says the same things as the Dockerfile: Python 3.11,
the project installed from its wheel with its dependencies, user 10001, a root
filesystem that can be mounted read-only (no byte-code written at run time),
``ENTRYPOINT ["medcloud"]``.

Two layers:

- the base: a Debian rootfs with python3 from ``mmdebstrap``, cached outside
  the repository by its package set (built once per machine, about a minute);
- the project: ``pip wheel`` of the project and its dependencies on the host
  (pip inside the chroot cannot verify PyPI's TLS here), installed with
  ``pip install --no-index --target``; rebuilt only when the source changed
  (the image tag is the source digest).

The kubelet's sandbox (pause) image is built here too: ``pause.c`` from the
Kubernetes module, compiled statically.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medcloud_cli.localcluster import binaries
from medcloud_cli.localcluster.ociarchive import ImageConfig, write_oci_archive

Progress = Callable[[str], None]

PAUSE_REFERENCE = "medcloud.local/pause:3.10"
IMAGE_REPOSITORY = "medcloud.local/medcloud"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3",)
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
)
SITE_PACKAGES = "/opt/medcloud/site-packages"
IMAGE_UID = 10001
# The same environment the Dockerfile sets; PYTHONPATH replaces its pip install into the system.
IMAGE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"PYTHONPATH={SITE_PACKAGES}",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
)
# The console script pip would write has the host's interpreter in its #! line.
ENTRYPOINT_SCRIPT = """#!/usr/bin/python3
import sys

from medcloud_cli.main import app

sys.exit(app())
"""
SOURCE_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def images_dir() -> Path:
    return binaries.cache_root() / "images"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise binaries.BuildError(f"`{' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


# ------------------------------------------------------------------ source
def package_dirs(root: Path) -> list[Path]:
    """The folders the distribution is built from, read from pyproject.toml's package finder."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    patterns = [p.split(".")[0].rstrip("*") for p in find.get("include", ["*"])]
    found = []
    for where in find.get("where", ["."]):
        base = root / where
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if (
                child.is_dir()
                and (child / "__init__.py").exists()
                and any(fnmatch.fnmatch(child.name, p + "*") for p in patterns)
            ):
                found.append(child)
    return found


def _source_files(root: Path) -> Iterator[Path]:
    yield root / "pyproject.toml"
    yield root / "README.md"
    for folder in package_dirs(root):
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if d not in SOURCE_SKIP_DIRS)
            for name in sorted(filenames):
                if not name.endswith((".pyc", ".pyo")):
                    yield Path(dirpath) / name


def source_digest(root: Path) -> str:
    """A digest of everything the wheel is built from: the image tag."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def image_reference(root: Path | None = None) -> str:
    return f"{IMAGE_REPOSITORY}:{source_digest(root or repo_root())[:16]}"


# ------------------------------------------------------------------- pause
def pause_source() -> Path:
    info = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{binaries.KUBERNETES_VERSION}"]))
    return Path(info["Dir"]) / "build" / "pause" / "linux" / "pause.c"


def ensure_pause_archive(progress: Progress | None = None) -> Path:
    """The sandbox image as an OCI archive, built once per Kubernetes version."""
    archive = images_dir() / f"pause-{binaries.KUBERNETES_VERSION}.oci.tar"
    if archive.is_file():
        return archive
    (progress or _stderr)("building the pause image (gcc -static pause.c) ...")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medcloud-pause-") as tmp:
        work = Path(tmp)
        _run(["gcc", "-Os", "-static", "-o", str(work / "pause"), str(pause_source())])
        _run(["strip", str(work / "pause")])
        layer = work / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            tar.add(str(work / "pause"), arcname="pause", filter=_root_owned)
        write_oci_archive(archive, [layer], ImageConfig(entrypoint=["/pause"], user="65535:65535"), PAUSE_REFERENCE)
    return archive


# -------------------------------------------------------------------- base
def base_key() -> str:
    spec = {"suite": DEBIAN_SUITE, "packages": sorted(BASE_PACKAGES), "dpkg": list(BASE_DPKG_OPTIONS)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def mmdebstrap_command(output: Path) -> list[str]:
    """The base layer's build: Debian with python3, no docs, man pages or locales, as a tar at ``output``."""
    return [
        "mmdebstrap",
        "--variant=apt",
        "--format=tar",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
        DEBIAN_SUITE,
        str(output),
    ]


def ensure_base_layer(progress: Progress | None = None) -> Path:
    """The Debian python3 rootfs as a layer tar, cached by its package set."""
    layer = images_dir() / f"base-{DEBIAN_SUITE}-{base_key()}.tar"
    if layer.is_file():
        return layer
    say = progress or _stderr
    say(f"building the base layer ({DEBIAN_SUITE}: {', '.join(BASE_PACKAGES)}) with mmdebstrap (about a minute) ...")
    layer.parent.mkdir(parents=True, exist_ok=True)
    # mmdebstrap picks its output format from the name: keep ".tar" last, and say it too.
    partial = layer.with_name(layer.stem + ".partial.tar")
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    _run(mmdebstrap_command(partial))
    partial.rename(layer)
    say(f"built the base layer in {time.monotonic() - started:.0f}s")
    return layer


# ----------------------------------------------------------------- project
def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    # Readable by the image's unprivileged user; writable by nobody but root.
    info.mode = (info.mode | 0o444 | (0o111 if info.isdir() or info.mode & 0o100 else 0)) & 0o755
    return info


def _member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _base_file(base: Path, name: str) -> bytes:
    with tarfile.open(base) as tar:
        for candidate in (name, f"./{name}"):
            try:
                member = tar.getmember(candidate)
            except KeyError:
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                return handle.read()
    raise binaries.BuildError(f"{name} not found in the base layer {base}")


def build_wheels(root: Path, wheels: Path) -> None:
    """The project's wheel and its dependencies' (dependencies cached by pyproject.toml's digest)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    deps = images_dir() / "wheels" / hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]
    if not (deps / ".complete").exists():
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        _run([*pip, "wheel", "--wheel-dir", str(deps), str(root)])
        for wheel in deps.glob("medcloud-*.whl"):
            wheel.unlink()
        (deps / ".complete").touch()
    wheels.mkdir(parents=True, exist_ok=True)
    for wheel in deps.glob("*.whl"):
        shutil.copy2(wheel, wheels / wheel.name)
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(root)])


def build_project_layer(root: Path, base: Path, work: Path) -> Path:
    wheels, target = work / "wheels", work / "site-packages"
    build_wheels(root, wheels)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "-q",
            "install",
            "--no-index",
            "--no-compile",
            "--find-links",
            str(wheels),
            "--target",
            str(target),
            "medcloud",
        ]
    )
    passwd = (
        _base_file(base, "etc/passwd")
        + f"medcloud:x:{IMAGE_UID}:{IMAGE_UID}::/nonexistent:/usr/sbin/nologin\n".encode()
    )
    group = _base_file(base, "etc/group") + f"medcloud:x:{IMAGE_UID}:\n".encode()
    layer = work / "project.tar"
    with tarfile.open(layer, "w") as tar:
        # pip's own scripts carry the host's interpreter; the image has its own entry point.
        shutil.rmtree(target / "bin", ignore_errors=True)
        tar.add(str(target), arcname=SITE_PACKAGES.lstrip("/"), filter=_root_owned)
        _member(tar, "usr/local/bin/medcloud", ENTRYPOINT_SCRIPT.encode(), 0o755)
        python = tarfile.TarInfo("usr/local/bin/python")
        python.type, python.linkname, python.mode = tarfile.SYMTYPE, "/usr/bin/python3", 0o777
        tar.addfile(python)
        _member(tar, "etc/passwd", passwd)
        _member(tar, "etc/group", group)
    return layer


def image_config() -> ImageConfig:
    return ImageConfig(
        entrypoint=["medcloud"],
        cmd=["operator"],
        env=IMAGE_ENV,
        user=f"{IMAGE_UID}:{IMAGE_UID}",
        labels={"org.opencontainers.image.title": "medcloud"},
        exposed_ports=("8080/tcp", "9090/tcp"),
    )


@dataclass(frozen=True)
class BuiltImage:
    reference: str
    archive: Path
    rebuilt: bool


def ensure_medcloud_archive(root: Path | None = None, progress: Progress | None = None) -> BuiltImage:
    """The MedCloud image as an OCI archive; rebuilt only when the source changed."""
    root = root or repo_root()
    digest = source_digest(root)[:16]
    reference = f"{IMAGE_REPOSITORY}:{digest}"
    archive = images_dir() / f"medcloud-{digest}.oci.tar"
    if archive.is_file():
        return BuiltImage(reference, archive, rebuilt=False)
    say = progress or _stderr
    base = ensure_base_layer(say)
    started = time.monotonic()
    say(f"building the MedCloud image {reference} (wheels, layer, archive) ...")
    with tempfile.TemporaryDirectory(prefix="medcloud-image-") as tmp:
        project = build_project_layer(root, base, Path(tmp))
        write_oci_archive(archive, [base, project], image_config(), reference)
    # Keep one project archive: older ones are a quarter of a gigabyte each.
    for old in images_dir().glob("medcloud-*.oci.tar"):
        if old != archive:
            old.unlink()
    say(f"built {reference} in {time.monotonic() - started:.0f}s")
    return BuiltImage(reference, archive, rebuilt=True)


# ------------------------------------------------------------------ import
def imported_references(ctr: Sequence[str]) -> set[str]:
    """References the node's containerd holds; ``ctr`` is the command with its address and namespace."""
    proc = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=False)
    return set(proc.stdout.split())


def import_archive(ctr: Sequence[str], archive: Path) -> None:
    """``ctr images import`` (unpacked into the CRI's snapshotter, so pods start without a pull)."""
    _run([*ctr, "images", "import", str(archive)])


def ensure_imported(ctr: Sequence[str], progress: Progress | None = None, root: Path | None = None) -> BuiltImage:
    """Build the image if the source changed and import it into the node if it lacks it."""
    image = ensure_medcloud_archive(root, progress)
    if image.reference not in imported_references(ctr):
        (progress or _stderr)(f"importing {image.reference} into the node ...")
        import_archive(ctr, image.archive)
    return image


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
