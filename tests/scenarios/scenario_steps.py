"""kubectl and helm against one cluster, and the steps every scenario shares.

Used by the real-node tests (tests/node) and by tests/kind/e2e.sh through scenarios.py, so the
same steps run on kind where Docker runs and on the real node built here. Standard
library plus maap's own pod security contexts (maap.podspec) and free-port helper
(maap_trainer.ports), from `make install`: it drives the `kubectl` and `helm` binaries, as
a user would.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from maap.podspec import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT
from maap_trainer.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maap"
OPERATOR_NAMESPACE = "maap-system"
RELEASE = "maap"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
T = TypeVar("T")


class ScenarioError(AssertionError):
    """A scenario step did not see what it expected; the message says what it saw."""


def say(message: str) -> None:
    print(f"[scenario {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 2.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Images:
    """Image references as pods name them, and how the kubelet gets them."""

    operator: str
    trainer: str
    pull_policy: str = "IfNotPresent"

    def split(self, ref: str) -> tuple[str, str]:
        repository, _, tag = ref.rpartition(":")
        return repository, tag


@dataclass
class Cluster:
    kubectl_bin: str = "kubectl"
    helm_bin: str = "helm"
    kubeconfig: str | None = None
    context: str | None = None
    _background: list[subprocess.Popen[str]] = field(default_factory=list)

    def _global(self) -> list[str]:
        out = []
        if self.kubeconfig:
            out.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            out.append(f"--context={self.context}")
        return out

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.kubectl_bin, *self._global(), *args]
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise ScenarioError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def helm(self, *args: str, timeout: float = 600) -> str:
        cmd = [self.helm_bin, *args]
        if self.kubeconfig:
            cmd.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            cmd.append(f"--kube-context={self.context}")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ScenarioError(f"helm {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def get_or_none(self, *args: str) -> dict[str, Any] | None:
        done = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def apply(self, namespace: str, *documents: dict[str, Any]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)})
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=body)

    def logs(self, namespace: str, pod: str, *args: str) -> str:
        return self.kubectl("logs", "-n", namespace, pod, *args).stdout

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return list(self.get("pods", "-n", namespace, "-l", selector).get("items") or [])

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.get_or_none("finetunejob", name, "-n", namespace) or {}
        return dict(job.get("status") or {})

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, remote_port: int) -> Iterator[int]:
        """`kubectl port-forward` to a free local port, open until the block ends."""
        local = free_port()
        cmd = [
            self.kubectl_bin, *self._global(), "port-forward", "-n", namespace,
            target, f"{local}:{remote_port}", "--address=127.0.0.1",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(f"port-forward to {target}", lambda: _port_open(local) or proc.poll(), 30, 0.2)
            if proc.poll() is not None:
                raise ScenarioError(f"kubectl port-forward exited: {proc.stderr.read()}")
            yield local
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def restricted_namespace(cluster: Cluster, name: str) -> None:
    """A namespace that admits only pods meeting Pod Security "restricted"."""
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in RESTRICTED.items()))


def install_chart(cluster: Cluster, images: Images, extra: list[str] = ()) -> float:
    """helm install the chart (operator namespace restricted too); returns seconds taken."""
    started = time.monotonic()
    if cluster.get_or_none("namespace", OPERATOR_NAMESPACE) is None:
        restricted_namespace(cluster, OPERATOR_NAMESPACE)
    op_repo, op_tag = images.split(images.operator)
    tr_repo, tr_tag = images.split(images.trainer)
    cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
        "--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
        "--set", f"image.pullPolicy={images.pull_policy}",
        "--set", f"trainer.image.repository={tr_repo}", "--set", f"trainer.image.tag={tr_tag}",
        "--set", f"trainer.image.pullPolicy={images.pull_policy}",
        "--set", "waitCheckSeconds=3",
        *extra, "--wait", "--timeout", "5m",
    )  # fmt: skip
    seconds = time.monotonic() - started
    say(f"chart installed in {seconds:.0f}s")
    return seconds


def uninstall_chart(cluster: Cluster) -> None:
    with contextlib.suppress(ScenarioError):
        cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")


def helper_pod(name: str, image: Images, command: list[str], claim: str | None) -> dict[str, Any]:
    """A pod of the trainer image (it has tar for kubectl cp) with the security contexts of
    maap's own pods, so it is admitted where they are."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image.trainer,
        "imagePullPolicy": image.pull_policy,
        "command": command,
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if claim:
        container["volumeMounts"].append({"name": "workspace", "mountPath": "/workspace"})
        volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": claim}})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "maap-scenarios"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": dict(POD_SECURITY_CONTEXT),
            "containers": [container],
            "volumes": volumes,
        },
    }


def data_claim(cluster: Cluster, namespace: str, name: str, images: Images, source: Path) -> None:
    """A claim holding `source` at /workspace/<source name>, copied with kubectl cp through
    a helper pod (the README's way of putting a data set onto a job's volume)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    loader = helper_pod(f"{name}-loader", images, ["sleep", "3600"], name)
    cluster.apply(namespace, claim, loader)
    pod = loader["metadata"]["name"]
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", f"pod/{pod}", "--timeout=180s"
    )
    cluster.kubectl("cp", "-n", namespace, str(source), f"{pod}:/workspace/{source.name}")
    listing = cluster.kubectl("exec", "-n", namespace, pod, "--", "ls", f"/workspace/{source.name}")
    if not listing.stdout.strip():
        raise ScenarioError(f"nothing copied to {name}: {listing.stderr}")
    cluster.kubectl("delete", "-n", namespace, "pod", pod, "--wait=true", timeout=120)
    say(f"copied {source.name} onto claim {name}: {listing.stdout.split()}")


def chat(base_url: str, model: str, question: str, max_tokens: int = 48) -> str:
    """One greedy chat completion; the answer's text."""
    body = json.dumps(
        {
            "model": model,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": question}],
        }
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise ScenarioError(f"chat at {base_url}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
    return str(answer["choices"][0]["message"]["content"]).strip()
