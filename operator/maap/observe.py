"""What a FineTuneJob's children say, read from the watch caches (maap.watches).

The only API call left here is the list of a Job's Events, made while that Job has no
pod at all (a FailedCreate, e.g. a quota or Pod Security refusal, shows nowhere else).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from maap import blockers
from maap.builders import SERVING_TOKEN_ENV
from maap.objectmeta import Names
from maap.pipeline import CacheState, DeploymentState, JobState, Observed
from maap.watches import Children

# (kind, name) -> that object's Events.
EventLister = Callable[[str, str], list[dict[str, Any]]]


def _terminations(pods: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The `terminated` state of every container of these pods that has ended."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                yield terminated


def failure_message(pods: Iterable[dict[str, Any]]) -> str:
    """The termination message of the most recent failed pod, if it left one."""
    messages = [
        (terminated.get("finishedAt") or "", terminated["message"])
        for terminated in _terminations(pods)
        if terminated.get("exitCode") and (terminated.get("message") or "").strip()
    ]
    if not messages:
        return ""
    messages.sort(key=lambda m: m[0])
    return messages[-1][1].strip().splitlines()[-1][:1000]


def success_report(pods: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON a stage left as its termination message when it succeeded (what it did)."""
    for terminated in _terminations(pods):
        if terminated.get("exitCode") == 0 and terminated.get("message"):
            try:
                report = json.loads(terminated["message"])
            except ValueError:
                continue
            if isinstance(report, dict):
                return report
    return None


def _job_state(seen: Children, name: str, events: EventLister) -> JobState | None:
    raw = seen.jobs.get(name)
    if raw is None:
        return None
    pods = seen.pods_matching({"job-name": name})
    state = JobState.from_job(raw)
    if state.failed:
        return JobState.from_job(raw, failure_message(pods))
    if state.stalled:
        blocker = blockers.first_blocker(pods)
        if blocker is None and state.active == 0 and not pods:
            blocker = blockers.creation_blocker(events("Job", name))
        state = dataclasses.replace(state, blocker=blocker)
    return state


def _cache_state(seen: Children, name: str | None) -> CacheState | None:
    if name is None or name not in seen.cachedmodels:
        return None
    status = seen.cachedmodels[name].get("status") or {}
    return CacheState(name, status.get("phase"), status.get("message") or "")


def observe(
    seen: Children, names: Names, events: EventLister, cached_model: str | None = None
) -> Observed:
    """`cached_model`: the CachedModel the job's base model comes from (None: no cache)."""
    deployment = seen.deployments.get(names.server)
    serving = DeploymentState.from_deployment(deployment) if deployment else None
    if deployment is not None and serving is not None and serving.stalled:
        selector = deployment["spec"]["selector"].get("matchLabels") or {}
        blocker = blockers.deployment_blocker(deployment) or blockers.first_blocker(
            seen.pods_matching(selector)
        )
        serving = dataclasses.replace(serving, blocker=blocker)
    return Observed(
        fetch=_job_state(seen, names.fetch, events),
        cache=_cache_state(seen, cached_model),
        uses_cache=cached_model is not None,
        train=_job_state(seen, names.train, events),
        export=_job_state(seen, names.export, events),
        publish=_job_state(seen, names.publish, events),
        serving=serving,
    )


def served_endpoint(seen: Children, names: Names, namespace: str) -> str | None:
    """The URL the serving Service really exposes (its observed port), if it exists."""
    service = seen.services.get(names.server)
    ports = ((service or {}).get("spec") or {}).get("ports") or []
    if not ports:
        return None
    return f"http://{names.server}.{namespace}.svc:{ports[0]['port']}/v1"


def served_auth_secret(seen: Children, names: Names) -> str | None:
    """The Secret whose token every serving pod requires, once all of them run that spec.

    None while the Deployment has no token env, or while a rollout still has pods of an
    older spec (which may serve without a token).
    """
    deployment = seen.deployments.get(names.server)
    if deployment is None or not DeploymentState.from_deployment(deployment).rolled_out:
        return None
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    for container in containers:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if env.get("name") == SERVING_TOKEN_ENV and ref.get("name"):
                return str(ref["name"])
    return None
