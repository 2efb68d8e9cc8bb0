"""Pure builders of the shared model cache: its claim, one CachedModel per base model, and
the download Job that fills the cache with it.

A CachedModel is named after its model (the same location always gives the same name), so
any number of FineTuneJobs on one base create the same object once, and its single
download Job fetches the model once.
"""

from __future__ import annotations

import json
from typing import Any

from maap_api.cachedmodel import KIND, CachedModelSpec
from maap_api.finetunejob import API_VERSION, FineTuneJob
from maap_api.sources import parse_location
from maap_api.stage_config import ModelSource

from maap.podspec import (
    CACHE_MOUNT,
    CONFIG_MOUNT,
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TMP_DIR,
    ModelCacheSettings,
    OperatorSettings,
    cache_volume,
)
from maap.stages import fetch_model_command
from maap.transfer_builders import (
    TRANSFER_BACKOFF_LIMIT,
    credential_env,
    model_location,
    user_error_fails_job,
)

CACHE_LABEL = "maap.dev/cachedmodel"
MODEL_CONFIG = "model.json"
_BASE_LABELS = {
    "app.kubernetes.io/name": "maap",
    "app.kubernetes.io/part-of": "maap",
    "app.kubernetes.io/managed-by": "maap-operator",
}


def cached_model_name(job: FineTuneJob) -> str:
    """The CachedModel of this job's base model (a DNS label, stable per model)."""
    return model_cache_name(job.spec.model)


def model_cache_name(model: ModelSource) -> str:
    location = model_location(model)
    if location is None:
        return f"preset-{model.preset}"[:63].rstrip("-.")
    slug = parse_location(location).slug()
    # The slug ends with a hash of the location: keep it when trimming to 63 characters.
    head, digest = slug[:-11], slug[-10:]
    return f"{head[: 63 - 11].rstrip('-.')}-{digest}"


def cache_labels(name: str) -> dict[str, str]:
    return {**_BASE_LABELS, "app.kubernetes.io/component": "model-cache", CACHE_LABEL: name}


def build_cache_claim(cache: ModelCacheSettings, namespace: str) -> dict[str, Any]:
    """The namespace's cache claim: owned by nothing, it outlives every job."""
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    meta = {
        "name": cache.claim_name,
        "namespace": namespace,
        "labels": {**_BASE_LABELS, "app.kubernetes.io/component": "model-cache"},
    }
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def build_cached_model(job: FineTuneJob) -> dict[str, Any]:
    name = cached_model_name(job)
    spec = CachedModelSpec(model=job.spec.model, s3=job.spec.s3, hub=job.spec.hub)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace or "default",
            "labels": cache_labels(name),
        },
        "spec": spec.to_json_dict(),
    }


def download_job_name(cached_model: str) -> str:
    return f"{cached_model[:54].rstrip('-.')}-download"


def _owned_by(cached_model: dict[str, Any]) -> list[dict[str, Any]]:
    meta = cached_model["metadata"]
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def build_download(
    cached_model: dict[str, Any], settings: OperatorSettings
) -> list[dict[str, Any]]:
    """The ConfigMap with the model's spec, and the Job that downloads it into the cache."""
    assert settings.model_cache is not None
    meta = cached_model["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = CachedModelSpec.model_validate(cached_model.get("spec") or {})
    job_name = download_job_name(name)
    labels = cache_labels(name)
    # Both are named after the Job and owned by the CachedModel (they go with it).
    child_meta = {
        "name": job_name, "namespace": namespace, "labels": labels,
        "ownerReferences": _owned_by(cached_model),
    }  # fmt: skip
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": dict(child_meta),
        "data": {MODEL_CONFIG: json.dumps(spec.to_json_dict(), indent=2, sort_keys=True)},
    }  # fmt: skip
    container = {
        "name": "download",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": fetch_model_command(f"{CONFIG_MOUNT}/{MODEL_CONFIG}"),
        "env": [
            {"name": "MAAP_CACHE_DIR", "value": CACHE_MOUNT},
            {"name": "HF_HOME", "value": f"{TMP_DIR}/huggingface"},
            {"name": "HOME", "value": TMP_DIR},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            *credential_env(spec.s3, spec.hub),
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "model-cache", "mountPath": CACHE_MOUNT},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": job_name}},
            cache_volume(settings.model_cache),
            {"name": "tmp", "emptyDir": {}},
        ],
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "automountServiceAccountToken": False,
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": dict(child_meta),
        "spec": {
            "backoffLimit": TRANSFER_BACKOFF_LIMIT,
            "podFailurePolicy": user_error_fails_job("download"),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }  # fmt: skip
    return [config_map, job]
