"""Pure builders: FineTuneJob -> the Kubernetes objects of each stage, as plain dicts.

No API calls here, so every object can be tested without a cluster. Every object is
labelled `app.kubernetes.io/*`, named after the FineTuneJob, and owned by it (deleting
the FineTuneJob garbage-collects everything).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from maap_trainer.config import TrainerConfig
from maap_trainer.presets import PRESETS

from maap.api import API_VERSION, KIND, FineTuneJob

CONFIG_MOUNT = "/etc/maap"
WORKSPACE = "/workspace"
OUTPUT_DIR = f"{WORKSPACE}/output"
MASTER_PORT = 29500
GPU_RESOURCE = "nvidia.com/gpu"
JOB_LABEL = "maap.dev/finetunejob"
SERVING_TOKEN_ENV = "MAAP_SERVING_TOKEN"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator's deployment decides, not the user: images, pull policy."""

    trainer_image: str = "maap-trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    # Base URL of the operator's progress endpoint as pods reach it (its Service).
    progress_url: str | None = None


@dataclass(frozen=True)
class Names:
    job: str

    @property
    def config(self) -> str:
        return f"{self.job}-config"

    @property
    def artifacts(self) -> str:
        return f"{self.job}-artifacts"

    @property
    def train(self) -> str:
        return f"{self.job}-train"

    @property
    def export(self) -> str:
        return f"{self.job}-export"

    @property
    def server(self) -> str:
        return f"{self.job}-server"

    @property
    def progress_secret(self) -> str:
        return f"{self.job}-progress"

    @property
    def serving_auth_secret(self) -> str:
        return f"{self.job}-serving-auth"


def labels(job: FineTuneJob, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "maap",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "maap",
        "app.kubernetes.io/managed-by": "maap-operator",
        JOB_LABEL: job.metadata.name,
    }


def selector_labels(job: FineTuneJob, component: str) -> dict[str, str]:
    return {JOB_LABEL: job.metadata.name, "app.kubernetes.io/component": component}


def pod_metadata(job: FineTuneJob, component: str) -> dict[str, Any]:
    placement = job.spec.placement
    meta: dict[str, Any] = {"labels": {**placement.pod_labels, **labels(job, component)}}
    if placement.pod_annotations:
        meta["annotations"] = dict(placement.pod_annotations)
    return meta


def owner_reference(job: FineTuneJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: FineTuneJob, uid: str, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job, uid)],
    }
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    return meta


def build_progress_secret(job: FineTuneJob, uid: str, token: str) -> dict[str, Any]:
    """The bearer token the training pod presents when it reports progress."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(job, uid, Names(job.metadata.name).progress_secret, "progress"),
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
        "metadata": _metadata(job, uid, Names(job.metadata.name).serving_auth_secret, "server"),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def progress_env(job: FineTuneJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    if not settings.progress_url:
        return []
    namespace = job.metadata.namespace or "default"
    url = f"{settings.progress_url.rstrip('/')}/v1/progress/{namespace}/{job.metadata.name}"
    secret = Names(job.metadata.name).progress_secret
    return [
        {"name": "MAAP_PROGRESS_URL", "value": url},
        {
            "name": "MAAP_PROGRESS_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
        },
    ]


def claim_name(job: FineTuneJob) -> str:
    return job.spec.storage.existing_claim or Names(job.metadata.name).artifacts


def trainer_config(job: FineTuneJob) -> TrainerConfig:
    """The data-plane config in the cluster: paths inside the pod's workspace volume."""
    cfg = job.spec.trainer_config(job.metadata.name, OUTPUT_DIR)
    dataset = cfg.dataset.path
    if not dataset.startswith("/"):
        cfg.dataset = cfg.dataset.model_copy(update={"path": f"{WORKSPACE}/{dataset}"})
    return cfg


def build_config_map(job: FineTuneJob, uid: str) -> dict[str, Any]:
    config = trainer_config(job).to_json_dict()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, uid, Names(job.metadata.name).config, "config"),
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
        "metadata": _metadata(job, uid, Names(job.metadata.name).artifacts, "artifacts"),
        "spec": spec,
    }


def _volumes(job: FineTuneJob, read_only: bool = False) -> tuple[list, list]:
    names = Names(job.metadata.name)
    volumes = [
        {"name": "config", "configMap": {"name": names.config}},
        {
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": claim_name(job), "readOnly": read_only},
        },
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "workspace", "mountPath": WORKSPACE, "readOnly": read_only},
    ]
    return volumes, mounts


def _common_env() -> list[dict[str, Any]]:
    return [
        {"name": "MAAP_CACHE_DIR", "value": f"{WORKSPACE}/.cache/maap"},
        {"name": "HF_HOME", "value": f"{WORKSPACE}/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _resources(job: FineTuneJob, with_gpus: bool) -> dict[str, Any]:
    res = job.spec.resources
    requests = {k: str(v) for k, v in res.requests.items()}
    preset = PRESETS.get(job.spec.model.preset or "")
    if preset is not None and "memory" not in requests:
        # Without a request the scheduler may pack the pod where the model cannot fit.
        requests["memory"] = f"{preset.min_memory_gib_cpu}Gi"
    limits = {k: str(v) for k, v in res.limits.items()}
    if with_gpus and res.gpus:
        limits[GPU_RESOURCE] = str(res.gpus)
        requests[GPU_RESOURCE] = str(res.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _placement(job: FineTuneJob) -> dict[str, Any]:
    placement = job.spec.placement
    out: dict[str, Any] = {}
    if placement.node_selector:
        out["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        out["tolerations"] = list(placement.tolerations)
    if placement.affinity:
        out["affinity"] = dict(placement.affinity)
    return out


def _stage_container(
    job: FineTuneJob, settings: OperatorSettings, stage: str, env: list, with_gpus: bool
) -> dict[str, Any]:
    _, mounts = _volumes(job)
    return {
        "name": stage,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "python",
            "-m",
            "maap_trainer",
            stage,
            "--config",
            f"{CONFIG_MOUNT}/config.json",
        ],
        "env": _common_env() + env,
        "resources": _resources(job, with_gpus),
        "volumeMounts": mounts,
        # The stage writes one readable line there on failure; the operator shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_spec(job: FineTuneJob, settings: OperatorSettings, container: dict) -> dict[str, Any]:
    volumes, _ = _volumes(job)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        **_placement(job),
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


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
    container = _stage_container(job, settings, "train", env, with_gpus=True)
    if nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    pod_spec = _pod_spec(job, settings, container)
    spec: dict[str, Any] = {
        "backoffLimit": job.spec.backoff_limit,
        "suspend": job.spec.suspend,
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
        "metadata": _metadata(job, uid, names.train, "trainer"),
        "spec": spec,
    }


def build_headless_service(job: FineTuneJob, uid: str) -> dict[str, Any] | None:
    """DNS for the ranks of a multi-node training Job (None for a single node)."""
    if job.spec.resources.nodes <= 1:
        return None
    names = Names(job.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, uid, names.train, "trainer"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(job, "trainer"),
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def build_export_job(job: FineTuneJob, uid: str, settings: OperatorSettings) -> dict[str, Any]:
    """ONNX export runs on CPU: same placement, no GPU request."""
    container = _stage_container(job, settings, "export", [], with_gpus=False)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, uid, Names(job.metadata.name).export, "exporter"),
        "spec": {
            "backoffLimit": job.spec.backoff_limit,
            "template": {
                "metadata": pod_metadata(job, "exporter"),
                "spec": _pod_spec(job, settings, container),
            },
        },
    }


def build_serving_deployment(
    job: FineTuneJob, uid: str, settings: OperatorSettings
) -> dict[str, Any]:
    names = Names(job.metadata.name)
    port = job.spec.serving.port
    volumes, mounts = _volumes(job, read_only=True)
    # Serving settings (port, batching, queue, limits) come from the job's config.json.
    serve_command = [
        *("python", "-m", "maap_trainer", "serve"),
        *("--config", f"{CONFIG_MOUNT}/config.json"),
        *("--model-dir", f"{OUTPUT_DIR}/onnx"),
        *("--model-name", job.metadata.name),
    ]
    env = _common_env()
    auth_secret = serving_auth_secret_name(job)
    if auth_secret:
        serve_command += ["--auth-token-env", SERVING_TOKEN_ENV]
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
        "command": serve_command,
        "env": env,
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
        "volumeMounts": mounts,
    }
    pod_spec = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        # Serving is CPU inference with ONNX Runtime: no GPU, but the user's placement.
        **_placement(job),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(job, uid, names.server, "server"),
        "spec": {
            "replicas": job.spec.serving.replicas,
            "selector": {"matchLabels": selector_labels(job, "server")},
            "template": {"metadata": pod_metadata(job, "server"), "spec": pod_spec},
        },
    }


def build_serving_service(job: FineTuneJob, uid: str) -> dict[str, Any]:
    port = job.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, uid, Names(job.metadata.name).server, "server"),
        "spec": {
            "selector": selector_labels(job, "server"),
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def service_endpoint(job: FineTuneJob) -> str:
    namespace = job.metadata.namespace or "default"
    server = Names(job.metadata.name).server
    return f"http://{server}.{namespace}.svc:{job.spec.serving.port}/v1"
