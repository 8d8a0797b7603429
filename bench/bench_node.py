"""The real node: apply-to-Ready of MedCloud pods against a trivial image, image build cold and warm, node RSS.

Prints figures only; never passes or fails. Needs Linux root (the real node).
Run: ``.venv/bin/python bench/bench_node.py [--rounds 3] [--cold-base]``.

It starts its own local cluster with a real node (one KWOK node, no MinIO or
broker) and measures, in the same run:

- image build: the MedCloud image built cold (wheels, project layer and OCI
  archive into an empty folder; the Debian base layer from the cache unless
  ``--cold-base``, which runs mmdebstrap again, about 1.5 minutes) against warm
  (the source unchanged: only the source digest is computed);
- apply to Ready: ``kubectl apply`` of the same Deployments (4 x 2 replicas,
  restricted pods, a readiness probe) until every pod is Ready, with the
  MedCloud image serving HTTP from its Python against the trivial image (the
  static pause binary, whose probe is an exec of nothing but the binary's
  start); the ratio is MedCloud/trivial per round, alternating which goes first;
- RSS of the node's processes with those 8 pods running: kubelet, containerd,
  every shim, kube-proxy, kube-router.

Not yet: `kubectl apply -f examples/` to every pod Ready. The operator now
refuses the examples' AppInstances (no catalog app has a published image:
AppNotInCatalogImage, no pods), so the pods of examples/ are the DeviceGateways';
they run `medcloud gateway`, which needs MinIO, the key service and the broker
reachable from pods, i.e. `dev up` running MedCloud on the node (docs/real-node.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from medcloud_cli.localcluster import images
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.node import ctr_args, shim_pids

DEPLOYMENTS, REPLICAS = 4, 2


def deployment(name: str, image: str, command: list[str], probe: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": command,
                            "readinessProbe": {**probe, "periodSeconds": 1},
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                            "securityContext": {
                                "runAsUser": 10001,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def workloads(kind: str, image: str) -> list[dict[str, Any]]:
    if kind == "medcloud":
        command = ["python3", "-m", "http.server", "8080", "--directory", "/tmp"]  # noqa: S108 - the pod's emptyDir
        probe: dict[str, Any] = {"httpGet": {"path": "/", "port": 8080}}
    else:
        command = ["/pause"]
        probe = {"exec": {"command": ["/pause", "-v"]}}
    return [deployment(f"{kind}-{i}", image, command, probe) for i in range(DEPLOYMENTS)]


def apply_to_ready(cluster: LocalCluster, namespace: str, manifests: list[dict[str, Any]]) -> float:
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    started = time.perf_counter()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=items)
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=300s")
    return time.perf_counter() - started


def delete_all(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("delete", "deployments", "--all", "-n", namespace, "--wait=true")
    cluster.kubectl("wait", "--for=delete", "pods", "--all", "-n", namespace, "--timeout=120s", check=False)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def image_build(cold_base: bool) -> tuple[float, float]:
    """Seconds for a cold build (empty image folder) and a warm one (source unchanged)."""
    base = None if cold_base else images.ensure_base_layer()
    with tempfile.TemporaryDirectory(prefix="medcloud-bench-images-") as tmp:
        # An empty cache (binaries.cache_root honours MEDCLOUD_CACHE_DIR), the base layer linked in unless cold.
        (Path(tmp) / "images").mkdir()
        if base is not None:
            (Path(tmp) / "images" / base.name).symlink_to(base)
        with mock.patch.dict(os.environ, {"MEDCLOUD_CACHE_DIR": tmp}):
            started = time.perf_counter()
            images.ensure_medcloud_archive(progress=lambda _m: None)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            again = images.ensure_medcloud_archive(progress=lambda _m: None)
            warm = time.perf_counter() - started
            assert not again.rebuilt
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-base", action="store_true", help="also rebuild the Debian base layer (mmdebstrap)")
    args = parser.parse_args()

    cold, warm = image_build(args.cold_base)
    print(
        f"image build: cold {cold:.1f} s ({'with' if args.cold_base else 'without'} the base layer), "
        f"warm {warm * 1000:.0f} ms, cold/warm {cold / warm:.0f}x"
    )

    with tempfile.TemporaryDirectory(prefix="medcloud-bench-node-") as tmp:
        cluster = LocalCluster(Path(tmp), ClusterOptions(nodes=1, with_minio=False, with_broker=False, real_node=True))
        cluster.start()
        try:
            assert cluster.node is not None
            ctr = ctr_args(cluster.node.dir)
            medcloud = images.ensure_imported(ctr, progress=lambda _m: None).reference
            trivial = images.PAUSE_REFERENCE
            cluster.kubectl("create", "namespace", "bench")
            cluster.kubectl("label", "namespace", "bench", "pod-security.kubernetes.io/enforce=restricted")
            times: dict[str, list[float]] = {"medcloud": [], "trivial": []}
            for round_ in range(args.rounds):
                order = ["medcloud", "trivial"] if round_ % 2 == 0 else ["trivial", "medcloud"]
                for kind in order:
                    image = medcloud if kind == "medcloud" else trivial
                    times[kind].append(apply_to_ready(cluster, "bench", workloads(kind, image)))
                    delete_all(cluster, "bench")
            ratios = [m / t for m, t in zip(times["medcloud"], times["trivial"], strict=True)]
            pods = DEPLOYMENTS * REPLICAS
            print(f"apply to {pods} pods Ready, median of {args.rounds} rounds:")
            print(
                f"  MedCloud image {statistics.median(times['medcloud']):.1f} s, "
                f"trivial image {statistics.median(times['trivial']):.1f} s, "
                f"ratio {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
            )
            rounds = zip(times["medcloud"], times["trivial"], strict=True)
            print("  per round, MedCloud/trivial: " + ", ".join(f"{m:.1f}/{t:.1f} s" for m, t in rounds))

            apply_to_ready(cluster, "bench", workloads("medcloud", medcloud))
            pids = {p.name: p.pid for p in cluster.processes if p.pid is not None}
            print(f"RSS with {pods} MedCloud pods running:")
            for name in ("kubelet", "containerd", "kube-proxy", "kube-router"):
                if name in pids:
                    print(f"  {name:12s} {rss_mb(pids[name]):6.0f} MB")
            shims = [rss_mb(pid) for pid in shim_pids(cluster.node.dir)]
            print(f"  shims        {sum(shims):6.0f} MB in {len(shims)} (median {statistics.median(shims):.0f} MB)")
            print(f"  (for scale) kube-apiserver {rss_mb(pids['kube-apiserver']):.0f} MB")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
