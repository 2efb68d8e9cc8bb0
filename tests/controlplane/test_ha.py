"""High availability on the real control plane: two `maap operator` replicas, one active.

The replicas peer through a Kopf peering object (a ClusterKopfPeering when they watch all
namespaces, a KopfPeering per namespace otherwise), each with the default priority (the
older replica is active). kwok runs the pods; a pod annotated with a long completion delay
stays Running until the test completes it, as a kubelet would report it, so the pipeline
moves on exactly when the test says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from maap.objectmeta import JOB_LABEL
from test_operator import Cluster, OperatorProcess, finetunejob, wait_until

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
RESUMED = "Resuming operations after the pause"  # kopf, when a paused replica takes over
HANDLED = ":kopf.objects:"  # the logger of every kopf handler run on an object
HOLD = {"podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "600s"}}


class Replica(OperatorProcess):
    """`maap operator --peering NAME`, named IDENTITY in the peering object (POD_ID)."""

    def __init__(self, kubeconfig: Path, log_path: Path, identity: str, peering: str,
                 namespaces: tuple[str, ...] = ()) -> None:  # fmt: skip
        super().__init__(kubeconfig, log_path)
        self.identity, self.peering, self.namespaces = identity, peering, namespaces

    def spawn(self, python: str, args: list[str], env: dict[str, str]) -> None:
        watch = [f"--namespace={ns}" for ns in self.namespaces]
        peered = [*args, "--peering", self.peering, *watch]
        super().spawn(python, peered, {**env, "POD_ID": self.identity})

    def kill(self) -> None:
        """SIGKILL: no clean exit, so its peering record stays until it expires."""
        assert self.child is not None
        self.child.send_signal(signal.SIGKILL)
        self.child.wait(timeout=10)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Peering:
    def __init__(self, api_client: client.ApiClient, name: str, namespace: str | None) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.name, self.namespace = name, namespace

    def create(self) -> None:
        kind = "ClusterKopfPeering" if self.namespace is None else "KopfPeering"
        body = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": kind,
                "metadata": {"name": self.name}}  # fmt: skip
        if self.namespace is None:
            self.custom.create_cluster_custom_object(
                PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", body
            )
        else:
            self.custom.create_namespaced_custom_object(
                PEERING_GROUP, PEERING_VERSION, self.namespace, "kopfpeerings", body
            )

    def delete(self) -> None:
        try:
            if self.namespace is None:
                self.custom.delete_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", self.name
                )
            else:
                self.custom.delete_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, self.namespace, "kopfpeerings", self.name
                )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def peers(self) -> dict[str, dict[str, Any]]:
        """identity -> {priority, lifetime, lastseen}: the keep-alives the replicas wrote."""
        if self.namespace is None:
            body = self.custom.get_cluster_custom_object(
                PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", self.name
            )
        else:
            body = self.custom.get_namespaced_custom_object(
                PEERING_GROUP, PEERING_VERSION, self.namespace, "kopfpeerings", self.name
            )
        return body.get("status") or {}


@pytest.fixture
def replicas(control_plane, tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def start_pair(
    control_plane, tmp_path: Path, started: list[Replica], peering: Peering,
    namespaces: tuple[str, ...] = (),
) -> tuple[Replica, Replica]:  # fmt: skip
    """The first replica, active once it resumed; then the second, which stays paused."""
    kubeconfig = Path(control_plane.kubeconfig)
    first, second = (
        Replica(kubeconfig, tmp_path / f"{who}.log", f"replica-{who}-{uuid.uuid4().hex[:4]}",
                peering.name, namespaces)
        for who in ("a", "b")
    )  # fmt: skip
    started += [first, second]
    first.start()
    wait_until("the first replica to run", lambda: RESUMED in first.text(), 60, first)
    second.start()
    wait_until(
        "the second replica's keep-alive", lambda: second.identity in peering.peers(), 60, second
    )
    peers = peering.peers()
    assert peers[first.identity]["priority"] > peers[second.identity]["priority"], peers
    return first, second


def pods(cluster: Cluster, job: str, component: str) -> list[client.V1Pod]:
    selector = f"{JOB_LABEL}={job},app.kubernetes.io/component={component}"
    return cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items


def running_pod(cluster: Cluster, job: str, component: str, op: Replica) -> client.V1Pod:
    [pod] = wait_until(
        f"the {component} pod to run",
        lambda: [p for p in pods(cluster, job, component) if p.status.phase == "Running"],
        60, op,
    )  # fmt: skip
    return pod


def complete(cluster: Cluster, pod: client.V1Pod) -> None:
    """What the kubelet reports when the container exits 0."""
    now = datetime.now(UTC).isoformat()
    statuses = [
        {"name": c.name, "image": c.image, "ready": False, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                  "startedAt": now, "finishedAt": now}}}
        for c in pod.spec.containers
    ]  # fmt: skip
    cluster.core.patch_namespaced_pod_status(
        pod.metadata.name, cluster.namespace,
        {"status": {"phase": "Succeeded", "containerStatuses": statuses}},
    )  # fmt: skip


def children(cluster: Cluster, job: str) -> dict[str, list[str]]:
    """Every Job, Deployment and stage pod of the FineTuneJob, by name."""
    by_owner = {"label_selector": f"{JOB_LABEL}={job}"}
    jobs = cluster.batch.list_namespaced_job(cluster.namespace, **by_owner).items
    deployments = cluster.apps.list_namespaced_deployment(cluster.namespace, **by_owner).items
    return {
        "jobs": sorted(j.metadata.name for j in jobs),
        "deployments": sorted(d.metadata.name for d in deployments),
        "trainer pods": [p.metadata.name for p in pods(cluster, job, "trainer")],
        "exporter pods": [p.metadata.name for p in pods(cluster, job, "exporter")],
    }


def test_killed_active_replica_is_replaced_and_the_job_finishes_once(
    control_plane, api_client, namespace, replicas: list[Replica], tmp_path: Path
) -> None:
    """Cluster-wide replicas; SIGKILL the active one while the job trains."""
    peering = Peering(api_client, f"ha-{uuid.uuid4().hex[:6]}", None)
    peering.create()
    try:
        active, standby = start_pair(control_plane, tmp_path, replicas, peering)
        cluster = Cluster(api_client, namespace, standby)  # type: ignore[arg-type]
        cluster.create(finetunejob("ha", f"sc-ha-{uuid.uuid4().hex[:6]}", placement=HOLD))
        cluster.wait_phase("ha", "Training", timeout=90)
        trainer = running_pod(cluster, "ha", "trainer", active)
        assert HANDLED in active.text()
        assert HANDLED not in standby.text() and RESUMED not in standby.text(), standby.log()

        active.kill()
        killed = time.monotonic()
        complete(cluster, trainer)  # training ends while no replica is active
        wait_until("the standby to take over", lambda: RESUMED in standby.text(), 90, standby)
        resumed = time.monotonic() - killed
        cluster.wait_phase("ha", "Exporting", timeout=90)
        acted = time.monotonic() - killed
        print(
            f"\ntakeover after SIGKILL of the active replica: standby resumed after "
            f"{resumed:.1f} s, job moved to Exporting after {acted:.1f} s"
        )

        exporter = running_pod(cluster, "ha", "exporter", standby)
        complete(cluster, exporter)
        cluster.wait_phase("ha", "Serving", timeout=90)
        assert children(cluster, "ha") == {
            "jobs": ["ha-export", "ha-fetch", "ha-train"],
            "deployments": ["ha-server"],
            "trainer pods": [trainer.metadata.name],
            "exporter pods": [exporter.metadata.name],
        }
        # The survivor drops the dead replica's expired record.
        wait_until(
            "the dead replica's record to go", lambda: active.identity not in peering.peers(),
            30, standby,
        )  # fmt: skip
    finally:
        peering.delete()


def test_standby_does_nothing_and_a_clean_exit_hands_over_at_once(
    control_plane, api_client, namespace, replicas: list[Replica], tmp_path: Path
) -> None:
    """Replicas watching one namespace (a KopfPeering there): a job created while both run
    is handled by the active one alone; when it stops cleanly the standby takes over."""
    peering = Peering(api_client, "maap", namespace)
    peering.create()
    active, standby = start_pair(control_plane, tmp_path, replicas, peering, (namespace,))
    cluster = Cluster(api_client, namespace, active)  # type: ignore[arg-type]
    cluster.create(
        finetunejob("once", f"sc-once-{uuid.uuid4().hex[:6]}", serving={"enabled": False})
    )
    cluster.wait_phase("once", "Succeeded", timeout=120)
    expected = {
        "jobs": ["once-export", "once-fetch", "once-train"],
        "deployments": [],
        "trainer pods": [p.metadata.name for p in pods(cluster, "once", "trainer")],
        "exporter pods": [p.metadata.name for p in pods(cluster, "once", "exporter")],
    }
    assert len(expected["trainer pods"]) == len(expected["exporter pods"]) == 1
    assert children(cluster, "once") == expected
    assert HANDLED in active.text()
    assert HANDLED not in standby.text() and RESUMED not in standby.text(), standby.log()

    assert active.child is not None
    active.child.terminate()  # SIGTERM: kopf removes its record on the way out
    stopped = time.monotonic()
    wait_until("the standby to take over", lambda: RESUMED in standby.text(), 60, standby)
    print(f"\ntakeover after a clean exit (SIGTERM): {time.monotonic() - stopped:.1f} s")
    active.stop()
    assert active.identity not in peering.peers()
    # Now active, the former standby resumes the finished job and creates nothing more.
    wait_until("the new active replica to handle the job", lambda: HANDLED in standby.text(),
               60, standby)  # fmt: skip
    assert children(cluster, "once") == expected


def test_missing_peering_object_fails_at_start(control_plane, namespace) -> None:
    """Kopf would wait, paused and silent, for a peering object that does not exist."""
    cases = [([], "ClusterKopfPeering 'nope'"),
             ([f"--namespace={namespace}"], f"KopfPeering in {namespace} 'nope'")]  # fmt: skip
    for watch, named in cases:
        done = subprocess.run(
            [sys.executable, "-m", "maap.cli", "operator", "--peering", "nope", *watch,
             "--liveness-port", "0", "--metrics-port", "0", "--progress-port", "0"],
            env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"no {named}" in done.stderr, done.stderr
