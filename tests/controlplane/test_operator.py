"""The operator against the real control plane: kwok runs the pods, nothing is mocked.

The operator runs as a real process (`maap operator`) with a 1 s reconcile timer; kwok
moves the pods of the Jobs and the Deployment through their lifecycle.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from controlplane import make_volume
from kubernetes import client
from kubernetes.client.rest import ApiException
from maap_api.finetunejob import GROUP, PLURAL, VERSION

from tests.conftest import free_port

GPU_NODE = "maap-gpu-0"


class MaapProcess:
    """A `python -m maap.cli ...` child process against the control plane, logging to a file."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.child: subprocess.Popen[bytes] | None = None

    def spawn(self, python: str, args: list[str], env: dict[str, str]) -> None:
        full_env = {**os.environ, **env, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self.child = subprocess.Popen(
                [python, "-m", "maap.cli", *args],
                stdout=log, stderr=subprocess.STDOUT, env=full_env,
            )  # fmt: skip

    def stop(self) -> None:
        if self.child and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class OperatorProcess(MaapProcess):
    """`maap operator` with a 1 s reconcile timer and its own free ports."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        super().__init__(kubeconfig, log_path)
        self.progress_port = free_port()
        self.metrics_port = free_port()
        self.liveness_port = free_port()

    def start(self) -> None:
        self.spawn(
            sys.executable,
            ["operator", "--liveness-port", str(self.liveness_port),
             "--metrics-port", str(self.metrics_port)],
            {
                "MAAP_WAIT_CHECK_SECONDS": "1",
                "MAAP_PROGRESS_PORT": str(self.progress_port),
                "MAAP_PROGRESS_URL": f"http://127.0.0.1:{self.progress_port}",
            },
        )  # fmt: skip


@pytest.fixture(scope="module")
def operator_process(control_plane, tmp_path_factory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        Path(control_plane.kubeconfig), tmp_path_factory.mktemp("operator") / "operator.log"
    )
    proc.start()
    yield proc
    proc.stop()


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, op=None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    detail = f"\noperator log:\n{op.log()}" if op else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")


def finetunejob(name: str, storage_class: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "data/train.jsonl"},
            "storage": {"size": "1Gi", "storageClassName": storage_class},
            "backoffLimit": 0,
        },
    }
    body["spec"].update(spec)
    return body


class Cluster:
    def __init__(self, api_client: client.ApiClient, namespace: str, op: OperatorProcess):
        self.api, self.namespace, self.op = api_client, namespace, op
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        make_volume(self.core, body["spec"]["storage"]["storageClassName"])
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )

    def gone(self, name: str) -> bool:
        try:
            self.get(name)
            return False
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        return wait_until(
            f"{name} to reach {phase} (now {self.status(name).get('phase')})",
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout,
            self.op,
        )

    def read_job(self, name: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.type, e.reason) for e in items]


@pytest.fixture
def cluster(api_client, namespace, operator_process) -> Cluster:
    return Cluster(api_client, namespace, operator_process)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_pipeline_reaches_serving(cluster: Cluster) -> None:
    created = cluster.create(
        finetunejob("chat", "sc-serve", serving={"replicas": 1, "auth": {"enabled": True}})
    )
    uid = created["metadata"]["uid"]
    status = cluster.wait_phase("chat", "Serving", timeout=120)
    status = wait_until(
        "ServingReady", lambda: (s := cluster.status("chat")) and
        condition(s, "ServingReady")["status"] == "True" and s, 60, cluster.op,
    )  # fmt: skip
    for type_ in ("Validated", "Trained", "Exported", "ServingReady"):
        cond = condition(status, type_)
        assert cond["status"] == "True", cond
        assert cond["reason"] and cond["lastTransitionTime"]
        assert cond["observedGeneration"] == created["metadata"]["generation"]
    assert status["endpoint"] == f"http://chat-server.{cluster.namespace}.svc:8000/v1"
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["artifacts"]["location"] == "pvc://chat-artifacts/workspace/output"
    assert status["authSecret"] == "chat-serving-auth"
    token = cluster.core.read_namespaced_secret("chat-serving-auth", cluster.namespace)
    assert len(base64.b64decode(token.data["token"])) >= 32

    children = [
        cluster.core.read_namespaced_config_map("chat-config", cluster.namespace),
        cluster.core.read_namespaced_persistent_volume_claim("chat-artifacts", cluster.namespace),
        cluster.batch.read_namespaced_job("chat-train", cluster.namespace),
        cluster.batch.read_namespaced_job("chat-export", cluster.namespace),
        cluster.apps.read_namespaced_deployment("chat-server", cluster.namespace),
        cluster.core.read_namespaced_service("chat-server", cluster.namespace),
        token,
    ]
    for child in children:
        [owner] = child.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "FineTuneJob",
            "chat",
            uid,
            True,
        )
        assert child.metadata.labels["app.kubernetes.io/instance"] == "chat"
        assert child.metadata.labels["app.kubernetes.io/managed-by"] == "maap-operator"
    reasons = {reason for _, reason in cluster.events("chat")}
    assert {"Pending", "Exporting", "Serving"} <= reasons, reasons

    # Serving replicas follow the spec.
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "chat", {"spec": {"serving": {"replicas": 2}}}
    )
    wait_until(
        "the Deployment to scale to 2",
        lambda: cluster.apps.read_namespaced_deployment("chat-server", cluster.namespace)
        .spec.replicas == 2, 30, cluster.op,
    )  # fmt: skip

    # Deleting the FineTuneJob garbage-collects every child.
    cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "chat"
    )
    wait_until(
        "children to be garbage-collected",
        lambda: cluster.read_job("chat-train") is None and cluster.read_job("chat-export") is None
        and not cluster.apps.list_namespaced_deployment(cluster.namespace).items,
        60, cluster.op,
    )  # fmt: skip


def _server(cluster: Cluster, name: str) -> tuple[Any, Any]:
    apps, core, ns = cluster.apps, cluster.core, cluster.namespace
    return (
        apps.read_namespaced_deployment(f"{name}-server", ns),
        core.read_namespaced_service(f"{name}-server", ns),
    )


def _token_env(deployment: Any) -> str | None:
    [container] = deployment.spec.template.spec.containers
    for env in container.env or []:
        if env.name == "MAAP_SERVING_TOKEN" and env.value_from:
            return env.value_from.secret_key_ref.name
    return None


def test_spec_changes_reach_the_children_and_status_reports_what_is_served(
    cluster: Cluster,
) -> None:
    """The issue's reproduction: auth on and a new port on a job in Serving."""
    cluster.create(finetunejob("probe", "sc-probe"))
    cluster.wait_phase("probe", "Serving", timeout=120)
    status = wait_until(
        "ServingReady", lambda: (s := cluster.status("probe")) and
        condition(s, "ServingReady")["status"] == "True" and s, 60, cluster.op,
    )  # fmt: skip
    assert status["endpoint"] == f"http://probe-server.{cluster.namespace}.svc:8000/v1"
    assert "authSecret" not in status
    deployment, _ = _server(cluster, "probe")
    assert _token_env(deployment) is None
    config_hash = deployment.spec.template.metadata.annotations["maap.dev/config-hash"]

    patched = cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "probe",
        {"spec": {"serving": {"auth": {"enabled": True}, "port": 9000, "maxBatchSize": 4}}},
    )  # fmt: skip

    def followed() -> bool:
        deployment, service = _server(cluster, "probe")
        [container] = deployment.spec.template.spec.containers
        return (
            service.spec.ports[0].port == 9000
            and container.ports[0].container_port == 9000
            and _token_env(deployment) == "probe-serving-auth"
        )

    wait_until("the Deployment and Service to follow the spec", followed, 30, cluster.op)
    deployment, _ = _server(cluster, "probe")
    # A changed config rolls the pods (they read config.json once, at start).
    assert deployment.spec.template.metadata.annotations["maap.dev/config-hash"] != config_hash
    token = cluster.core.read_namespaced_secret("probe-serving-auth", cluster.namespace)
    assert len(base64.b64decode(token.data["token"])) >= 32
    config = json.loads(
        cluster.core.read_namespaced_config_map("probe-config", cluster.namespace).data[
            "config.json"
        ]
    )
    assert config["serving"]["port"] == 9000
    assert config["serving"]["maxBatchSize"] == 4
    assert config["serving"]["authTokenEnv"] == "MAAP_SERVING_TOKEN"

    # Status reports the auth Secret once every replica runs the new spec.
    status = wait_until(
        "status to report the served auth",
        lambda: (s := cluster.status("probe")).get("authSecret") == "probe-serving-auth"
        and condition(s, "ServingReady")["reason"] == "Ready" and s, 60, cluster.op,
    )  # fmt: skip
    assert status["endpoint"] == f"http://probe-server.{cluster.namespace}.svc:9000/v1"
    assert status["observedGeneration"] == patched["metadata"]["generation"]
    assert (
        condition(status, "ServingReady")["observedGeneration"]
        == (patched["metadata"]["generation"])
    )

    # A child edited behind the operator's back is put back.
    cluster.core.patch_namespaced_service(
        "probe-server",
        cluster.namespace,
        [{"op": "replace", "path": "/spec/ports/0/port", "value": 7000}],
    )
    wait_until(
        "the Service port to be restored",
        lambda: _server(cluster, "probe")[1].spec.ports[0].port == 9000, 30, cluster.op,
    )  # fmt: skip

    # Auth off again: the token env goes, and status stops naming the Secret.
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "probe",
        {"spec": {"serving": {"auth": {"enabled": False}}}},
    )  # fmt: skip
    wait_until(
        "the token env to be removed",
        lambda: _token_env(_server(cluster, "probe")[0]) is None, 30, cluster.op,
    )  # fmt: skip
    wait_until(
        "status to stop naming the auth Secret",
        lambda: "authSecret" not in cluster.status("probe"), 60, cluster.op,
    )  # fmt: skip

    # Serving switched off: the server goes and the job Succeeded.
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "probe",
        {"spec": {"serving": {"enabled": False}}},
    )  # fmt: skip
    status = cluster.wait_phase("probe", "Succeeded", timeout=60)
    assert "endpoint" not in status
    wait_until(
        "the server to be deleted",
        lambda: not cluster.apps.list_namespaced_deployment(cluster.namespace).items
        and not [s for s in cluster.core.list_namespaced_service(cluster.namespace).items
                 if s.metadata.name == "probe-server"],
        60, cluster.op,
    )  # fmt: skip


def test_serving_disabled_succeeds_and_gpu_training_lands_on_gpu_node(cluster: Cluster) -> None:
    cluster.create(
        finetunejob(
            "gpu", "sc-gpu",
            serving={"enabled": False},
            resources={"gpus": 1, "requests": {"cpu": "1", "memory": "1Gi"}},
            placement={"nodeSelector": {"maap.dev/accelerator": "nvidia"}},
        )
    )  # fmt: skip
    status = cluster.wait_phase("gpu", "Succeeded", timeout=120)
    assert condition(status, "Exported")["status"] == "True"
    assert status["completionTime"]
    pods = cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector="app.kubernetes.io/component=trainer"
    ).items
    assert pods and all(p.spec.node_name == GPU_NODE for p in pods)
    limits = pods[0].spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1"
    assert not cluster.apps.list_namespaced_deployment(cluster.namespace).items


def test_failed_training_reports_the_reason(cluster: Cluster) -> None:
    cluster.create(
        finetunejob(
            "broken", "sc-fail", placement={"podAnnotations": {"maap.dev/kwok-fail": "yes"}}
        )
    )
    status = cluster.wait_phase("broken", "Failed", timeout=90)
    failed = condition(status, "Failed")
    assert failed["reason"] == "TrainingFailed" and failed["message"]
    # The Event is its own write, after the status patch: it may land a moment later.
    wait_until(
        "the TrainingFailed Warning event",
        lambda: ("Warning", "TrainingFailed") in cluster.events("broken"), 15, cluster.op,
    )  # fmt: skip
    assert cluster.read_job("broken-export") is None, "no export after a failed training"


def test_multi_node_training_uses_an_indexed_job(cluster: Cluster) -> None:
    cluster.create(
        finetunejob(
            "multi", "sc-multi",
            resources={"nodes": 2, "processesPerNode": 2},
            placement={"podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "600s"}},
        )
    )  # fmt: skip
    job = wait_until("the training Job", lambda: cluster.read_job("multi-train"), 60, cluster.op)
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == 2 and job.spec.parallelism == 2
    assert job.spec.template.spec.subdomain == "multi-train"
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["MASTER_ADDR"].value == f"multi-train-0.multi-train.{cluster.namespace}.svc"
    assert env["NNODES"].value == "2" and env["NPROC_PER_NODE"].value == "2"
    assert "job-completion-index" in env["NODE_RANK"].value_from.field_ref.field_path
    service = cluster.core.read_namespaced_service("multi-train", cluster.namespace)
    assert service.spec.cluster_ip == "None"
    assert service.spec.selector["app.kubernetes.io/component"] == "trainer"
    cluster.wait_phase("multi", "Training", timeout=60)


def test_operator_restart_mid_pipeline_finishes_without_duplicates(cluster: Cluster) -> None:
    cluster.create(
        finetunejob(
            "restart", "sc-restart",
            serving={"enabled": False},
            placement={"podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "8s"}},
        )
    )  # fmt: skip
    cluster.wait_phase("restart", "Training", timeout=60)
    cluster.op.stop()
    time.sleep(2)
    cluster.op.start()
    cluster.wait_phase("restart", "Succeeded", timeout=120)
    jobs = cluster.batch.list_namespaced_job(cluster.namespace).items
    assert sorted(j.metadata.name for j in jobs) == [
        "restart-export",
        "restart-fetch",
        "restart-train",
    ]
    pods = cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector="app.kubernetes.io/component=trainer"
    ).items
    assert len(pods) == 1


def test_api_server_rejects_bad_manifests_with_field_errors(cluster: Cluster) -> None:
    body = finetunejob("bad", "sc-bad", method={"type": "prefix"}, training={"learningRate": 5})
    with pytest.raises(ApiException) as err:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, PLURAL, body
        )
    assert err.value.status == 422
    assert "spec.method.type" in err.value.body and "spec.training.learningRate" in err.value.body
    both = finetunejob("both", "sc-bad", model={"preset": "smollm2-135m-instruct", "path": "/m"})
    with pytest.raises(ApiException) as err:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, PLURAL, both
        )
    assert "set exactly one of model.preset or model.path" in err.value.body


def test_training_inputs_are_immutable_and_suspend_pauses(cluster: Cluster) -> None:
    cluster.create(finetunejob("paused", "sc-suspend", suspend=True))
    cluster.wait_phase("paused", "Suspended", timeout=60)
    # Nothing runs while suspended (a queue such as Kueue admits jobs by lifting it): the
    # first stage waits suspended, and training is not created yet.
    job = cluster.read_job("paused-fetch")
    assert job.spec.suspend is True
    assert cluster.read_job("paused-train") is None
    assert not cluster.core.list_namespaced_pod(cluster.namespace).items

    with pytest.raises(ApiException) as err:
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, PLURAL, "paused",
            {"spec": {"method": {"type": "full"}}},
        )  # fmt: skip
    assert err.value.status == 422 and "spec.method is immutable" in err.value.body

    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "paused", {"spec": {"suspend": False}}
    )
    wait_until(
        "the Job to resume",
        lambda: cluster.read_job("paused-fetch").spec.suspend is False, 30, cluster.op,
    )  # fmt: skip
    cluster.wait_phase("paused", "Serving", timeout=120)


def test_deadline_fails_training_and_ttl_deletes_the_finished_job(cluster: Cluster) -> None:
    cluster.create(
        finetunejob(
            "slow", "sc-deadline",
            activeDeadlineSeconds=3,
            ttlSecondsAfterFinished=3,
            placement={"podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "600s"}},
        )
    )  # fmt: skip
    status = cluster.wait_phase("slow", "Failed", timeout=60)
    assert "DeadlineExceeded" in condition(status, "Failed")["message"] or (
        "deadline" in condition(status, "Failed")["message"].lower()
    )

    wait_until(
        "ttlSecondsAfterFinished to delete the FineTuneJob", lambda: cluster.gone("slow"), 30,
        cluster.op,
    )  # fmt: skip


@pytest.mark.slow
def test_contract_trainer_runs_the_operators_config_and_reports_progress(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The ConfigMap and env the operator created drive the real trainer entrypoint."""
    from tests.conftest import PIRATE_DATA

    cluster.create(
        finetunejob(
            "contract", "sc-contract",
            dataset={"path": "data/train.jsonl", "evalFraction": 0.03},
            training={"maxSteps": 2, "batchSize": 2, "loggingSteps": 1},
            placement={"podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "600s"}},
        )
    )  # fmt: skip
    job = wait_until("the training Job", lambda: cluster.read_job("contract-train"), 60, cluster.op)
    [container] = job.spec.template.spec.containers
    env = {e.name: e for e in container.env}
    secret_ref = env["MAAP_PROGRESS_TOKEN"].value_from.secret_key_ref
    secret = cluster.core.read_namespaced_secret(secret_ref.name, cluster.namespace)
    token = base64.b64decode(secret.data[secret_ref.key]).decode()
    url = env["MAAP_PROGRESS_URL"].value
    assert url.endswith(f"/v1/progress/{cluster.namespace}/contract")

    # This directory plays the pod's volumes: the ConfigMap at /etc/maap, the claim at
    # /workspace (with the data set a user would have put there).
    config_map = cluster.core.read_namespaced_config_map("contract-config", cluster.namespace)
    workspace = tmp_path / "workspace"
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "train.jsonl").write_text(
        "\n".join((PIRATE_DATA / "train.jsonl").read_text().splitlines()[:40]) + "\n"
    )
    config = config_map.data["config.json"].replace('"/workspace/', f'"{workspace}/')
    (tmp_path / "config.json").write_text(config)
    assert json.loads(config)["outputDir"] == f"{workspace}/output"
    command = [*container.command[:-1], str(tmp_path / "config.json")]
    assert command[:4] == ["python", "-m", "maap_trainer", "train"]

    bad = httpx.post(url, json={"stage": "training"}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401

    done = subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, "MAAP_PROGRESS_URL": url, "MAAP_PROGRESS_TOKEN": token},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (workspace / "output" / "metrics.json").is_file()
    assert (workspace / "output" / "merged" / "config.json").is_file()
    # The last report of the stage (sent whatever the rate limit) carries the summary.
    status = wait_until(
        "status.progress and status.metrics from the trainer",
        lambda: (s := cluster.status("contract")).get("progress", {}).get("stage") == "trained"
        and s,
        30, cluster.op,
    )  # fmt: skip
    progress, metrics = status["progress"], status["metrics"]
    assert progress["step"] == progress["totalSteps"] == 2
    assert "etaSeconds" not in progress, "no stale training-stage key survives the merge patch"
    written = json.loads((workspace / "output" / "metrics.json").read_text())
    assert metrics["evalLossBefore"] == pytest.approx(written["evalLossBefore"])
    assert metrics["evalLossAfter"] == pytest.approx(written["evalLossAfter"])
    assert metrics["trainableParameters"] == written["trainableParameters"]


def test_operator_works_under_its_least_privilege_rbac(
    control_plane, api_client, namespace, operator_process, tmp_path: Path
) -> None:
    """Run a second operator as a ServiceAccount bound to exactly `maap rbac`'s rules."""
    import yaml
    from maap.rbac import render_rbac

    rbac = client.RbacAuthorizationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    suffix = uuid.uuid4().hex[:6]
    name = f"maap-operator-{suffix}"
    for doc in yaml.safe_load_all(render_rbac(namespace, name)):
        if doc["kind"] == "ServiceAccount":
            core.create_namespaced_service_account(namespace, doc)
        elif doc["kind"] == "ClusterRole":
            rbac.create_cluster_role(doc)
        else:
            rbac.create_cluster_role_binding(doc)
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    cluster_entry = admin["clusters"][0]
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster_entry],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "op",
                        "context": {"cluster": cluster_entry["name"], "user": "operator"},
                    }
                ],
                "current-context": "op",
            }
        )
    )
    # Only this operator may act: the admin one is stopped for the duration.
    operator_process.stop()
    op = OperatorProcess(kubeconfig, tmp_path / "rbac-operator.log")
    op.start()
    try:
        cluster = Cluster(api_client, namespace, op)
        cluster.create(finetunejob("rbac-ok", f"sc-rbac-{suffix}"))
        cluster.create(
            finetunejob(
                "rbac-fail", f"sc-rbacf-{suffix}", ttlSecondsAfterFinished=1,
                placement={"podAnnotations": {"maap.dev/kwok-fail": "yes"}},
            )
        )  # fmt: skip
        cluster.wait_phase("rbac-ok", "Serving", timeout=120)
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "rbac-ok", {"spec": {"serving": {"replicas": 0}}}
        )
        wait_until(
            "scale to 0",
            lambda: cluster.apps.read_namespaced_deployment("rbac-ok-server", namespace)
            .spec.replicas == 0, 30, op,
        )  # fmt: skip

        wait_until("the failed job to expire", lambda: cluster.gone("rbac-fail"), 60, op)
        secret = core.read_namespaced_secret("rbac-ok-progress", namespace)
        url = f"http://127.0.0.1:{op.progress_port}/v1/progress/{namespace}/rbac-ok"
        sent = httpx.post(
            url,
            json={"stage": "training", "step": 3, "totalSteps": 10},
            headers={"Authorization": f"Bearer {base64.b64decode(secret.data['token']).decode()}"},
        )
        assert sent.status_code == 204, sent.text
        assert cluster.status("rbac-ok")["progress"]["percent"] == 30
        # An RBAC denial reads: User "system:serviceaccount:NS:NAME" cannot VERB ...
        denied = re.findall(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot [^.]*', op.log())
        assert not denied, denied
    finally:
        op.stop()
        operator_process.start()


def test_namespaces_are_isolated_and_metrics_and_liveness_are_served(
    api_client, namespace, operator_process, request
) -> None:
    """Two FineTuneJobs with one name in two namespaces: each gets only its own children."""
    other = f"{namespace[:50]}-b"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": other}})
    request.addfinalizer(lambda: core.delete_namespace(other))
    wait_until(
        "the default ServiceAccount",
        lambda: any(
            sa.metadata.name == "default"
            for sa in core.list_namespaced_service_account(other).items
        ),
        30,
    )
    first = Cluster(api_client, namespace, operator_process)
    second = Cluster(api_client, other, operator_process)
    first.create(finetunejob("twin", f"sc-twin-a-{namespace[-6:]}", serving={"enabled": False}))
    second.create(finetunejob("twin", f"sc-twin-b-{namespace[-6:]}", serving={"enabled": False}))
    a = first.wait_phase("twin", "Succeeded", timeout=120)
    b = second.wait_phase("twin", "Succeeded", timeout=120)
    assert a["artifacts"] == b["artifacts"]  # same names, different namespaces
    for cluster in (first, second):
        jobs = cluster.batch.list_namespaced_job(cluster.namespace).items
        uid = cluster.get("twin")["metadata"]["uid"]
        assert sorted(j.metadata.name for j in jobs) == ["twin-export", "twin-fetch", "twin-train"]
        assert all(j.metadata.owner_references[0].uid == uid for j in jobs)

    # Parsed as Prometheus does; each twin's own series must say Succeeded (every phase's
    # series exists from the first reconcile, so their presence proves nothing).
    from maap.metrics import PHASES
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[str, list[Any]]:
        text = httpx.get(f"http://127.0.0.1:{operator_process.metrics_port}/metrics").text
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    def twin_phases(samples: dict[str, list[Any]], ns: str) -> dict[str, float]:
        return {
            s.labels["phase"]: s.value
            for s in samples.get("maap_finetunejob_phase", [])
            if s.labels["namespace"] == ns and s.labels["name"] == "twin"
        }

    def both_succeeded() -> dict[str, list[Any]] | None:
        samples = scrape()
        want = {phase: float(phase == "Succeeded") for phase in PHASES}
        ok = all(twin_phases(samples, ns) == want for ns in (namespace, other))
        return samples if ok else None

    samples = wait_until("each twin's maap_finetunejob_phase at Succeeded", both_succeeded, 30)
    by_phase = {s.labels["phase"]: s.value for s in samples["maap_finetunejobs"]}
    assert by_phase["Succeeded"] >= 2, by_phase
    [reconciles] = [
        s.value
        for s in samples["maap_reconcile_duration_seconds"]
        if s.name == "maap_reconcile_duration_seconds_count"
    ]
    assert reconciles >= 2  # at least one timed reconcile of each twin
    live = httpx.get(f"http://127.0.0.1:{operator_process.liveness_port}/healthz")
    assert live.status_code == 200


def test_pods_are_admitted_under_pod_security_restricted(cluster: Cluster) -> None:
    """The API server's Pod Security admission, enforcing "restricted", creates every pod
    of the pipeline (it refused the training pod before they were hardened)."""
    cluster.core.patch_namespace(
        cluster.namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    cluster.create(finetunejob("strict", "sc-strict"))
    cluster.wait_phase("strict", "Serving", timeout=120)
    pods = cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector="maap.dev/finetunejob=strict"
    )
    components = {p.metadata.labels["app.kubernetes.io/component"] for p in pods.items}
    assert {"trainer", "exporter", "server"} <= components, components
    events = cluster.core.list_namespaced_event(cluster.namespace).items
    refused = [e.message for e in events if e.reason == "FailedCreate"]
    assert not refused, refused


def test_pods_refused_at_creation_show_in_a_condition_and_a_warning(cluster: Cluster) -> None:
    cluster.core.create_namespaced_resource_quota(
        cluster.namespace,
        {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}},
    )
    cluster.create(finetunejob("refused", "sc-refused"))
    # The first stage's pod (the fetch Job's) is the one refused.
    fetched = wait_until(
        "a Fetched condition saying why no pod runs",
        lambda: (c := next((c for c in cluster.status("refused").get("conditions", [])
                            if c["type"] == "Fetched"), None))
        and c["reason"] == "PodCreationFailed" and c,
        90, cluster.op,
    )  # fmt: skip
    assert "exceeded quota" in fetched["message"], fetched
    assert cluster.status("refused")["phase"] == "Pending"
    assert ("Warning", "PodCreationFailed") in cluster.events("refused")
    # Lifting the quota lets the Job's retry create the pod; the condition moves on.
    cluster.core.delete_namespaced_resource_quota("no-pods", cluster.namespace)
    wait_until(
        "training to run once the quota is gone",
        lambda: cluster.status("refused").get("phase") in ("Training", "Exporting", "Serving"),
        120, cluster.op,
    )  # fmt: skip
