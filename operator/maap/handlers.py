"""Kopf handlers: thin. Read the FineTuneJob and its children, decide, apply, write status.

Creation, resume after an operator restart, spec updates and a periodic timer all run
the same level-based `reconcile`, so whatever woke it up, the result is the same and
nothing is created twice (creation is get-or-create; 409 Conflict is success).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from maap import blockers, builders, metrics
from maap.api import GROUP, PLURAL, VERSION, FineTuneJob
from maap.builders import OUTPUT_DIR, Names, OperatorSettings
from maap.kube import Kube, load_config
from maap.manifest import format_validation_error
from maap.pipeline import (
    ConditionUpdate,
    DeploymentState,
    JobState,
    Observed,
    decide,
    merge_conditions,
    now,
)
from maap.progress_api import start_progress_server

log = logging.getLogger("maap.operator")

RECONCILE_INTERVAL = float(os.environ.get("MAAP_RECONCILE_INTERVAL", "10"))
SETTINGS = OperatorSettings(
    trainer_image=os.environ.get("MAAP_TRAINER_IMAGE", OperatorSettings.trainer_image),
    image_pull_policy=os.environ.get("MAAP_IMAGE_PULL_POLICY", OperatorSettings.image_pull_policy),
    service_account=os.environ.get("MAAP_WORKLOAD_SERVICE_ACCOUNT") or None,
    progress_url=os.environ.get("MAAP_PROGRESS_URL") or None,
)
TERMINAL = {"Succeeded", "Failed"}
_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        load_config()
        _kube = Kube()
    return _kube


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping under our own prefix, out of `status`.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="maap.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="maap.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "maap.dev/finalizer"
    settings.posting.level = logging.INFO
    # A FineTuneJob is only removed once its (synchronous) timer has exited; when the
    # timer is mid-run at deletion, kopf re-checks after this many seconds (default 60).
    settings.background.cancellation_polling = 2
    # Handlers are synchronous and wait on the API server: threads, not CPU, bound them.
    settings.execution.max_workers = int(os.environ.get("MAAP_MAX_WORKERS", "40"))
    k = kube()
    metrics.start_server(int(os.environ.get("MAAP_METRICS_PORT", "9090")))
    progress_port = int(os.environ.get("MAAP_PROGRESS_PORT", "8081"))
    if progress_port:
        memo.progress_server = await start_progress_server(k.api, progress_port)


@kopf.on.cleanup()
async def stop_servers(memo: kopf.Memo, **_: Any) -> None:
    runner = memo.get("progress_server")
    if runner is not None:
        await runner.cleanup()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile(body, patch)


# The first tick waits one interval: on.create has just reconciled the new object.
@kopf.timer(
    GROUP, VERSION, PLURAL,
    interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL, sharp=False,
)  # fmt: skip
def on_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile(body, patch)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    # Children go with the FineTuneJob through ownerReferences; only our gauges remain.
    metrics.forget(body["metadata"].get("namespace", ""), body["metadata"]["name"])


def reconcile(body: kopf.Body, patch: kopf.Patch) -> None:
    started = time.monotonic()
    try:
        _reconcile(body, patch)
    except Exception:
        metrics.RECONCILE_ERRORS.inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


def _reconcile(body: kopf.Body, patch: kopf.Patch) -> None:
    meta = body["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    generation = meta.get("generation")
    old_status: dict[str, Any] = dict(body.get("status") or {})
    try:
        job = FineTuneJob.model_validate(
            {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        )
    except ValidationError as exc:
        # What the CRD schema cannot check (e.g. cross-field rules): report, do not retry.
        message = format_validation_error(exc)
        _write_status(body, patch, old_status, "Failed", [
            _condition("Validated", "False", "InvalidSpec", message),
            _condition("Failed", "True", "InvalidSpec", message),
        ], generation)  # fmt: skip
        return

    k = kube()
    names = Names(job.metadata.name)
    if _expired(job, old_status):
        kopf.info(body, reason="Expired", message="ttlSecondsAfterFinished passed; deleting")
        k.delete_finetunejob(namespace, job.metadata.name)
        return
    # A job with no phase yet has no children worth reading: go straight to creating
    # them (a child that does exist answers 409, and the next reconcile observes it).
    seen = observe(k, namespace, names) if old_status.get("phase") else Observed()
    decision = decide(job, seen)
    for stage in decision.create:
        if stage == "train":
            # Everything the training pod mounts or reads exists before its Job does.
            k.ensure(namespace, builders.build_config_map(job, uid))
            k.ensure(namespace, builders.build_pvc(job, uid))
            k.ensure(namespace, builders.build_headless_service(job, uid))
            if SETTINGS.progress_url:
                # The token only matters the first time: a later call gets 409, keeps it.
                token = secrets.token_urlsafe(24)
                k.ensure(namespace, builders.build_progress_secret(job, uid, token))
            k.ensure(namespace, builders.build_training_job(job, uid, SETTINGS))
        elif stage == "export":
            k.ensure(namespace, builders.build_export_job(job, uid, SETTINGS))
        elif stage == "serving":
            token = secrets.token_urlsafe(32)
            k.ensure(namespace, builders.build_serving_auth_secret(job, uid, token))
            k.ensure(namespace, builders.build_serving_deployment(job, uid, SETTINGS))
            k.ensure(namespace, builders.build_serving_service(job, uid))

    # Spec changes that act on existing children.
    if seen.train and not seen.train.succeeded and seen.train.suspended != job.spec.suspend:
        k.patch_job_suspend(namespace, names.train, job.spec.suspend)
    if seen.serving and seen.serving.replicas != job.spec.serving.replicas:
        k.scale_deployment(namespace, names.server, job.spec.serving.replicas)

    extra: dict[str, Any] = {
        "artifacts": {"location": f"pvc://{builders.claim_name(job)}{OUTPUT_DIR}"},
    }
    if decision.phase == "Serving":
        extra["endpoint"] = builders.service_endpoint(job)
        if auth_secret := builders.serving_auth_secret_name(job):
            extra["authSecret"] = auth_secret
    conditions = list(decision.conditions)
    _write_status(body, patch, old_status, decision.phase, conditions, generation, extra)


def _expired(job: FineTuneJob, status: dict[str, Any]) -> bool:
    ttl = job.spec.ttl_seconds_after_finished
    finished = status.get("completionTime")
    if ttl is None or status.get("phase") not in TERMINAL or not finished:
        return False
    finished_at = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - finished_at).total_seconds() >= ttl


def observe(k: Kube, namespace: str, names: Names) -> Observed:
    """The children's state; their pods and Events are read only while a stage stalls."""

    def job_state(name: str) -> JobState | None:
        raw = k.read_job(namespace, name)
        if raw is None:
            return None
        state = JobState.from_job(raw)
        if state.failed:
            return JobState.from_job(raw, k.failure_message(namespace, name))
        if state.stalled:
            blocker = blockers.first_blocker(k.list_pods(namespace, f"job-name={name}"))
            if blocker is None and state.active == 0:
                blocker = blockers.creation_blocker(k.list_events(namespace, "Job", name))
            state = dataclasses.replace(state, blocker=blocker)
        return state

    deployment = k.read_deployment(namespace, names.server)
    serving = DeploymentState.from_deployment(deployment) if deployment else None
    if deployment is not None and serving is not None and serving.stalled:
        blocker = blockers.deployment_blocker(deployment) or blockers.first_blocker(
            k.list_pods(namespace, builders.selector(deployment))
        )
        serving = dataclasses.replace(serving, blocker=blocker)
    return Observed(train=job_state(names.train), export=job_state(names.export), serving=serving)


def _condition(type_: str, status: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(type_, status, reason, message)  # type: ignore[arg-type]


def _write_status(
    body: kopf.Body,
    patch: kopf.Patch,
    old: dict[str, Any],
    phase: str,
    updates: list[ConditionUpdate],
    generation: int | None,
    extra: dict[str, Any] | None = None,
) -> None:
    conditions = merge_conditions(list(old.get("conditions") or []), updates, generation)
    new: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conditions,
        **(extra or {}),
    }
    if not old.get("startTime"):
        new["startTime"] = now()
    if phase in TERMINAL and not old.get("completionTime"):
        new["completionTime"] = now()
    changed = {key: value for key, value in new.items() if old.get(key) != value}
    # Rewriting identical conditions would only bump timestamps: compare without them.
    if _same_conditions(old.get("conditions") or [], conditions):
        changed.pop("conditions", None)
    if changed:
        patch.status.update(changed)
    meta = body["metadata"]
    metrics.record_phase(meta["namespace"], meta["name"], phase)
    previous = {c["type"]: c for c in old.get("conditions") or []}
    for update in updates:
        before = previous.get(update.type) or {}
        if update.warning and (
            before.get("reason"),
            before.get("message"),
        ) != (update.reason, update.message):
            kopf.warn(body, reason=update.reason, message=update.message)
    if old.get("phase") != phase:
        failed = next((c for c in conditions if c["type"] == "Failed"), None)
        if phase == "Failed" and failed:
            kopf.warn(body, reason=failed["reason"], message=failed["message"])
        else:
            kopf.info(body, reason=phase, message=_phase_message(phase, conditions))


def _same_conditions(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def strip(items: list[dict[str, Any]]) -> list[tuple]:
        return sorted((c["type"], c["status"], c["reason"], c.get("message", "")) for c in items)

    return strip(a) == strip(b)


def _phase_message(phase: str, conditions: list[dict[str, Any]]) -> str:
    latest = max(conditions, key=lambda c: c["lastTransitionTime"], default=None)
    return f"{phase}: {latest['message']}" if latest else phase
