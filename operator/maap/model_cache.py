"""The CachedModel controller: one download Job per cached base model, and its status.

Thin like the FineTuneJob handlers: the watches feed the caches (maap.watches), a change
of a CachedModel or of its Job or pods wakes one pass, which creates the download Job if
it is missing and writes the status observed from it. A CachedModel whose status changes
wakes the FineTuneJobs waiting on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from maap_api.cachedmodel import PLURAL as CACHED_MODELS
from maap_api.finetunejob import GROUP, VERSION
from maap_api.stage_config import ModelSource
from maap_api.transfer_results import CachedModelInfo
from maap_api.units import human_size
from pydantic import ValidationError

from maap import blockers, handlers
from maap.cache_builders import CACHE_LABEL, build_download, download_job_name, model_cache_name
from maap.kube import Kube
from maap.observe import failure_message, success_report
from maap.pipeline import JobState, now
from maap.podspec import OperatorSettings
from maap.settings import OperatorConfig

log = logging.getLogger("maap.operator")
_locks: dict[tuple[str, str], asyncio.Lock] = {}


def observed_status(
    job: dict[str, Any] | None, pods: list[dict[str, Any]], claim: str
) -> dict[str, Any]:
    """The CachedModel's status from its download Job and pods (pure)."""
    if job is None:
        return {"phase": "Pending", "message": "creating the download Job", "claim": claim}
    state = JobState.from_job(job, failure_message(pods))
    if state.failed:
        return {"phase": "Failed", "message": state.message or state.reason, "claim": claim}
    if not state.succeeded:
        # A pod that cannot run (an unbound claim, a missing Secret) says why, as jobs do.
        blocker = blockers.first_blocker(pods) if state.stalled else None
        message = f"{blocker.reason}: {blocker.message}" if blocker else "downloading"
        return {"phase": "Downloading", "message": message, "claim": claim}
    ready: dict[str, Any] = {"phase": "Ready", "message": "in the cache", "claim": claim}
    try:
        info = CachedModelInfo.model_validate(success_report(pods) or {})
    except ValidationError:  # no report (or not ours): Ready, without the figures
        return {**ready, "path": None, "revision": None, "files": None, "bytes": None,
                "size": None}  # fmt: skip
    return {**ready, "path": info.path, "revision": info.revision, "files": info.files,
            "bytes": info.bytes, "size": human_size(info.bytes)}  # fmt: skip


def reconcile_cached_model(
    k: Kube,
    settings: OperatorSettings,
    body: dict[str, Any],
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if settings.model_cache is None:
        return  # the cache was switched off: leave what is there alone
    if job is None:
        for child in build_download(body, settings):
            k.ensure(namespace, child)
    status = observed_status(job, pods, settings.model_cache.claim_name)
    old = body.get("status") or {}
    if status["phase"] != old.get("phase"):
        status["lastTransitionTime"] = now()
        post = kopf.warn if status["phase"] == "Failed" else kopf.info
        post(body, reason=status["phase"], message=f"{name}: {status['message']}")
    changed = {key: value for key, value in status.items() if old.get(key) != value}
    if changed:
        k.patch_cached_model_status(namespace, name, changed)


async def wake_cached_model(memo: kopf.Memo, indexes: Mapping[str, Any], key: tuple) -> None:
    namespace, name = key
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        body = next((m for m in indexes["cachedmodels"].get(namespace) or () if
                     m["metadata"]["name"] == name), None)  # fmt: skip
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        job = next((j for j in indexes["cache_jobs"].get(key) or ()
                    if j["metadata"]["name"] == download_job_name(name)), None)  # fmt: skip
        pods = list(indexes["cache_pods"].get(key) or ())
        config: OperatorConfig = memo.config
        await asyncio.get_running_loop().run_in_executor(
            memo.executor, contextvars.copy_context().run,
            reconcile_cached_model, memo.kube, config.workloads, body, job, pods,
        )  # fmt: skip


def _users(indexes: Mapping[str, Any], namespace: str, name: str) -> list[tuple[str, str]]:
    """The FineTuneJobs in `namespace` whose base model is the CachedModel `name`."""
    users = []
    for (ns, job_name), bodies in indexes["finetunejobs"].items():
        if ns != namespace:
            continue
        for body in bodies:
            try:
                model = ModelSource.model_validate((body.get("spec") or {}).get("model") or {})
            except ValueError:
                continue
            if model_cache_name(model) == name:
                users.append((ns, job_name))
    return users


@kopf.on.event(GROUP, VERSION, CACHED_MODELS)
async def on_cached_model(
    namespace: str, name: str, type: str | None, memo: kopf.Memo, **kwargs: Any
) -> None:
    await wake_cached_model(memo, kwargs, (namespace, name))
    if type == "DELETED":
        _locks.pop((namespace, name), None)
    # A status change is what the jobs on this base model wait for.
    for key in _users(kwargs, namespace, name):
        await handlers.wake(memo, kwargs, key)


@kopf.on.event("batch", "v1", "jobs", labels={CACHE_LABEL: kopf.PRESENT}, id="download-jobs")
@kopf.on.event("v1", "pods", labels={CACHE_LABEL: kopf.PRESENT}, id="download-pods")
async def on_download_child(
    namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **kwargs: Any
) -> None:
    await wake_cached_model(memo, kwargs, (namespace, labels[CACHE_LABEL]))
