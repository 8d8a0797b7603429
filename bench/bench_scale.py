"""Onboarding at scale: the operator against a raw-create ceiling, its memory and idle CPU, a restart's effect.

Prints figures only; never passes or fails. Run:
``.venv/bin/python bench/bench_scale.py --sizes 100 1000``.

For each N, on a fresh local cluster (etcd, kube-apiserver, controller-manager; no KWOK,
MinIO or broker: a Hospital needs none of them):

1. **Operator.** The operator runs as its own process (``python -m medcloud_operator
   --standalone``, ``MEDCLOUD_MAX_CONCURRENT_RECONCILES`` = the client concurrency C). N
   Hospitals are created by C client threads; the clock runs from the first create until every
   Hospital is Ready at its generation (polled by LIST once a second).
2. **Idle.** Once all are Ready and no reconcile has run for 10 s (the quota controller's status
   updates of the new quotas come after Ready, and each reconciles its Hospital: the settling time
   is printed), its RSS (``/proc/PID/status``) and its CPU time (``/proc/PID/stat``) over an idle
   window that holds three safety-net ticks (``MEDCLOUD_RESYNC_SECONDS`` is a third of the window).
3. **Restart.** The operator is stopped (SIGTERM) and started again; one new Hospital is created
   at once: the time until it is Ready, while the operator resumes the N others.
4. **Ceiling.** With the operator stopped, the same object set for N other Hospitals is created
   directly by C client threads through the same JSON client: the Hospital, every child the
   operator's builders produce (namespace, quota, limits, network policies, roles, bindings, the
   admins' cluster access), the KEK Secret and one status patch: the operator's writes without
   its reads, comparisons and waits. The ratio is operator throughput / ceiling throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client, watch
from urllib3.exceptions import HTTPError

from medcloud.kube.client import HOSPITAL, NAMESPACE, Kube, Manifest, new_api_client
from medcloud.kube.crds import install_crds
from medcloud.models import HospitalSpec
from medcloud.tenancy import kek
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster
from medcloud_cli.localcluster.process import free_port
from medcloud_operator.builders.hospital import build_admin_cluster_access, build_tenancy
from medcloud_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "medcloud-system"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def spec(name: str) -> dict[str, Any]:
    # A code of its own per Hospital: the operator fails every Hospital but the oldest of those sharing one.
    return {"displayName": f"Hospital {name}", "institutionCode": f"B{zlib.crc32(name.encode()):08X}", "tier": "county"}


def hospital(name: str) -> Manifest:
    return {"apiVersion": HOSPITAL.api_version, "kind": HOSPITAL.kind, "metadata": {"name": name}, "spec": spec(name)}


def in_parallel(concurrency: int, items: list[str], work: Callable[[str], object]) -> None:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in pool.map(work, items):
            pass


def is_ready(item: Manifest) -> bool:
    status = item.get("status") or {}
    return bool(
        status.get("phase") == "Ready" and status.get("observedGeneration") == item["metadata"].get("generation")
    )


class ReadyWatch:
    """When Hospitals become Ready, from one watch on Hospitals (no polling LIST that would load the API server).

    Started before the creates; :meth:`wait` returns the monotonic time at which ``n`` Hospitals named
    ``prefix*`` were first all Ready at their generation. The same watch times the operator and the ceiling.
    """

    def __init__(self, api: Any) -> None:
        self._objects = client.CustomObjectsApi(api)
        group, version = HOSPITAL.api_version.split("/")
        self._args = (group, version, HOSPITAL.plural)
        listed = cast(Manifest, self._objects.list_cluster_custom_object(*self._args, limit=1))
        self._version: str = listed["metadata"]["resourceVersion"]
        self._ready: dict[str, set[str]] = {}
        self._first: dict[str, list[float]] = {}
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]  # unannotated in the kubernetes library
                self._objects.list_cluster_custom_object,
                *self._args,
                resource_version=self._version,
                timeout_seconds=60,
                allow_watch_bookmarks=True,
            )
            try:
                for event in stream:
                    item = event["object"]
                    self._version = item["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._observe(item, event["type"])
            except (OSError, HTTPError):
                if not self._stopped:
                    time.sleep(1)  # the stream broke: resume from the last version seen

    def _observe(self, item: Manifest, kind: str) -> None:
        name = item["metadata"]["name"]
        prefix = name.split("-", 1)[0] + "-"
        with self._changed:
            ready = self._ready.setdefault(prefix, set())
            if kind != "DELETED" and is_ready(item):
                ready.add(name)
            else:
                ready.discard(name)
            first = self._first.setdefault(prefix, [])
            if len(ready) > len(first):
                first.append(time.monotonic())  # first[k - 1]: when k were first Ready at once
            self._changed.notify_all()

    def wait(self, prefix: str, n: int, limit: float) -> float:
        """The monotonic time ``n`` Hospitals ``prefix*`` were all Ready (inf after ``limit`` seconds)."""
        with self._changed:
            if self._changed.wait_for(lambda: len(self._first.get(prefix, ())) >= n, timeout=limit):
                return self._first[prefix][n - 1]
            return float("inf")

    def stop(self) -> None:
        self._stopped = True


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str]) -> None:
        self.probe_port, self.metrics_port = free_port(), free_port()
        environment = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MEDCLOUD_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
            "MEDCLOUD_OPERATOR_SUBJECT_KIND": "User",
            "MEDCLOUD_OPERATOR_SUBJECT_NAME": "admin",
            "MEDCLOUD_METRICS_PORT": str(self.metrics_port),
            "MEDCLOUD_METRICS_ADDRESS": "127.0.0.1",
            "MEDCLOUD_LOG_LEVEL": "WARNING",
            **env,
        }
        args = [sys.executable, "-m", "medcloud_operator", "--standalone"]
        args += ["--liveness", f"http://127.0.0.1:{self.probe_port}/healthz", "--log-format", "plain"]
        self._log = log.open("ab")
        self.popen = subprocess.Popen(args, env=environment, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_healthy(self, limit: float = 120) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.popen.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the operator did not become healthy")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def wait_quiet(self, quiet: float, limit: float) -> float:
        """Seconds until no reconcile has started or ended for ``quiet`` seconds (``limit`` at most)."""
        started = time.monotonic()
        last, since = self.metric("controller_runtime_reconcile_total"), time.monotonic()
        while time.monotonic() - started < limit:
            time.sleep(1)
            now = self.metric("controller_runtime_reconcile_total")
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return since - started
        return float("inf")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._log.close()


REQUEST_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def api_requests(api: Any) -> Counter[str]:
    """The API server's own count of requests served so far (apiserver_request_total); watches left out.

    Keyed ``<VERB> <resource>[/<subresource>]``, so that where the requests go can be printed beside their sum.
    """
    response = api.rest_client.pool_manager.request("GET", api.configuration.host + "/metrics")
    counts: Counter[str] = Counter()
    for line in response.data.decode().splitlines():
        match = REQUEST_SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") != "WATCH":
            subresource = labels.get("subresource")
            resource = labels.get("resource", "") + (f"/{subresource}" if subresource else "")
            counts[f"{labels.get('verb', '')} {resource}"] += int(float(match["value"]))
    return counts


def per_hospital(before: Counter[str], after: Counter[str], n: int) -> float:
    return sum((after - before).values()) / n


def breakdown(before: Counter[str], after: Counter[str], n: int) -> dict[str, float]:
    """Requests per Hospital by verb and resource, largest first, those under 0.05 per Hospital left out."""
    rows = ((key, count / n) for key, count in (after - before).most_common())
    return {key: round(share, 2) for key, share in rows if share >= 0.05}


def raw_status() -> dict[str, Any]:
    conditions = [
        {"type": t, "status": "True", "reason": "Reconciled", "message": f"{t} as specified.", "observedGeneration": 1}
        for t in ("NamespaceReady", "NetworkIsolated", "KeyReady", "Ready")
    ]
    for condition in conditions:
        condition["lastTransitionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"status": {"phase": "Ready", "observedGeneration": 1, "conditions": conditions}}


def raw_onboard(kube: Kube, settings: OperatorSettings, name: str) -> None:
    """The operator's writes for one Hospital, without its reads: the ceiling."""
    created = kube.create(hospital(name))
    parsed = HospitalSpec.model_validate(spec(name))
    children = [
        *build_tenancy(name, parsed, settings),
        *build_admin_cluster_access(name, parsed, created["metadata"]["uid"]),
    ]
    for child in children:
        kube.create(child)
    kube.create(kek.build_secret(name, OPERATOR_NAMESPACE, kek.generate()))
    kube.merge_patch(HOSPITAL, name, raw_status(), subresource="status")


def measure(
    n: int, concurrency: int, idle_window: float, workdir: Path, where: dict[str, dict[str, float]]
) -> dict[str, float]:
    """The figures of one N; ``where`` receives each phase's requests per Hospital by verb and resource."""
    figures: dict[str, float] = {}
    state = workdir / f"cluster-{n}"
    with LocalCluster(
        state, ClusterOptions(nodes=0, with_kwok=False, with_minio=False, with_broker=False, start_timeout=300)
    ) as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        api = new_api_client("medcloud-bench")
        install_crds(api)
        kube = Kube(api, field_manager="medcloud-bench")
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
        env = {
            "MEDCLOUD_MAX_CONCURRENT_RECONCILES": str(concurrency),
            "MEDCLOUD_RESYNC_SECONDS": str(idle_window / 3),
        }
        log = workdir / f"operator-{n}.log"

        # 1. The operator onboards N Hospitals.
        operator = OperatorProcess(cluster.kubeconfig, log, env)
        operator.wait_healthy()
        ready = ReadyWatch(api)
        names = [f"op-{i:05d}" for i in range(n)]
        requests_before = api_requests(api)
        started = time.monotonic()
        in_parallel(concurrency, names, lambda name: kube.create(hospital(name)))
        figures["created_s"] = time.monotonic() - started
        figures["operator_ready_s"] = ready.wait("op-", n, limit=60 + n * 2.0) - started
        figures["operator_per_s"] = n / figures["operator_ready_s"]
        figures["rss_ready_mb"] = operator.rss_mb()
        requests_ready = api_requests(api)
        # Everyone's requests while the operator onboarded: the bench's creates and its LIST a second included.
        figures["requests_per_hospital"] = per_hospital(requests_before, requests_ready, n)
        # Reconciles that started from Kopf's body but found it stale at their status write (then read it again).
        figures["stale_bodies"] = operator.metric("medcloud_stale_bodies_total")
        where["onboarding"] = breakdown(requests_before, requests_ready, n)

        # 2. Idle: once no reconcile has run for 10 s (the quota controller's status updates of the new
        # quotas come after Ready, and each reconciles its Hospital), CPU over three safety-net ticks.
        figures["settle_after_ready_s"] = operator.wait_quiet(quiet=10, limit=600)
        requests_settled = api_requests(api)
        figures["settle_requests_per_hospital"] = per_hospital(requests_ready, requests_settled, n)
        where["settling"] = breakdown(requests_ready, requests_settled, n)
        # Quota recounts the Hospital already showed (no request), against those that read the Hospital.
        figures["quota_usage_skips"] = operator.metric(
            'medcloud_settled_skips_total{kind="Hospital",trigger="quota-usage"}'
        )
        cpu_before, reconciles_before = operator.cpu_seconds(), operator.metric("controller_runtime_reconcile_total")
        time.sleep(idle_window)
        idle_cpu = operator.cpu_seconds() - cpu_before
        figures["idle_cpu_s_per_min"] = idle_cpu * 60 / idle_window
        figures["idle_cpu_pct_core"] = 100 * idle_cpu / idle_window
        figures["idle_reconciles"] = operator.metric("controller_runtime_reconcile_total") - reconciles_before
        figures["rss_idle_mb"] = operator.rss_mb()

        # 3. Restart: a new Hospital while N resume.
        operator.stop()
        operator = OperatorProcess(cluster.kubeconfig, log, env)
        started = time.monotonic()
        kube.create(hospital("fresh-00000"))
        # The process's own start (interpreter, imports, Kopf's listings) is part of the figure: timed beside it.
        with ThreadPoolExecutor(max_workers=1) as probe:
            healthy = probe.submit(operator.wait_healthy)
            figures["restart_new_ready_s"] = ready.wait("fresh-", 1, limit=600) - started
            figures["restart_healthy_s"] = healthy.result()
        figures["restart_skipped"] = operator.metric("medcloud_settled_skips_total")
        figures["rss_restarted_mb"] = operator.rss_mb()
        operator.stop()

        # 4. The ceiling: the same object set, written directly, same concurrency.
        settings = OperatorSettings(operator_namespace=OPERATOR_NAMESPACE)
        raw_names = [f"raw-{i:05d}" for i in range(n)]
        requests_before = api_requests(api)
        started = time.monotonic()
        in_parallel(concurrency, raw_names, lambda name: raw_onboard(kube, settings, name))
        figures["raw_s"] = ready.wait("raw-", n, limit=60 + n * 2.0) - started  # timed like the operator
        ready.stop()
        requests_raw = api_requests(api)
        figures["raw_requests_per_hospital"] = per_hospital(requests_before, requests_raw, n)
        where["ceiling"] = breakdown(requests_before, requests_raw, n)
        figures["raw_per_s"] = n / figures["raw_s"]
        figures["ratio"] = figures["operator_per_s"] / figures["raw_per_s"]
        figures["namespaces"] = len(kube.list(NAMESPACE))
        api.close()  # type: ignore[no-untyped-call]  # unannotated in the kubernetes library
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--concurrency", type=int, default=4, help="client threads = operator workers")
    parser.add_argument("--idle-window", type=float, default=60.0, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medcloud-bench-scale-") as tmp:
        rows = []
        for n in args.sizes:
            where: dict[str, dict[str, float]] = {}
            figures = measure(n, args.concurrency, args.idle_window, Path(tmp), where)
            rows.append((n, figures))
            print(json.dumps({"n": n, **{k: round(v, 3) for k, v in figures.items()}}), flush=True)
            print(json.dumps({"n": n, "requests_per_hospital_by_kind": where}), flush=True)
    print()
    print(f"client concurrency = operator workers = {args.concurrency}; idle window {args.idle_window:.0f} s")
    print("      N  operator/s  ceiling/s  ratio  all Ready s  settled s  RSS MB  idle CPU s/min (%)  new on restart s")
    for n, f in rows:
        print(
            f"{n:7d}  {f['operator_per_s']:10.1f}  {f['raw_per_s']:9.1f}  {f['ratio']:5.2f}"
            f"  {f['operator_ready_s']:11.1f}  {f['settle_after_ready_s']:9.1f}"
            f"  {f['rss_idle_mb']:6.0f}  {f['idle_cpu_s_per_min']:8.2f} ({f['idle_cpu_pct_core']:.2f}%)"
            f"  {f['restart_new_ready_s']:16.1f}"
        )


if __name__ == "__main__":
    main()
