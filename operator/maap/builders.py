"""Pure builders: FineTuneJob -> the Kubernetes objects of each stage, as plain dicts.

No API calls here, so every object can be tested without a cluster. Names, labels and
owner references come from objectmeta.py, the pods' common parts from podspec.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from maap_api.finetunejob import SERVING_TOKEN_ENV, FineTuneJob
from maap_api.results import ONNX_DIR
from maap_api.sources import is_uri
from maap_api.stage_config import TrainerConfig

from maap.objectmeta import (
    JOB_LABEL,
    Names,
    object_metadata,
    owner_reference,
    pod_metadata,
    selector_labels,
)
from maap.podspec import (
    CONFIG_PATH,
    CONTAINER_SECURITY_CONTEXT,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    INPUTS_DIR,
    OUTPUT_DIR,
    POD_SECURITY_CONTEXT,
    SERVING_GRACE_SECONDS,
    SERVING_PRESTOP_SECONDS,
    TRAINING_GRACE_SECONDS,
    WORKSPACE,
    OperatorSettings,
    claim_name,
    common_env,
    exit_code_rule,
    placement,
    pod_volumes,
    progress_env,
    stage_container,
    stage_pod_spec,
)
from maap.stages import serve_command

__all__ = [
    "JOB_LABEL",
    "OUTPUT_DIR",
    "WORKSPACE",
    "Names",
    "OperatorSettings",
    "claim_name",
    "owner_reference",
]

MASTER_PORT = 29500
CONFIG_HASH_ANNOTATION = "maap.dev/config-hash"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def build_progress_secret(job: FineTuneJob, uid: str, token: str) -> dict[str, Any]:
    """The bearer token the training pod presents when it reports progress."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_metadata(job, uid, Names(job.metadata.name).progress_secret, "progress"),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def serving_auth_secret_name(job: FineTuneJob) -> str | None:
    auth = job.spec.serving.auth
    if not auth.enabled:
        return None
    return auth.secret_name or Names(job.metadata.name).serving_auth_secret


def build_serving_auth_secret(job: FineTuneJob, uid: str, token: str) -> dict[str, Any] | None:
    """The clients' bearer token, unless auth is off or the user brings their own Secret."""
    auth = job.spec.serving.auth
    if not auth.enabled or auth.secret_name:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_metadata(
            job, uid, Names(job.metadata.name).serving_auth_secret, "server"
        ),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def trainer_config(job: FineTuneJob) -> TrainerConfig:
    """The data-plane config in the cluster: paths inside the pod's workspace volume."""
    cfg = job.spec.trainer_config(job.metadata.name, OUTPUT_DIR)
    cfg.inputs_dir = INPUTS_DIR
    dataset = cfg.dataset.path
    if not dataset.startswith("/") and not is_uri(dataset):
        cfg.dataset = cfg.dataset.model_copy(update={"path": f"{WORKSPACE}/{dataset}"})
    return cfg


def build_config_map(job: FineTuneJob, uid: str) -> dict[str, Any]:
    config = trainer_config(job).to_json_dict()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(job, uid, Names(job.metadata.name).config, "config"),
        "data": {"config.json": json.dumps(config, indent=2, sort_keys=True)},
    }


def build_pvc(job: FineTuneJob, uid: str) -> dict[str, Any] | None:
    """The per-job artifacts claim, or None when the user names an existing one."""
    storage = job.spec.storage
    if storage.existing_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_metadata(job, uid, Names(job.metadata.name).artifacts, "artifacts"),
        "spec": spec,
    }


def processes_per_node(job: FineTuneJob) -> int:
    res = job.spec.resources
    return res.gpus if res.gpus else res.processes_per_node


def build_training_job(job: FineTuneJob, uid: str, settings: OperatorSettings) -> dict[str, Any]:
    """One pod per node; several nodes make an Indexed Job whose rank 0 is the rendezvous."""
    names = Names(job.metadata.name)
    nodes = job.spec.resources.nodes
    env: list[dict[str, Any]] = [
        {"name": "NNODES", "value": str(nodes)},
        {"name": "NPROC_PER_NODE", "value": str(processes_per_node(job))},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
    ]
    if nodes > 1:
        namespace = job.metadata.namespace or "default"
        # Indexed Job pods are named <job>-<index> and, with `subdomain`, resolvable as
        # <job>-<index>.<service>.<namespace>.svc through the headless Service.
        env += [
            {"name": "MASTER_ADDR", "value": f"{names.train}-0.{names.train}.{namespace}.svc"},
            {
                "name": "NODE_RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}
                },
            },
        ]
    else:
        env += [
            {"name": "MASTER_ADDR", "value": "127.0.0.1"},
            {"name": "NODE_RANK", "value": "0"},
        ]
    env += progress_env(job, settings)
    container = stage_container(job, settings, "train", env, with_gpus=True)
    if nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    pod_spec = stage_pod_spec(job, settings, container)
    pod_spec["terminationGracePeriodSeconds"] = TRAINING_GRACE_SECONDS
    spec: dict[str, Any] = {
        "backoffLimit": job.spec.backoff_limit,
        "suspend": job.spec.suspend,
        "podFailurePolicy": training_failure_policy(),
        # The replacement of a stopped pod starts once it has exited, i.e. after it saved
        # its checkpoint: never two pods writing the same checkpoints.
        "podReplacementPolicy": "Failed",
        "template": {"metadata": pod_metadata(job, "trainer"), "spec": pod_spec},
    }
    if job.spec.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = job.spec.active_deadline_seconds
    if nodes > 1:
        pod_spec["subdomain"] = names.train
        spec.update(
            completionMode="Indexed",
            completions=nodes,
            parallelism=nodes,
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_metadata(job, uid, names.train, "trainer"),
        "spec": spec,
    }


def training_failure_policy() -> dict[str, Any]:
    """Which pod failures count against backoffLimit (the first matching rule wins).

    A pod stopped by SIGTERM saves a checkpoint and exits EXIT_PREEMPTED; a pod evicted or
    preempted carries the DisruptionTarget condition: neither is the run's fault, and the
    replacement resumes. A user error (exit 2: bad data or config) fails the Job at once:
    retrying it cannot help. Anything else is retried up to backoffLimit."""
    return {
        "rules": [
            exit_code_rule("train", "Ignore", EXIT_PREEMPTED),
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            exit_code_rule("train", "FailJob", EXIT_USER_ERROR),
        ]
    }


def build_headless_service(job: FineTuneJob, uid: str) -> dict[str, Any] | None:
    """DNS for the ranks of a multi-node training Job (None for a single node)."""
    if job.spec.resources.nodes <= 1:
        return None
    names = Names(job.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(job, uid, names.train, "trainer"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(job, "trainer"),
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def build_export_job(job: FineTuneJob, uid: str, settings: OperatorSettings) -> dict[str, Any]:
    """ONNX export runs on CPU: same placement, no GPU request."""
    env = progress_env(job, settings)  # its final report carries status.export
    container = stage_container(job, settings, "export", env, with_gpus=False)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_metadata(job, uid, Names(job.metadata.name).export, "exporter"),
        "spec": {
            "backoffLimit": job.spec.backoff_limit,
            "template": {
                "metadata": pod_metadata(job, "exporter"),
                "spec": stage_pod_spec(job, settings, container),
            },
        },
    }


def build_serving_deployment(
    job: FineTuneJob, uid: str, settings: OperatorSettings
) -> dict[str, Any]:
    names = Names(job.metadata.name)
    port = job.spec.serving.port
    volumes, mounts = pod_volumes(job, read_only=True)
    # Serving settings (port, batching, queue, limits, the token's variable) come from
    # the job's config.json; the pod only puts the Secret's token into that variable.
    command = serve_command(CONFIG_PATH, f"{OUTPUT_DIR}/{ONNX_DIR}", job.metadata.name)
    env = common_env()
    auth_secret = serving_auth_secret_name(job)
    if auth_secret:
        env.append(
            {
                "name": SERVING_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": auth_secret, "key": "token"}},
            }
        )
    container = {
        "name": "server",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env,
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
        "volumeMounts": mounts,
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        # Stay in the Service until every kube-proxy has dropped this pod, then drain.
        "lifecycle": {"preStop": {"sleep": {"seconds": SERVING_PRESTOP_SECONDS}}},
    }
    pod_spec = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": SERVING_GRACE_SECONDS,
        # Serving is CPU inference with ONNX Runtime: no GPU, but the user's placement.
        **placement(job),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(job, uid, names.server, "server"),
        "spec": {
            "replicas": job.spec.serving.replicas,
            # A new server is Ready before an old one stops: no capacity lost mid-rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "selector": {"matchLabels": selector_labels(job, "server")},
            "template": {"metadata": _server_pod_metadata(job), "spec": pod_spec},
        },
    }


def _server_pod_metadata(job: FineTuneJob) -> dict[str, Any]:
    """Pod metadata with a hash of config.json: a changed serving config rolls the pods
    (they read the ConfigMap once, at start)."""
    meta = pod_metadata(job, "server")
    config = build_config_map(job, "")["data"]["config.json"]
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    meta["annotations"] = {**meta.get("annotations", {}), CONFIG_HASH_ANNOTATION: digest}
    return meta


def build_serving_service(job: FineTuneJob, uid: str) -> dict[str, Any]:
    port = job.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(job, uid, Names(job.metadata.name).server, "server"),
        "spec": {
            "selector": selector_labels(job, "server"),
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def selector(workload: dict[str, Any]) -> str:
    """A Deployment's or Job's matchLabels as a label selector string."""
    labels = workload["spec"]["selector"].get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def service_endpoint(job: FineTuneJob) -> str:
    namespace = job.metadata.namespace or "default"
    server = Names(job.metadata.name).server
    return f"http://{server}.{namespace}.svc:{job.spec.serving.port}/v1"
