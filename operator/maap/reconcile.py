"""One level-based pass over a FineTuneJob: observe (caches), decide, write children, status.

Whatever woke it (the job's own change, a child's, a timer), the same observation gives
the same writes, and a pass over a job whose children already match writes nothing.
Runs on a worker thread; the handlers serialise passes per job.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from maap_api.finetunejob import FineTuneJob
from maap_api.transfer_results import PublishResult
from pydantic import ValidationError

from maap import children
from maap.cache_builders import cached_model_name, download_job_name
from maap.kube import Kube
from maap.manifest import format_validation_error
from maap.objectmeta import Names
from maap.observe import observe, served_auth_secret, served_endpoint, success_report
from maap.pipeline import CacheState, ConditionUpdate, Stage, decide
from maap.podspec import OUTPUT_DIR, OperatorSettings, claim_name
from maap.status import TERMINAL, StatusWriter
from maap.transfer_builders import uses_model_cache

log = logging.getLogger("maap.operator")


@dataclass
class Memory:
    """What this process already did: create-once children, and the status it wrote last
    (the watch cache may not have caught up with our own last patch)."""

    created: dict[str, set[str]] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def created_for(self, uid: str) -> set[str]:
        with self._lock:
            return self.created.setdefault(uid, set())

    def forget(self, uid: str) -> None:
        with self._lock:
            self.created.pop(uid, None)
            self.status.pop(uid, None)


def parse(body: dict[str, Any]) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    )


def expired(job: FineTuneJob, status: dict[str, Any]) -> bool:
    ttl = job.spec.ttl_seconds_after_finished
    finished = status.get("completionTime")
    if ttl is None or status.get("phase") not in TERMINAL or not finished:
        return False
    finished_at = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - finished_at).total_seconds() >= ttl


def _stages(job: FineTuneJob, create: list[Stage], seen: children.Children) -> list[Stage]:
    """Stages whose children should exist: the new ones, and those already there."""
    names = Names(job.metadata.name)
    present: list[Stage] = []
    for stage, child in (("fetch", names.fetch), ("cache", None), ("train", names.train),
                         ("export", names.export), ("publish", names.publish)):  # fmt: skip
        if stage in create or (child is not None and child in seen.jobs):
            present.append(stage)
    serving_there = names.server in seen.deployments or names.server in seen.services
    if job.spec.serving.enabled and ("serving" in create or serving_there):
        present.append("serving")
    return present


def retry_failed_download(
    k: Kube, job: FineTuneJob, body: dict[str, Any], seen: children.Children, cached_model: str
) -> bool:
    """A job created after its base model's download failed asks for a new try: the failed
    download Job goes, and the CachedModel's controller starts another (a fixed Secret, a
    fixed endpoint). Jobs that saw the failure keep their Failed phase."""
    model = seen.cachedmodels.get(cached_model) or {}
    status = model.get("status") or {}
    failed_at = status.get("lastTransitionTime") or ""
    created_at = body["metadata"].get("creationTimestamp") or ""
    if status.get("phase") != "Failed" or created_at <= failed_at:
        return False
    k.delete_job(job.metadata.namespace or "default", download_job_name(cached_model))
    return True


def published_outputs(seen: children.Children, names: Names) -> dict[str, Any] | None:
    """The URIs the publish stage reported having written (its termination message)."""
    if names.publish not in seen.jobs:
        return None
    report = success_report(seen.pods_matching({"job-name": names.publish}))
    if report is None:
        return None
    try:
        return PublishResult.model_validate(report).to_json_dict()
    except ValidationError:
        return None


def reconcile(
    k: Kube,
    settings: OperatorSettings,
    body: dict[str, Any],
    seen: children.Children,
    memory: Memory,
) -> None:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    writer = StatusWriter(k, body, memory.status.get(uid))
    try:
        job = parse(body)
    except ValidationError as exc:
        # What the CRD schema cannot check: report, do not retry.
        message = format_validation_error(exc)
        writer.write("Failed", [
            ConditionUpdate("Validated", "False", "InvalidSpec", message),
            ConditionUpdate("Failed", "True", "InvalidSpec", message),
        ])  # fmt: skip
        memory.status[uid] = writer.current
        return
    if expired(job, writer.old):
        writer.info("Expired", "ttlSecondsAfterFinished passed; deleting")
        k.delete_finetunejob(namespace, name)
        return

    names = Names(name)
    cached_model = cached_model_name(job) if uses_model_cache(job, settings) else None
    events = lambda kind, n: k.list_events(namespace, kind, n)  # noqa: E731
    observed = observe(seen, names, events, cached_model)
    if cached_model is not None and retry_failed_download(k, job, body, seen, cached_model):
        retry = CacheState(cached_model, "Pending", "retrying the download")
        observed = dataclasses.replace(observed, cache=retry)
    decision = decide(job, observed)
    created = memory.created_for(uid)
    for write in children.plan(
        job, uid, settings, _stages(job, decision.create, seen), seen, created,
        token=secrets.token_urlsafe,
    ):  # fmt: skip
        if write.verb == "apply":
            k.apply(namespace, write.body or {})
        elif write.verb == "create":
            k.ensure(namespace, write.body)
            created.add(write.name)
        else:
            k.delete(namespace, write.kind, write.name)
    for job_name, suspend in children.suspend_patches(job, seen):
        k.patch_job_suspend(namespace, job_name, suspend)

    extra: dict[str, Any] = {
        "artifacts": {"location": f"pvc://{claim_name(job)}{OUTPUT_DIR}"},
        # What is really served, as observed: not what the spec wishes.
        "endpoint": served_endpoint(seen, names, namespace)
        if decision.phase == "Serving"
        else None,
        "authSecret": served_auth_secret(seen, names) if decision.phase == "Serving" else None,
        "outputs": published_outputs(seen, names),
    }
    writer.write(decision.phase, list(decision.conditions), extra)
    memory.status[uid] = writer.current
