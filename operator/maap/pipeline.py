"""The stage pipeline as a pure function: what the children look like -> what to do next.

Pending -> Fetching -> Training -> Exporting -> Publishing (with spec.output) -> Serving
(or Succeeded when serving is off), Failed with a reason. The handler observes the child
objects, calls `decide`, creates what it says, and writes the status it returns.
Level-based: calling it again with the same observation gives the same answer, so
restarts and repeated timers are harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from maap_api.finetunejob import FineTuneJob

from maap.blockers import Blocker

Stage = Literal["fetch", "cache", "train", "export", "publish", "serving"]


@dataclass(frozen=True)
class JobState:
    """What matters of a batch/v1 Job."""

    succeeded: bool = False
    failed: bool = False
    suspended: bool = False
    active: int = 0
    ready: int = 0
    reason: str = ""
    message: str = ""
    # Why its pods do not run (observed only while they do not: see `stalled`).
    blocker: Blocker | None = None

    @property
    def stalled(self) -> bool:
        """Unfinished, and some pod is missing or not running yet."""
        return not (self.succeeded or self.failed or self.suspended) and (
            self.active == 0 or self.ready < self.active
        )

    @classmethod
    def from_job(cls, job: dict[str, Any], failure_message: str = "") -> JobState:
        status = job.get("status") or {}
        conditions = {
            c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"
        }
        failed = conditions.get("Failed")
        return cls(
            succeeded="Complete" in conditions,
            failed=failed is not None,
            suspended=bool((job.get("spec") or {}).get("suspend")),
            active=int(status.get("active") or 0),
            ready=int(status.get("ready") or 0),
            reason=(failed or {}).get("reason", ""),
            message=failure_message or (failed or {}).get("message", ""),
        )


@dataclass(frozen=True)
class DeploymentState:
    replicas: int = 0
    ready: int = 0
    # Replicas that run the newest pod template, and whether the Deployment controller has
    # seen the newest spec at all: together, whether a rollout is still going on.
    updated: int = 0
    current_generation: bool = True
    blocker: Blocker | None = None

    @property
    def stalled(self) -> bool:
        return self.ready < self.replicas

    @property
    def rolled_out(self) -> bool:
        """Every replica runs the newest spec (no pod of an older one is left serving)."""
        return self.current_generation and self.updated >= self.replicas

    @classmethod
    def from_deployment(cls, deployment: dict[str, Any]) -> DeploymentState:
        status = deployment.get("status") or {}
        meta = deployment.get("metadata") or {}
        total = int(status.get("replicas") or 0)
        updated = int(status.get("updatedReplicas") or 0)
        replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        return cls(
            replicas=replicas,
            ready=int(status.get("readyReplicas") or 0),
            # Old pods still counted in status.replicas mean the rollout is not over.
            updated=updated if total <= replicas else min(updated, replicas - 1),
            current_generation=int(status.get("observedGeneration") or 0)
            >= int(meta.get("generation") or 0),
        )


@dataclass(frozen=True)
class CacheState:
    """The job's CachedModel, as its status says (shared with other jobs on that base)."""

    name: str
    phase: str | None = None
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"


@dataclass(frozen=True)
class Observed:
    fetch: JobState | None = None
    # None: the job's base model is not in a shared cache (or its CachedModel is not seen).
    cache: CacheState | None = None
    uses_cache: bool = False
    train: JobState | None = None
    export: JobState | None = None
    publish: JobState | None = None
    serving: DeploymentState | None = None


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    # Something a user must act on: also posted as a Warning Event when it appears.
    warning: bool = False


def blocked(type_: str, blocker: Blocker) -> ConditionUpdate:
    return ConditionUpdate(type_, "False", blocker.reason, blocker.message, warning=True)


@dataclass
class Decision:
    phase: str
    create: list[Stage] = field(default_factory=list)
    conditions: list[ConditionUpdate] = field(default_factory=list)


@dataclass(frozen=True)
class StageJob:
    """How one stage Job shows in status: its condition, phases and messages."""

    stage: Stage
    condition: str  # Fetched, Training, Exported, Published
    noun: str  # "the <noun> Job", "the <noun> pod"
    phase: str  # while it runs
    running: ConditionUpdate
    failed_reason: str
    # fetch and train: Pending until their pods run (blocked, or none yet).
    pending_until_running: bool = False


def _stage_job(
    view: StageJob,
    state: JobState | None,
    out: Out,
    done: list[ConditionUpdate],
    create: list[Stage] | None = None,
) -> Decision | None:
    """The Decision while a stage Job is missing, failed, suspended, blocked or running;
    None once it has succeeded."""
    if state is None:
        creating = ConditionUpdate(
            view.condition, "False", "Creating", f"creating the {view.noun} Job"
        )
        phase = "Pending" if view.pending_until_running else view.phase
        return out(phase, *done, creating, create=create or [view.stage])
    if state.failed:
        message = state.message or state.reason or f"the {view.noun} Job failed"
        return out(
            "Failed",
            *done,
            ConditionUpdate(view.condition, "False", "Failed", message),
            ConditionUpdate("Failed", "True", view.failed_reason, message),
        )
    if state.succeeded:
        return None
    if state.suspended:
        suspended = ConditionUpdate(view.condition, "False", "Suspended", "spec.suspend is true")
        return out("Suspended", *done, suspended)
    waiting_phase = "Pending" if view.pending_until_running else view.phase
    if state.blocker is not None:
        return out(waiting_phase, *done, blocked(view.condition, state.blocker))
    if view.pending_until_running and state.active == 0:
        waiting = f"waiting for the {view.noun} pod"
        return out("Pending", *done, ConditionUpdate(view.condition, "False", "Waiting", waiting))
    return out(view.phase, *done, view.running)


FETCH = StageJob(
    "fetch", "Fetched", "fetch", "Fetching",
    ConditionUpdate("Fetched", "False", "Running", "fetching and validating the data"),
    "FetchFailed", pending_until_running=True,
)  # fmt: skip
TRAIN = StageJob(
    "train", "Training", "training", "Training",
    ConditionUpdate("Training", "True", "Running", "training is running"),
    "TrainingFailed", pending_until_running=True,
)  # fmt: skip


def decide(job: FineTuneJob, seen: Observed) -> Decision:
    spec = job.spec
    conditions = [ConditionUpdate("Validated", "True", "SpecValid", "the spec is valid")]

    def out(phase: str, *updates: ConditionUpdate, create: list[Stage] | None = None) -> Decision:
        return Decision(phase, create or [], conditions + list(updates))

    fetched = _fetching(seen, out)
    if isinstance(fetched, Decision):
        return fetched
    conditions.append(fetched)
    if (step := _stage_job(TRAIN, seen.train, out, [])) is not None:
        return step
    trained = [
        ConditionUpdate("Training", "False", "Completed", "training finished"),
        ConditionUpdate("Trained", "True", "Completed", "the fine-tuned model is saved"),
    ]
    if not spec.export.enabled:
        return _published(job, seen, out, trained) or out("Succeeded", *trained)
    export = StageJob(
        "export", "Exported", "export", "Exporting",
        ConditionUpdate("Exported", "False", "Running", f"exporting ONNX {spec.export.precision}"),
        "ExportFailed",
    )  # fmt: skip
    if (step := _stage_job(export, seen.export, out, trained)) is not None:
        return step
    exported = [
        *trained,
        ConditionUpdate("Exported", "True", "Completed", f"ONNX {spec.export.precision} exported"),
    ]
    if (waiting := _published(job, seen, out, exported)) is not None:
        return waiting
    if spec.output.enabled:
        exported.append(ConditionUpdate("Published", "True", "Completed", _published_to(job)))
    if not spec.serving.enabled:
        return out("Succeeded", *exported)
    if seen.serving is None:
        return out(
            "Serving",
            *exported,
            ConditionUpdate("ServingReady", "False", "Creating", "creating the server"),
            create=["serving"],
        )
    serving = seen.serving
    if serving.replicas == 0:
        ready = ConditionUpdate("ServingReady", "False", "ScaledToZero", "serving.replicas is 0")
    elif serving.ready >= 1 and not serving.rolled_out:
        ready = ConditionUpdate(
            "ServingReady",
            "True",
            "RollingOut",
            f"{serving.ready}/{serving.replicas} replicas ready; rolling out the new spec "
            f"({serving.updated}/{serving.replicas} updated)",
        )
    elif serving.ready >= 1:
        ready = ConditionUpdate(
            "ServingReady", "True", "Ready", f"{serving.ready}/{serving.replicas} replicas ready"
        )
    elif serving.blocker is not None:
        ready = blocked("ServingReady", serving.blocker)
    else:
        ready = ConditionUpdate(
            "ServingReady", "False", "Starting", f"0/{serving.replicas} replicas ready"
        )
    return out("Serving", *exported, ready)


Out = Callable[..., Decision]


def _fetching(seen: Observed, out: Out) -> Decision | ConditionUpdate:
    """The fetch Job and, with a shared cache, the CachedModel: a Decision while either is
    not done (or failed), else the Fetched condition to carry on with."""
    cache = seen.cache
    if cache is not None and cache.failed and seen.fetch is not None and not seen.fetch.failed:
        message = f"base model (CachedModel {cache.name}): {cache.message or 'download failed'}"
        return out(
            "Failed",
            ConditionUpdate("Fetched", "False", "ModelFetchFailed", message),
            ConditionUpdate("Failed", "True", "ModelFetchFailed", message),
        )
    create: list[Stage] = ["fetch", "cache"] if seen.uses_cache else ["fetch"]
    if (step := _stage_job(FETCH, seen.fetch, out, [], create)) is not None:
        return step
    if seen.uses_cache and (cache is None or not cache.ready):
        phase = cache.phase if cache is not None and cache.phase else "Pending"
        name = cache.name if cache is not None else "the base model"
        detail = f": {cache.message}" if cache is not None and cache.message else ""
        return out(
            "Fetching",
            ConditionUpdate(
                "Fetched", "False", "WaitingForModel", f"CachedModel {name} is {phase}{detail}"
            ),
            create=["cache"],
        )
    return ConditionUpdate("Fetched", "True", "Completed", "data fetched and validated")


def _published_to(job: FineTuneJob) -> str:
    return f"models copied to {job.spec.output.path}"


def _published(
    job: FineTuneJob, seen: Observed, out: Out, done: list[ConditionUpdate]
) -> Decision | None:
    """With spec.output: a Decision until the publish Job has succeeded, else None."""
    if not job.spec.output.enabled:
        return None
    view = StageJob(
        "publish", "Published", "publish", "Publishing",
        ConditionUpdate("Published", "False", "Running", f"copying to {job.spec.output.path}"),
        "PublishFailed",
    )  # fmt: skip
    if (step := _stage_job(view, seen.publish, out, done)) is not None:
        return step
    if not job.spec.serving.enabled or not job.spec.export.enabled:
        return out(
            "Succeeded",
            *done,
            ConditionUpdate("Published", "True", "Completed", _published_to(job)),
        )
    return None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    current: list[dict[str, Any]], updates: list[ConditionUpdate], generation: int | None
) -> list[dict[str, Any]]:
    """Apply updates; lastTransitionTime moves only when a condition's status changes."""
    by_type = {c["type"]: dict(c) for c in current}
    stamp = now()
    for update in updates:
        previous = by_type.get(update.type)
        changed = previous is None or previous.get("status") != update.status
        by_type[update.type] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": stamp if changed else previous["lastTransitionTime"],
            "observedGeneration": generation,
        }
    return list(by_type.values())
