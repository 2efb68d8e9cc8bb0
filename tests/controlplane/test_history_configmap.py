"""The progress receiver keeps each job's training history in `<job>-history`, never in status.

maap's progress endpoint runs in this process against the real control plane, as a user
bound to exactly the operator's RBAC rules (maap.rbac), and reports are POSTed to it over
HTTP as the trainer sends them. The ConfigMap is owned by the FineTuneJob, so the garbage
collector deletes it with the job.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from maap.objectmeta import JOB_LABEL, Names
from maap.progress_api import start_progress_server
from maap.rbac import cluster_role
from maap_api.finetunejob import GROUP, KIND, PLURAL, VERSION
from maap_api.history import CheckpointPoint, LogPoint, parse_history_configmap
from maap_trainer.progress import ProgressReport

from tests.conftest import free_port
from tests.controlplane.conftest import wait_for

TOKEN = "history-t0k3n"


@pytest.fixture
def operator_client(control_plane: Any, tmp_path: Path) -> Iterator[client.ApiClient]:
    """An ApiClient as a user bound to the operator's ClusterRole (maap.rbac), nothing more."""
    name = f"maap-history-{uuid.uuid4().hex[:6]}"
    admin = control_plane.api_client()
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_cluster_role(cluster_role(name))
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": name}],
        }
    )  # fmt: skip
    kubeconfig = tmp_path / "operator.kubeconfig"
    control_plane.write_kubeconfig(kubeconfig, f"/CN={name}", name)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
        admin.close()


@pytest.fixture
def receiver(operator_client: client.ApiClient) -> Iterator[str]:
    """maap's progress API on a free port, served from its own event loop."""
    loop = asyncio.new_event_loop()
    port = free_port()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start_progress_server(operator_client, port))
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the progress server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def create_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "data/train.jsonl"},
            "suspend": True,  # no operator runs here: nothing acts on it but the reports
        },
    }
    job = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": Names(name).progress_secret}, "stringData": {"token": TOKEN}},
    )
    return job


def point(step: int, train: float | None = None, valid: float | None = None) -> LogPoint:
    return LogPoint(step=step, time=1_764_000_000.0 + step, train_loss=train, valid_loss=valid,
                    learning_rate=2e-4 if train is not None else None)  # fmt: skip


def checkpoint(step: int, train: float) -> CheckpointPoint:
    return CheckpointPoint(step=step, time=1_764_000_000.5 + step, train_loss=train,
                           path=f"checkpoints/checkpoint-{step}")  # fmt: skip


def post(url: str, report: ProgressReport) -> httpx.Response:
    return httpx.post(
        url,
        json=report.to_json_dict(),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )


def read_configmap(api: client.ApiClient, namespace: str, name: str) -> client.V1ConfigMap:
    return client.CoreV1Api(api).read_namespaced_config_map(
        Names(name).history_configmap, namespace
    )


def test_two_reports_merge_into_the_owned_history_configmap_and_not_into_status(
    api_client: client.ApiClient, namespace: str, receiver: str
) -> None:
    job = create_job(api_client, namespace, "curves")
    url = f"{receiver}/v1/progress/{namespace}/curves"
    first = ProgressReport(
        stage="training", step=2, total_steps=6, loss=2.5,
        history=[point(0, valid=3.0), point(1, train=2.9), point(2, train=2.5)],
        checkpoints=[checkpoint(2, 2.5)],
    )  # fmt: skip
    # The second report repeats step 2 (now with its eval) and brings steps 3 and 4.
    second = ProgressReport(
        stage="training", step=4, total_steps=6, loss=2.0,
        history=[point(2, train=2.5, valid=2.7), point(3, train=2.2), point(4, train=2.0)],
        checkpoints=[checkpoint(4, 2.0)],
    )  # fmt: skip
    for report in (first, second):
        sent = post(url, report)
        assert sent.status_code == 204, sent.text

    configmap = read_configmap(api_client, namespace, "curves")
    history = parse_history_configmap(configmap.data)
    assert [p.step for p in history.points] == [0, 1, 2, 3, 4]
    merged = history.points[2]
    assert (merged.train_loss, merged.valid_loss, merged.learning_rate) == (2.5, 2.7, 2e-4)
    assert history.points[0].valid_loss == 3.0 and history.points[0].train_loss is None
    assert [(c.step, c.path) for c in history.checkpoints] == [
        (2, "checkpoints/checkpoint-2"), (4, "checkpoints/checkpoint-4"),
    ]  # fmt: skip

    owner = configmap.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == (KIND, "curves", job["metadata"]["uid"])
    assert owner.api_version == f"{GROUP}/{VERSION}" and owner.controller is True
    labels = configmap.metadata.labels
    assert labels["app.kubernetes.io/instance"] == "curves"
    assert labels["app.kubernetes.io/component"] == "history"
    assert labels["app.kubernetes.io/managed-by"] == "maap-operator"
    assert JOB_LABEL not in labels, "kept out of the operator's in-memory child index"

    status = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "curves"
    )["status"]
    assert status["progress"]["step"] == 4 and status["progress"]["loss"] == 2.0
    text = json.dumps(status)
    assert "history" not in text and "checkpoint" not in text and "validLoss" not in text

    # The same tail again (a report after training carries it too): nothing to write.
    version = configmap.metadata.resource_version
    again = ProgressReport(stage="saving", step=4, total_steps=4, history=second.history,
                           checkpoints=second.checkpoints)  # fmt: skip
    assert post(url, again).status_code == 204
    assert read_configmap(api_client, namespace, "curves").metadata.resource_version == version

    # Deleting the FineTuneJob deletes its history (the garbage collector follows the owner).
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "curves"
    )

    def gone() -> bool:
        try:
            read_configmap(api_client, namespace, "curves")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the history ConfigMap to be garbage-collected", gone, timeout=60)


def test_concurrent_reports_lose_no_point(
    api_client: client.ApiClient, namespace: str, receiver: str
) -> None:
    create_job(api_client, namespace, "racing")
    url = f"{receiver}/v1/progress/{namespace}/racing"
    reports = [
        ProgressReport(stage="training", step=10 * i + 9,
                       history=[point(10 * i + s, train=float(i)) for s in range(10)])
        for i in range(12)
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda r: post(url, r), reports))
    assert [a.status_code for a in answers] == [204] * 12, [a.text for a in answers]
    history = parse_history_configmap(read_configmap(api_client, namespace, "racing").data)
    assert [p.step for p in history.points] == list(range(120))


def test_a_replace_at_a_stale_resource_version_is_refused(
    api_client: client.ApiClient, namespace: str, receiver: str
) -> None:
    """What the receiver's retry stands on: the API server checks the resourceVersion a
    merge patch carries, and answers 409 when the object changed since it was read."""
    create_job(api_client, namespace, "stale")
    url = f"{receiver}/v1/progress/{namespace}/stale"
    report = ProgressReport(stage="training", step=1, history=[point(1, train=1.0)])
    assert post(url, report).status_code == 204
    read = read_configmap(api_client, namespace, "stale")
    newer = ProgressReport(stage="training", step=2, history=[point(2, train=0.9)])
    assert post(url, newer).status_code == 204
    core = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as refused:
        core.patch_namespaced_config_map(
            read.metadata.name, namespace,
            {"metadata": {"resourceVersion": read.metadata.resource_version},
             "data": read.data},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
    assert refused.value.status == 409
    history = parse_history_configmap(read_configmap(api_client, namespace, "stale").data)
    assert [p.step for p in history.points] == [1, 2]
