"""Small helpers for the real-node tests: manifests with the test image, kubectl apply,
waiting on pods with their events in the failure message."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from controlplane import ControlPlane

IMAGE = "maap-busybox:test"  # docker.io/library/maap-busybox:test, imported by RealNode
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def container(command: str, name: str = "main", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", command],
        **extra,
    }


def pod_spec(
    command: str,
    *,
    restart: str = "Never",
    mounts: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    main = container(command, **({"volumeMounts": mounts} if mounts else {}))
    return {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 1,
        "containers": [main],
        **extra,
    }


def pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": pod_spec(command, **spec),
    }


def kubectl(
    cp: ControlPlane, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cp.bin_dir / "kubectl"), "--kubeconfig", str(cp.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def apply(cp: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    res = kubectl(cp, "-n", namespace, "apply", "-f", "-", stdin=json.dumps(doc))
    assert res.returncode == 0, res.stderr


def get(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    res = kubectl(cp, "-n", namespace, "get", kind, name, "-o", "json")
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def events(cp: ControlPlane, namespace: str) -> str:
    res = kubectl(cp, "-n", namespace, "get", "events", "--sort-by=.lastTimestamp")
    return res.stdout + res.stderr


def wait_pod(
    cp: ControlPlane, namespace: str, name: str, phase: str = "Succeeded", timeout: float = 90
) -> dict[str, Any]:
    """Wait for the pod to reach `phase` (Running means Running and Ready); fail at once on
    a terminal phase that is not the one asked for, with the namespace's events."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        res = kubectl(cp, "-n", namespace, "get", "pod", name, "-o", "json")
        if res.returncode == 0:
            last = json.loads(res.stdout)
            status = last.get("status", {})
            now = status.get("phase")
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            if now == phase and (phase != "Running" or ready):
                return last
            if now in ("Succeeded", "Failed") and now != phase:
                logs = kubectl(cp, "-n", namespace, "logs", name, "--all-containers").stdout
                raise AssertionError(
                    f"pod {name} ended {now}, wanted {phase}; logs:\n{logs}\n"
                    f"status: {json.dumps(status)[:2000]}\nevents:\n{events(cp, namespace)}"
                )
        time.sleep(0.5)
    raise AssertionError(
        f"pod {name} not {phase} after {timeout:.0f}s; status: "
        f"{json.dumps(last.get('status', {}))[:2000]}\nevents:\n{events(cp, namespace)}"
    )


def logs(cp: ControlPlane, namespace: str, name: str) -> str:
    res = kubectl(cp, "-n", namespace, "logs", name)
    assert res.returncode == 0, res.stderr
    return res.stdout


def run_pod(
    cp: ControlPlane, namespace: str, name: str, command: str, timeout: float = 90, **spec: Any
) -> str:
    """Create a pod, wait until it Succeeded, return its logs."""
    apply(cp, namespace, pod(name, command, **spec))
    wait_pod(cp, namespace, name, timeout=timeout)
    return logs(cp, namespace, name)
