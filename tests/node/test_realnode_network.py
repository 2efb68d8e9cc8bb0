"""Services and DNS on the real node: a ClusterIP answered from a pod, from the host and
through `kubectl port-forward`; Service names resolving in pods; an Indexed Job whose pod 1
reaches pod 0 by its hostname under a headless Service (training rendezvous)."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from typing import Any

from controlplane import ControlPlane
from maap_trainer.ports import free_port
from realnode_helpers import apply, get, kubectl, logs, pod_spec, run_pod, wait_pod

SERVE = (
    'mkdir -p /tmp/www && echo "hello from $(hostname)" > /tmp/www/index.html && '
    "exec httpd -f -p 8080 -h /tmp/www"
)


def _web(namespace: str) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(SERVE, restart="Always"),
            },
        },
    }
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/", "port": 8080},
        "periodSeconds": 1,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return [deployment, service]


def _wait_http(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return str(r.read().decode())
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f}s: {last!r}")


def test_cluster_ip_from_a_pod_the_host_and_port_forward(
    real_cluster: ControlPlane, namespace: str
) -> None:
    apply(real_cluster, namespace, *_web(namespace))
    res = kubectl(
        real_cluster, "-n", namespace, "rollout", "status", "deployment/web", "--timeout=90s"
    )
    assert res.returncode == 0, res.stderr + res.stdout
    ip = get(real_cluster, namespace, "service", "web")["spec"]["clusterIP"]
    assert ip.startswith("10.96.")

    # From another pod on the same bridge (pod -> ClusterIP -> pod), by IP and by name.
    out = run_pod(
        real_cluster,
        namespace,
        "client",
        f"timeout 10 wget -q -O - http://{ip}/ && timeout 10 wget -q -O - http://web/",
    )
    assert out.count("hello from web-") == 2, out

    # From the host (kube-proxy's OUTPUT rules), and through the API server's
    # port-forward to the kubelet.
    assert _wait_http(f"http://{ip}/").startswith("hello from web-")
    port = free_port()
    pf = subprocess.Popen(
        [
            str(real_cluster.bin_dir / "kubectl"),
            "--kubeconfig",
            str(real_cluster.kubeconfig),
            "-n",
            namespace,
            "port-forward",
            "service/web",
            f"{port}:80",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/").startswith("hello from web-")
    finally:
        pf.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            pf.wait(timeout=5)
        pf.kill()
        if pf.stdout:
            pf.stdout.close()


def test_service_names_resolve_and_nothing_else_does(
    real_cluster: ControlPlane, namespace: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "named"},
        "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]},
    }
    apply(real_cluster, namespace, service)
    ip = get(real_cluster, namespace, "service", "named")["spec"]["clusterIP"]
    fqdn = f"named.{namespace}.svc.cluster.local"
    script = (
        f"nslookup {fqdn}; nslookup kubernetes.default.svc.cluster.local; "
        # A name outside the cluster: CoreDNS refuses it (nothing is forwarded off the host).
        "nslookup example.com 10.96.0.10 && echo OUTSIDE-RESOLVED || echo outside-refused"
    )
    out = run_pod(real_cluster, namespace, "resolver", script)
    answers = [line.split()[-1] for line in out.splitlines() if line.startswith("Address:")]
    assert ip in answers and "10.96.0.1" in answers, out
    assert "outside-refused" in out and "OUTSIDE-RESOLVED" not in out, out


def test_indexed_job_pod_reaches_pod_zero_by_hostname(
    real_cluster: ControlPlane, namespace: str
) -> None:
    """The multi-pod training layout: an Indexed Job with `subdomain` = a headless Service;
    rank 1 dials rank 0 as <job>-0.<service>, like torchrun's MASTER_ADDR."""
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ranks"},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"job-name": "train"},
            "ports": [{"name": "rdzv", "port": 29500}],
        },
    }
    script = (
        'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then '
        "  nc -l -p 29500 > /tmp/got && cat /tmp/got; "
        "else "
        "  for i in $(seq 1 60); do "
        '    echo "hello from rank $JOB_COMPLETION_INDEX" | nc -w 2 train-0.ranks 29500 && exit 0; '
        "    sleep 1; "
        "  done; exit 1; "
        "fi"
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {"spec": pod_spec(script, subdomain="ranks")},
        },
    }
    apply(real_cluster, namespace, headless, job)
    res = kubectl(
        real_cluster,
        "-n",
        namespace,
        "wait",
        "--for=condition=Complete",
        "--timeout=120s",
        "job/train",
    )
    if res.returncode != 0:
        out = kubectl(
            real_cluster, "-n", namespace, "logs", "-l", "job-name=train", "--prefix", "--tail=20"
        ).stdout
        raise AssertionError(f"{res.stderr}\n{out}")
    rank0 = kubectl(
        real_cluster,
        "-n",
        namespace,
        "get",
        "pods",
        "-l",
        "batch.kubernetes.io/job-completion-index=0",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    wait_pod(real_cluster, namespace, rank0)
    assert logs(real_cluster, namespace, rank0).strip() == "hello from rank 1"
