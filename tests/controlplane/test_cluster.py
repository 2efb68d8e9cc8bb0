"""The test control plane behaves like a real cluster: scheduling onto labelled GPU nodes,
Jobs completing, Deployments becoming Ready, garbage collection, RBAC, CRD validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from controlplane import (
    GPU_NODE,
    REPO_ROOT,
    ControlPlane,
    read_versions,
    wait_for,
)
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.controlplane

FINETUNEJOB_CRD = REPO_ROOT / "crds" / "finetunejobs.maap.dev.yaml"


def _container(gpus: int = 0) -> client.V1Container:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else None
    return client.V1Container(
        name="main",
        image="registry.invalid/maap/noop:0",  # never pulled: kwok runs no containers
        resources=client.V1ResourceRequirements(limits=limits),
    )


def _job(
    name: str,
    *,
    node_selector: dict[str, str] | None = None,
    gpus: int = 0,
    annotations: dict[str, str] | None = None,
) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(annotations=annotations),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    node_selector=node_selector,
                    containers=[_container(gpus)],
                ),
            ),
        ),
    )


def _job_condition(batch: client.BatchV1Api, name: str, ns: str, cond: str) -> bool:
    job = batch.read_namespaced_job_status(name, ns)
    return any(c.type == cond and c.status == "True" for c in (job.status.conditions or []))


def test_server_reports_pinned_version(control_plane: ControlPlane, api_client: ApiClient) -> None:
    pinned = read_versions()["KUBERNETES_VERSION"]
    info = client.VersionApi(api_client).get_code()
    assert info.git_version == pinned
    assert (info.major, info.minor) == tuple(pinned.lstrip("v").split(".")[:2])
    assert control_plane.version == pinned


def test_fake_nodes_advertise_gpus(api_client: ApiClient) -> None:
    node = client.CoreV1Api(api_client).read_node(GPU_NODE.name)
    assert node.metadata.labels["maap.dev/accelerator"] == "nvidia"
    assert node.status.allocatable["nvidia.com/gpu"] == str(GPU_NODE.gpus)
    ready = [c.status for c in node.status.conditions if c.type == "Ready"]
    assert ready == ["True"]


def test_gpu_job_is_scheduled_to_gpu_node_and_succeeds(
    api_client: ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    batch.create_namespaced_job(
        namespace, _job("train", node_selector={"maap.dev/accelerator": "nvidia"}, gpus=1)
    )
    wait_for("Job train Complete", lambda: _job_condition(batch, "train", namespace, "Complete"))
    assert batch.read_namespaced_job_status("train", namespace).status.succeeded == 1

    pods = core.list_namespaced_pod(namespace, label_selector="job-name=train").items
    assert [p.spec.node_name for p in pods] == [GPU_NODE.name]
    assert [p.status.phase for p in pods] == ["Succeeded"]

    # Deleting the Job garbage-collects its pods (through kwok's pod-delete stage).
    batch.delete_namespaced_job("train", namespace, propagation_policy="Background")
    wait_for(
        "pods of the deleted Job to be gone",
        lambda: not core.list_namespaced_pod(namespace, label_selector="job-name=train").items,
    )


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    api_client: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="greedy"),
        spec=client.V1PodSpec(containers=[_container(gpus=GPU_NODE.gpus + 1)]),
    )
    core.create_namespaced_pod(namespace, pod)

    def unschedulable() -> str | None:
        status = core.read_namespaced_pod_status("greedy", namespace).status
        for c in status.conditions or []:
            if c.type == "PodScheduled" and c.reason == "Unschedulable":
                return str(c.message)
        return None

    message = wait_for("PodScheduled=False/Unschedulable", unschedulable)
    assert "nvidia.com/gpu" in message


def test_job_pod_annotated_to_fail_fails_the_job(api_client: ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(
        namespace, _job("doomed", annotations={"maap.dev/kwok-fail": "true"})
    )
    wait_for("Job doomed Failed", lambda: _job_condition(batch, "doomed", namespace, "Failed"))


def test_deployment_pod_becomes_ready(api_client: ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    labels = {"app": "serve"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="serve"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[_container()]),
                ),
            ),
        ),
    )
    wait_for(
        "Deployment serve available",
        lambda: (apps.read_namespaced_deployment_status("serve", namespace).status.ready_replicas
                 or 0) >= 1,
    )  # fmt: skip
    (pod,) = core.list_namespaced_pod(namespace, label_selector="app=serve").items
    assert pod.status.phase == "Running"
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def test_deleting_owner_garbage_collects_child(api_client: ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    parent = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="parent"))
    )
    owner = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="parent", uid=parent.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[owner])),
    )
    core.delete_namespaced_config_map("parent", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            raise

    wait_for("child ConfigMap garbage-collected", child_gone)


def test_rbac_is_enforced(api_client: ApiClient, namespace: str) -> None:
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{namespace}:default",
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb="list", resource="secrets"
                ),
            )
        )
    )
    assert review.status.allowed is False


# --- FineTuneJob CRD: generated into crds/ by `make crd` ----------------------------------


def _finetunejob_api(api_client: ApiClient) -> tuple[str, str, str, bool]:
    """(group, version, plural, namespaced) of the installed FineTuneJob CRD."""
    # The CRD is committed: without it the API is missing, which is a failure, not a skip.
    assert FINETUNEJOB_CRD.exists(), f"{FINETUNEJOB_CRD.relative_to(REPO_ROOT)} is missing"
    crd = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
        "finetunejobs.maap.dev"
    )
    version = next(v.name for v in crd.spec.versions if v.served and v.storage)
    return crd.spec.group, version, crd.spec.names.plural, crd.spec.scope == "Namespaced"


def _create_finetunejob_status(
    api_client: ApiClient, namespace: str, spec: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    group, version, plural, namespaced = _finetunejob_api(api_client)
    body = {
        "apiVersion": f"{group}/{version}",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad", **({"namespace": namespace} if namespaced else {})},
        "spec": spec,
    }
    api = client.CustomObjectsApi(api_client)
    try:
        if namespaced:
            api.create_namespaced_custom_object(group, version, namespace, plural, body)
        else:
            api.create_cluster_custom_object(group, version, plural, body)
    except ApiException as e:
        return int(e.status), json.loads(e.body)
    pytest.fail(f"the API server accepted an invalid FineTuneJob: {spec}")


def _causes(status: dict[str, Any]) -> dict[str, str]:
    return {c.get("field", ""): c.get("message", "") for c in status["details"]["causes"]}


def test_finetunejob_with_unknown_method_is_rejected_naming_the_field(
    api_client: ApiClient, namespace: str
) -> None:
    code, status = _create_finetunejob_status(
        api_client,
        namespace,
        {"model": "SmolLM2-135M-Instruct", "dataset": "data.jsonl", "method": {"type": "banana"}},
    )
    assert code == 422, status
    causes = _causes(status)
    assert "spec.method.type" in causes, status["message"]
    assert "banana" in causes["spec.method.type"]
    assert "lora" in causes["spec.method.type"]  # the message lists the valid values


def test_finetunejob_without_model_is_rejected_naming_the_field(
    api_client: ApiClient, namespace: str
) -> None:
    code, status = _create_finetunejob_status(
        api_client, namespace, {"dataset": "data.jsonl", "method": {"type": "lora"}}
    )
    assert code == 422, status
    assert "spec.model" in _causes(status), status["message"]


def test_every_crd_in_crds_dir_is_established(api_client: ApiClient) -> None:
    docs = [
        doc
        for f in sorted((REPO_ROOT / "crds").glob("*.y*ml"))
        for doc in yaml.safe_load_all(f.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    assert docs, "crds/ has no CustomResourceDefinition (run `make generate`)"
    api = client.ApiextensionsV1Api(api_client)
    for doc in docs:
        crd = api.read_custom_resource_definition(doc["metadata"]["name"])
        conditions = {c.type: c.status for c in crd.status.conditions or []}
        assert conditions.get("Established") == "True", crd.metadata.name
