"""Write an OCI image layout as one tar archive, the form `ctr images import` takes.

No registry and no image builder: the layers are plain tar files made
elsewhere (mmdebstrap for the base, the project's wheels for the rest); this
module adds the config, manifest and index around them. Layers stay
uncompressed: the archive only travels from this machine's disk into its own
containerd, where compressing would cost seconds and save nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an OCI image config (what a Dockerfile's ENV, USER, ... say)."""

    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    user: str = ""
    working_dir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: Sequence[str] = ()

    def to_json(self) -> dict[str, object]:
        config: dict[str, object] = {
            "Entrypoint": list(self.entrypoint),
            "Env": list(self.env),
            "WorkingDir": self.working_dir,
        }
        if self.cmd:
            config["Cmd"] = list(self.cmd)
        if self.user:
            config["User"] = self.user
        if self.labels:
            config["Labels"] = dict(self.labels)
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        return config


def file_digest(path: Path) -> tuple[str, int]:
    """``sha256:<hex>`` and size of a file, read in chunks (layers are hundreds of MB)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def image_documents(
    layers: Sequence[tuple[str, int]], config: ImageConfig, reference: str
) -> tuple[bytes, bytes, bytes]:
    """The config, manifest and index.json of an image whose (uncompressed) layers have these digests and sizes."""
    config_blob = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in layers]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": _descriptor(CONFIG_MEDIA_TYPE, config_blob),
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": s} for d, s in layers],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                {
                    **_descriptor(MANIFEST_MEDIA_TYPE, manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": reference,
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    return config_blob, manifest, index


def write_oci_archive(path: Path, layers: Sequence[Path], config: ImageConfig, reference: str) -> str:
    """Write the image as an OCI layout tar at ``path``; returns the manifest digest."""
    digests = [file_digest(layer) for layer in layers]
    config_blob, manifest, index = image_documents(digests, config, reference)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w") as archive:
        _add_bytes(archive, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(archive, "index.json", index)
        for blob in (config_blob, manifest):
            _add_bytes(archive, f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
        seen = set()
        for layer, (digest, _size) in zip(layers, digests, strict=True):
            if digest in seen:
                continue
            seen.add(digest)
            archive.add(str(layer), arcname=f"blobs/sha256/{digest.removeprefix('sha256:')}", recursive=False)
    partial.rename(path)
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
