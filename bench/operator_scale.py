"""Operator scale: time from creating a FineTuneJob to its training Job, for 1 and N jobs.

Runs against the real control plane of the tests (tests/cluster/controlplane.py: etcd,
kube-apiserver, controller-manager, scheduler, kwok), with `maap operator` as a real
process. The baseline, measured in the same run against the same API server, is the
client creating the same training Job directly: the floor any operator sits on.

    python bench/operator_scale.py --count 300 --runs 3

FineTuneJobs are created suspended, so the cluster does not also run N fake pods: this
measures the operator (watch -> reconcile -> create), not kwok.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from controlplane import ControlPlane  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from maap import builders  # noqa: E402
from maap.api import GROUP, PLURAL, VERSION  # noqa: E402
from maap.manifest import parse_manifest  # noqa: E402
from maap_trainer.ports import free_port  # noqa: E402


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "data/train.jsonl"},
            "suspend": True,
        },
    }


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
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator.json")
    args = parser.parse_args()

    with ControlPlane(log=lambda m: None) as cp:
        api = cp.api_client()
        log_path = Path(cp.workdir) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "MAAP_PROGRESS_PORT": "0"}
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
            finally:
                operator.terminate()
                operator.wait(30)

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "count": args.count,
        "idle_rss_mib": idle_rss,
        "single_create_to_job_s": singles,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    summarize(result)


def summarize(result: dict[str, Any]) -> None:
    def mmm(values: list[float], fmt: str = "{:.3f}") -> str:
        return " / ".join(
            fmt.format(v) for v in (min(values), statistics.median(values), max(values))
        )

    runs = result["runs"]
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
