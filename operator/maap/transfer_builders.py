"""Pure builders of the Jobs that move data: fetch (before training), publish (after).

Credentials reach these pods only: the S3 and hub Secrets the spec names become the
environment variables boto3 and huggingface_hub read (the Secret keys are those names).
"""

from __future__ import annotations

from typing import Any

from maap_api.finetunejob import FineTuneJob
from maap_api.presets import PRESETS
from maap_api.sources import is_uri, preset_location
from maap_api.stage_config import ModelSource
from maap_api.storage_access import (
    HUB_SECRET_KEY,
    S3_OPTIONAL_SECRET_KEYS,
    S3_SECRET_KEYS,
    HubAccess,
    S3Access,
)

from maap.objectmeta import Names, object_metadata, pod_metadata
from maap.podspec import (
    CONFIG_PATH,
    EXIT_USER_ERROR,
    OperatorSettings,
    exit_code_rule,
    progress_env,
    stage_container,
    stage_pod_spec,
)
from maap.stages import fetch_command, publish_command

# A download that fails for a reason retrying can cure (a reset connection, a 503) gets
# these retries; a user error (exit 2: 403, 404, checksum, a bad row) fails at once.
TRANSFER_BACKOFF_LIMIT = 3


def credential_env(s3: S3Access, hub: HubAccess) -> list[dict[str, Any]]:
    """The Secrets' keys as the environment variables of the clients that read them."""

    def key(secret: str, name: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": secret, "key": name}
        if optional:
            ref["optional"] = True
        return {"name": name, "valueFrom": {"secretKeyRef": ref}}

    env = []
    if s3.secret_name:
        env += [key(s3.secret_name, name) for name in S3_SECRET_KEYS]
        env += [key(s3.secret_name, name, optional=True) for name in S3_OPTIONAL_SECRET_KEYS]
    if hub.secret_name:
        env.append(key(hub.secret_name, HUB_SECRET_KEY))
    return env


def model_location(model: ModelSource) -> str | None:
    """The base model's remote location (a URI, or a hub preset's), else None."""
    if model.path is not None:
        return model.path if is_uri(model.path) else None
    hub_id = PRESETS[model.preset or ""].hub_id
    return preset_location(hub_id) if hub_id else None


def uses_model_cache(job: FineTuneJob, settings: OperatorSettings) -> bool:
    """With a shared cache, every base model but a path on the job's own volume is in it."""
    model = job.spec.model
    return settings.model_cache is not None and (model.path is None or is_uri(model.path))


def user_error_fails_job(container: str) -> dict[str, Any]:
    return {"rules": [exit_code_rule(container, "FailJob", EXIT_USER_ERROR)]}


def _transfer_job(
    job: FineTuneJob, uid: str, settings: OperatorSettings, stage: str, name: str, command: list
) -> dict[str, Any]:
    # The final report of publish carries the published locations (status.artifacts).
    env = credential_env(job.spec.s3, job.spec.hub) + progress_env(job, settings)
    container = stage_container(job, settings, stage, env, with_gpus=False, command=command)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_metadata(job, uid, name, stage),
        "spec": {
            "backoffLimit": TRANSFER_BACKOFF_LIMIT,
            "podFailurePolicy": user_error_fails_job(stage),
            "template": {
                "metadata": pod_metadata(job, stage),
                "spec": stage_pod_spec(job, settings, container),
            },
        },
    }


def build_fetch_job(job: FineTuneJob, uid: str, settings: OperatorSettings) -> dict[str, Any]:
    """Fetch and validate the data set (and the base model, when there is no shared cache:
    with one, the CachedModel's download Job brings it)."""
    command = fetch_command(CONFIG_PATH, data_only=uses_model_cache(job, settings))
    fetch = _transfer_job(job, uid, settings, "fetch", Names(job.metadata.name).fetch, command)
    # Nothing of a suspended job runs (a queue such as Kueue admits jobs by lifting it).
    fetch["spec"]["suspend"] = job.spec.suspend
    return fetch


def build_publish_job(job: FineTuneJob, uid: str, settings: OperatorSettings) -> dict[str, Any]:
    command = publish_command(CONFIG_PATH)
    name = Names(job.metadata.name).publish
    return _transfer_job(job, uid, settings, "publish", name, command)
