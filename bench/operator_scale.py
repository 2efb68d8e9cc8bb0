"""Operator scale: time from creating a FineTuneJob to its training Job, for 1 and N jobs.

Runs against the real control plane of the tests (tests/cluster/controlplane.py: etcd,
kube-apiserver, controller-manager, scheduler, kwok), with `maap operator` as a real
process. The baseline, measured in the same run against the same API server, is the
client creating the same training Job directly: the floor any operator sits on.

    python bench/operator_scale.py --count 300 --runs 3
    python bench/operator_scale.py --runs 0 --operator-src /tmp/old-checkout  # another version

FineTuneJobs are created suspended, so the cluster does not also run N fake pods: this
measures the operator (watch -> reconcile -> create), not kwok.

Then the steady state: --steady-jobs suspended FineTuneJobs plus --serving-jobs that kwok
carries through training and export to Serving, left alone; the API server counts the
operator's requests per job per minute in its audit log (bench/apiserver_requests.py:
every request not sent by the cluster's own components, the benchmark sending nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))
sys.path.insert(0, str(REPO / "bench"))

from apiserver_requests import requests_in_window  # noqa: E402
from controlplane import ControlPlane, make_volume  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from maap import builders  # noqa: E402
from maap.manifest import parse_manifest  # noqa: E402
from maap_api.finetunejob import GROUP, PLURAL, VERSION  # noqa: E402
from maap_trainer.ports import free_port  # noqa: E402


def finetunejob(name: str, storage_class: str | None = None, run: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "data/train.jsonl"},
            "suspend": True,
        },
    }
    if storage_class:
        # A claim that binds (an unbound one makes the volume controller post an Event every
        # 15 s, which is the cluster's traffic, not the operator's).
        body["spec"].update(
            backoffLimit=0, storage={"size": "1Gi", "storageClassName": storage_class}
        )
    if run:
        body["spec"]["suspend"] = False  # kwok carries it through to Serving
    return body


def steady_state(
    audit_log: Path, api: client.ApiClient, suspended: int, serving: int, window: float
) -> dict[str, Any]:
    """Requests per minute once `suspended` + `serving` jobs sit still."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = new_namespace(core)
    for i in range(suspended + serving):
        storage_class = f"bench-{uuid.uuid4().hex[:6]}"
        make_volume(core, storage_class)
        name = f"idle-{i}" if i < suspended else f"serve-{i}"
        body = finetunejob(name, storage_class, run=i >= suspended)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        phases = [(i.get("status") or {}).get("phase") for i in items]
        ready = sum(
            1
            for i in items
            for c in (i.get("status") or {}).get("conditions") or []
            if c["type"] == "ServingReady" and c["status"] == "True"
        )
        if phases.count("Suspended") == suspended and ready == serving:
            break
        time.sleep(3)
    settled_s = time.monotonic() - t0
    time.sleep(20)  # the last status patches and Events of the pipeline
    rate, breakdown = requests_in_window(audit_log, window)
    return {
        "suspended": suspended, "serving": serving, "serving_ready": ready,
        "settled_s": settled_s, "requests_per_min": rate,
        "per_job_per_min": rate / (suspended + serving), "requests": breakdown,
    }  # fmt: skip


class JobWatcher:
    """Records when each Job of a namespace is first seen (client-side monotonic clock)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        w = watch.Watch()
        self._ready.set()
        while not self._stop.is_set():
            for event in w.stream(
                self.batch.list_namespaced_job, self.namespace, timeout_seconds=5
            ):
                name = event["object"].metadata.name
                self.seen.setdefault(name, time.monotonic())
                if self._stop.is_set():
                    break

    def wait_for(self, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n in self.seen for n in names):
                return True
            time.sleep(0.05)
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def new_namespace(core: client.CoreV1Api) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


def direct_baseline(api: client.ApiClient, count: int) -> dict[str, float]:
    """Create the operator's own training Job body directly: create -> watch latency."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    namespace = new_namespace(core)
    created: dict[str, float] = {}
    with JobWatcher(api, namespace) as watcher:
        t0 = time.monotonic()
        for i in range(count):
            job = parse_manifest({**finetunejob(f"direct-{i}"), "metadata": {
                "name": f"direct-{i}", "namespace": namespace}})  # fmt: skip
            body = builders.build_training_job(job, "0", builders.OperatorSettings())
            body["metadata"].pop("ownerReferences")
            created[body["metadata"]["name"]] = time.monotonic()
            batch.create_namespaced_job(namespace, body)
        watcher.wait_for(list(created), 120)
        total = max(watcher.seen.values()) - t0
    latencies = [watcher.seen[n] - t for n, t in created.items()]
    return {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "total": total}


def operator_run(api: client.ApiClient, count: int, pid: int) -> dict[str, float]:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    namespace = new_namespace(core)
    created: dict[str, float] = {}
    with JobWatcher(api, namespace) as watcher:
        t0 = time.monotonic()
        for i in range(count):
            name = f"ftj-{i}"
            created[f"{name}-train"] = time.monotonic()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, finetunejob(name)
            )
        complete = watcher.wait_for(list(created), 180)
        total = (max(watcher.seen.values()) - t0) if watcher.seen else float("inf")
    latencies = [watcher.seen[n] - t for n, t in created.items() if n in watcher.seen]
    # Memory once every job has gone through at least one timer cycle as well.
    time.sleep(12)
    return {
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies),
        "total": total,
        "complete": float(complete),
        "rss_mib": rss_mib(pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steady-jobs", type=int, default=300)
    parser.add_argument("--serving-jobs", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0, help="Steady-state window (s).")
    parser.add_argument(
        "--operator-src", type=Path, help="Run the operator of another checkout (its root)."
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator.json")
    args = parser.parse_args()

    audit_log = Path(tempfile.mkdtemp(prefix="maap-bench-")) / "audit.log"
    with ControlPlane(log=lambda m: None, audit_log=audit_log) as cp:
        api = cp.api_client()
        log_path = Path(cp.workdir) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "MAAP_PROGRESS_PORT": "0"}
        if args.operator_src:
            src = args.operator_src.resolve()
            env["PYTHONPATH"] = f"{src / 'operator'}:{src / 'trainer-image'}"
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "maap.cli", "operator",
                 "--liveness-port", str(free_port()), "--metrics-port", str(free_port())],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            try:
                time.sleep(5)
                idle_rss = rss_mib(operator.pid)
                singles = [operator_run(api, 1, operator.pid)["p50"] for _ in range(5)]
                runs = []
                for _ in range(args.runs):
                    baseline = direct_baseline(api, args.count)
                    measured = operator_run(api, args.count, operator.pid)
                    runs.append({"baseline": baseline, "operator": measured})
                    print(json.dumps(runs[-1]), flush=True)
                    # Next run starts from an empty cluster again.
                    for ns in client.CoreV1Api(api).list_namespace().items:
                        if ns.metadata.name.startswith("bench-"):
                            client.CoreV1Api(api).delete_namespace(ns.metadata.name)
                    time.sleep(10)
                steady = steady_state(
                    audit_log, api, args.steady_jobs, args.serving_jobs, args.window
                )
                print(json.dumps(steady), flush=True)
            finally:
                operator.terminate()
                operator.wait(30)

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "count": args.count,
        "idle_rss_mib": idle_rss,
        "single_create_to_job_s": singles,
        "operator_src": str(args.operator_src or REPO),
        "runs": runs,
        "steady_state": steady,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    summarize(result)


def summarize(result: dict[str, Any]) -> None:
    def mmm(values: list[float], fmt: str = "{:.3f}") -> str:
        return " / ".join(
            fmt.format(v) for v in (min(values), statistics.median(values), max(values))
        )

    steady = result["steady_state"]
    print(f"steady state, {steady['suspended']} suspended + {steady['serving_ready']}/"
          f"{steady['serving']} serving jobs: {steady['requests_per_min']:.1f} requests/min "
          f"from the operator = {steady['per_job_per_min']:.3f} per job per minute; "
          f"by kind: {steady['requests']}")  # fmt: skip
    runs = result["runs"]
    if not runs:
        return
    op = [r["operator"] for r in runs]
    base = [r["baseline"] for r in runs]
    print(f"single FineTuneJob, create -> Job (s, min/median/max of 5): "
          f"{mmm(result['single_create_to_job_s'])}")  # fmt: skip
    print(f"{result['count']} FineTuneJobs, p50 create -> Job (s): {mmm([o['p50'] for o in op])}")
    print(f"  baseline direct Job p50 (s): {mmm([b['p50'] for b in base])}")
    print(f"  all reconciled in (s): {mmm([o['total'] for o in op], '{:.1f}')}; "
          f"baseline {mmm([b['total'] for b in base], '{:.1f}')}")  # fmt: skip
    ratios = [o["total"] / b["total"] for o, b in zip(op, base, strict=True)]
    print(f"  ratio operator/baseline total: {mmm(ratios, '{:.1f}x')}")
    print(f"  operator RSS after each run (MiB): {mmm([o['rss_mib'] for o in op], '{:.0f}')}"
          f" (idle {result['idle_rss_mib']:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
