"""The pods of every stage: containers, volumes, security, resources, placement.

Every pod is admitted under Pod Security "restricted": non-root uid 1000, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, a read-only root filesystem
with writable emptyDirs where processes write, and no service-account token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maap_api.finetunejob import FineTuneJob
from maap_api.presets import PRESETS

from maap.objectmeta import Names
from maap.stages import JOB_STAGES

CONFIG_MOUNT = "/etc/maap"
# The job's config.json (the ConfigMap), as every stage's pod reads it.
CONFIG_PATH = f"{CONFIG_MOUNT}/config.json"
WORKSPACE = "/workspace"
# Where the shared model cache's claim is mounted (when the operator has one).
CACHE_MOUNT = "/var/cache/maap"
# Where the fetch stage leaves remote data files on the job's volume.
INPUTS_DIR = f"{WORKSPACE}/inputs"
OUTPUT_DIR = f"{WORKSPACE}/output"
GPU_RESOURCE = "nvidia.com/gpu"
TMP_DIR = "/tmp"
# The trainer's exit codes (maap_trainer.__main__): a user error, and a stage stopped by
# SIGTERM after saving a checkpoint (maap_trainer.train.preemption.EXIT_PREEMPTED).
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75
# Time a stopped training pod gets to finish its step and save a checkpoint.
TRAINING_GRACE_SECONDS = 120
# A stopped server first stays in the Service while endpoints drop it everywhere, then
# drains in-flight requests (the server's own grace is 30 s).
SERVING_PRESTOP_SECONDS = 5
SERVING_GRACE_SECONDS = 45
# Pod Security "restricted": every pod maap creates is admitted in such a namespace.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class ModelCacheSettings:
    """The shared model cache: one claim per namespace, mounted by every job there."""

    claim_name: str = "maap-model-cache"
    size: str = "100Gi"
    storage_class_name: str | None = None
    access_mode: str = "ReadWriteMany"


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator's deployment decides, not the user: images, pull policy."""

    trainer_image: str = "maap-trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    # Base URL of the operator's progress endpoint as pods reach it (its Service).
    progress_url: str | None = None
    # None: each job keeps its base model on its own volume (no shared cache).
    model_cache: ModelCacheSettings | None = None


def exit_code_rule(container: str, action: str, *codes: int) -> dict[str, Any]:
    """A podFailurePolicy rule: `action` when `container` exits with one of `codes`."""
    return {
        "action": action,
        "onExitCodes": {"containerName": container, "operator": "In", "values": list(codes)},
    }


def claim_name(job: FineTuneJob) -> str:
    return job.spec.storage.existing_claim or Names(job.metadata.name).artifacts


def pod_volumes(
    job: FineTuneJob, read_only: bool = False, cache: ModelCacheSettings | None = None
) -> tuple[list, list]:
    """The config, the artifacts claim, and the only writable places besides it: the root
    filesystem is read-only, so /tmp (and HOME there) is an emptyDir, and /dev/shm one in
    memory (the runtime's default is 64 MiB; torch's data loaders and DeepSpeed's
    shared-memory op between local ranks use it)."""
    names = Names(job.metadata.name)
    volumes = [
        {"name": "config", "configMap": {"name": names.config}},
        {
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": claim_name(job), "readOnly": read_only},
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "workspace", "mountPath": WORKSPACE, "readOnly": read_only},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    if cache is not None:
        # Stages only read the cache: the CachedModel's download Job is its one writer.
        volumes.append(cache_volume(cache))
        mounts.append({"name": "model-cache", "mountPath": CACHE_MOUNT, "readOnly": True})
    return volumes, mounts


def cache_volume(cache: ModelCacheSettings) -> dict[str, Any]:
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}


def progress_env(job: FineTuneJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Where every stage posts its progress reports (and a final report, its summary and
    artifacts: status.metrics, status.export, status.artifacts), when the operator listens."""
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


def common_env(cache: ModelCacheSettings | None = None) -> list[dict[str, Any]]:
    # The shared cache is read-only in stage pods: ops JIT-built there go to the workspace.
    extensions = f"{WORKSPACE}/.cache/torch_extensions"
    return [
        *([{"name": "TORCH_EXTENSIONS_DIR", "value": extensions}] if cache else []),
        {"name": "MAAP_CACHE_DIR", "value": CACHE_MOUNT if cache else f"{WORKSPACE}/.cache/maap"},
        {"name": "HF_HOME", "value": f"{WORKSPACE}/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # Read-only root filesystem: no bytecode caches; HOME (~/.cache of libraries) on /tmp.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "HOME", "value": TMP_DIR},
    ]


def resources(job: FineTuneJob, with_gpus: bool) -> dict[str, Any]:
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


def placement(job: FineTuneJob) -> dict[str, Any]:
    placement = job.spec.placement
    out: dict[str, Any] = {}
    if placement.node_selector:
        out["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        out["tolerations"] = list(placement.tolerations)
    if placement.affinity:
        out["affinity"] = dict(placement.affinity)
    return out


def stage_container(
    job: FineTuneJob,
    settings: OperatorSettings,
    stage: str,
    env: list,
    with_gpus: bool,
    command: list[str] | None = None,
) -> dict[str, Any]:
    _, mounts = pod_volumes(job, cache=settings.model_cache)
    return {
        "name": stage,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command or JOB_STAGES[stage](CONFIG_PATH),
        "env": common_env(settings.model_cache) + env,
        "resources": resources(job, with_gpus),
        "volumeMounts": mounts,
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        # The stage writes one readable line there on failure; the operator shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def stage_pod_spec(job: FineTuneJob, settings: OperatorSettings, container: dict) -> dict[str, Any]:
    volumes, _ = pod_volumes(job, cache=settings.model_cache)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        # The stages never call the Kubernetes API.
        "automountServiceAccountToken": False,
        **placement(job),
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec
