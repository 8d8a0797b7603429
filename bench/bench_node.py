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

- ``kubectl apply -f examples/`` to every pod Ready, MedCloud from its chart
  on the node as `dev up` runs it (the operator a pod): seconds from the apply
  to the last pod Ready (the kubelet's Ready transition times), with Hospitals,
  RecordStores and the Consortium Ready on the way; then the examples are
  deleted and the same Deployments (names, replicas, resource requests,
  security contexts) are applied with the trivial image and no operator, and
  the ratio is examples/trivial. Pods the node cannot schedule (2 cores: the
  apps' and gateways' CPU requests do not all fit) and pods whose container
  keeps exiting are counted and printed, not waited for: the ratio compares
  the time to the same number of Ready pods on both sides.
  ``--skip-examples`` leaves this part out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

from medcloud_cli.localcluster import chartplatform, images
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.node import ctr_args, shim_pids

REPO = Path(__file__).resolve().parents[1]
SETTLE_SECONDS = 20.0
EXAMPLES_TIMEOUT = 600.0
FAILING = {"CrashLoopBackOff", "Error", "ErrImageNeverPull", "CreateContainerConfigError", "RunContainerError"}

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


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _get(cluster: LocalCluster, *args: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)["items"]
    return items


def _condition(item: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in item.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _unschedulable(pod: dict[str, Any]) -> bool:
    scheduled = _condition(pod, "PodScheduled")
    return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"


def _failing(pod: dict[str, Any]) -> bool:
    """Scheduled but its container exits or cannot start: it will not be Ready by waiting."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        waiting = (status.get("state", {}).get("waiting") or {}).get("reason", "")
        if waiting in FAILING or (status.get("restartCount", 0) > 0 and not status.get("ready")):
            return True
    return False


@dataclass
class Settled:
    ready: list[float]
    """Seconds from the apply to each Ready pod's Ready transition, sorted."""
    unschedulable: int
    failing: int


def settle(cluster: LocalCluster, pods: Callable[[], list[dict[str, Any]]], started: float) -> Settled:
    """Wait until every pod is Ready, unschedulable or failing, and nothing changed for a while."""
    deadline = time.monotonic() + EXAMPLES_TIMEOUT
    last, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        current = [p for p in pods() if not p["metadata"].get("deletionTimestamp")]
        ready = sorted(
            _timestamp(_condition(p, "Ready")["lastTransitionTime"]) - started
            for p in current
            if _condition(p, "Ready").get("status") == "True"
        )
        result = Settled(ready, sum(1 for p in current if _unschedulable(p)), sum(1 for p in current if _failing(p)))
        seen = (len(current), len(ready), result.unschedulable, result.failing)
        if seen != last:
            last, quiet_since = seen, time.monotonic()
        settled = current and len(ready) + result.unschedulable + result.failing == len(current)
        if settled and time.monotonic() - quiet_since >= SETTLE_SECONDS:
            return result
        time.sleep(1)
    raise RuntimeError(f"pods did not settle in {EXAMPLES_TIMEOUT:.0f} s: {last} (pods, Ready, unschedulable, failing)")


def examples_namespaces() -> list[str]:
    import yaml

    return sorted(
        doc["metadata"]["name"]
        for path in (REPO / "examples").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "Namespace"
    )


def _workload_pods(cluster: LocalCluster, namespaces: list[str]) -> list[dict[str, Any]]:
    """The examples' pods: every pod of their namespaces, and the Consortium's exchange (not the chart's own)."""
    pods = [p for ns in namespaces for p in _get(cluster, "pods", "-n", ns)]
    exchange = "app.kubernetes.io/component=exchange"
    return pods + _get(cluster, "pods", "-n", chartplatform.NAMESPACE, "-l", exchange)


def trivial_twin(deployment: dict[str, Any], image: str) -> dict[str, Any]:
    """The same Deployment (replicas, requests, security context) running the trivial image with no operator."""
    meta, spec = deployment["metadata"], deployment["spec"]
    name = f"{meta['namespace']}-{meta['name']}"[:63].rstrip("-")
    pod = spec["template"]["spec"]
    containers = [
        {
            "name": c["name"],
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["/pause"],
            "readinessProbe": {"exec": {"command": ["/pause", "-v"]}, "periodSeconds": 1},
            "resources": c.get("resources", {}),
            "securityContext": {**c.get("securityContext", {}), "runAsUser": 10001},
        }
        for c in pod["containers"]
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": {"bench": name}},
            "template": {
                "metadata": {"labels": {"bench": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": pod.get("securityContext", {}),
                    "containers": containers,
                },
            },
        },
    }


def _ready_at(cluster: LocalCluster, kind: str, started: float) -> float:
    """Seconds from ``started`` to the last object of ``kind`` turning Ready (all must be)."""
    items = _get(cluster, kind, "-A")
    times = [_condition(i, "Ready") for i in items]
    if not items or any(c.get("status") != "True" for c in times):
        raise RuntimeError(f"not every {kind} is Ready")
    return max(_timestamp(c["lastTransitionTime"]) for c in times) - started


def bench_examples(image: str) -> None:
    """examples/ on MedCloud from its chart against the same Deployments with the trivial image."""
    with tempfile.TemporaryDirectory(prefix="medcloud-bench-examples-") as tmp:
        cluster = LocalCluster(Path(tmp), ClusterOptions(nodes=1, real_node=True))
        cluster.start()
        try:
            assert cluster.node is not None
            medcloud = images.ensure_imported(ctr_args(cluster.node.dir), progress=lambda _m: None).reference
            started = time.perf_counter()
            chartplatform.start_chart_platform(cluster, medcloud)
            print(f"examples/: MedCloud from its chart Ready on the node in {time.perf_counter() - started:.1f} s")
            namespaces = examples_namespaces()
            applied = time.time()
            cluster.kubectl("apply", "-f", str(REPO / "examples"))
            examples = settle(cluster, lambda: _workload_pods(cluster, namespaces), applied)
            kinds = {kind: _ready_at(cluster, kind, applied) for kind in ("hospitals", "recordstores", "consortia")}
            deployments = [d for ns in namespaces for d in _get(cluster, "deployments", "-n", ns)]
            deployments += _get(cluster, "deployments", "-n", chartplatform.NAMESPACE, "-l",
                                "app.kubernetes.io/component=exchange")  # fmt: skip
            print(
                "  Ready after the apply: "
                + ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in kinds.items())
                + f"; of {len(deployments)} Deployments' pods {len(examples.ready)} Ready, "
                f"{examples.unschedulable} unschedulable (CPU), {examples.failing} failing (not Ready by waiting)"
            )
            twins = [trivial_twin(d, images.PAUSE_REFERENCE) for d in deployments]
            # The workloads go (their owners deleted, the operator's children collected); Hospitals and
            # RecordStores stay, they run no pod.
            for kind in ("appinstances", "devicegateways", "consortia"):
                cluster.kubectl("delete", kind, "--all", "-A", "--wait=true", "--timeout=180s", check=False)
            exchange = ("-n", chartplatform.NAMESPACE, "-l", "app.kubernetes.io/component=exchange")
            for where in [*(("-n", ns, "--all") for ns in namespaces), exchange]:
                cluster.kubectl("wait", "--for=delete", "pods", *where, "--timeout=180s", check=False)
            cluster.kubectl("create", "namespace", "bench-trivial")
            listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": twins})
            applied_trivial = time.time()
            cluster.kubectl("apply", "-n", "bench-trivial", "-f", "-", input=listing)
            trivial = settle(cluster, lambda: _get(cluster, "pods", "-n", "bench-trivial"), applied_trivial)
            count = min(len(examples.ready), len(trivial.ready))
            if count == 0:
                print("  no pod became Ready: no ratio")
                return
            medcloud_s, trivial_s = examples.ready[count - 1], trivial.ready[count - 1]
            print(
                f"  apply to {count} pods Ready: examples/ {medcloud_s:.0f} s, the same Deployments with the trivial "
                f"image {trivial_s:.0f} s ({len(trivial.ready)} Ready, {trivial.unschedulable} unschedulable), "
                f"ratio {medcloud_s / trivial_s:.2f} (Ready times have 1 s resolution)"
            )
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-base", action="store_true", help="also rebuild the Debian base layer (mmdebstrap)")
    parser.add_argument("--skip-examples", action="store_true", help="leave out kubectl apply -f examples/")
    parser.add_argument("--examples-only", action="store_true", help="only kubectl apply -f examples/")
    args = parser.parse_args()
    if args.examples_only:
        bench_examples(images.ensure_medcloud_archive(progress=lambda _m: None).reference)
        return

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
    if not args.skip_examples:
        bench_examples(medcloud)


if __name__ == "__main__":
    main()
