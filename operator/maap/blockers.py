"""Why a stage's pods make no progress, in one line, from what the API shows.

A training Job whose pods are forbidden by Pod Security, a pod no node can take, an image
that cannot be pulled, a claim that does not bind, a server that crash-loops: none of
these fail the Job or the Deployment, so without this the FineTuneJob would sit in
Pending or Serving with nothing saying why. Pure functions over plain JSON objects
(pods, Events, a Deployment), so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 300

# Container waiting reasons that mean "stuck until someone changes something" (the
# transient ones, ContainerCreating and PodInitializing, are progress).
STUCK_WAITING = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "ErrImageNeverPull": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerConfigError",
    "CreateContainerError": "ContainerConfigError",
    "RunContainerError": "ContainerStartFailed",
    "CrashLoopBackOff": "CrashLoopBackOff",
}


@dataclass(frozen=True)
class Blocker:
    """A reason (CamelCase, for the condition) and a one-line message naming the pod."""

    reason: str
    message: str


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def pod_blocker(pod: dict[str, Any]) -> Blocker | None:
    """What keeps this pod from running, or None if it runs or is on its way."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            why = condition.get("message") or "no node fits its requests and placement"
            return Blocker("Unschedulable", one_line(f"pod {name} cannot be scheduled: {why}"))
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason not in STUCK_WAITING:
            continue
        detail = waiting.get("message") or _last_exit(container)
        text = f"pod {name}, container {container.get('name', '?')}: {reason}"
        return Blocker(STUCK_WAITING[reason], one_line(f"{text}: {detail}" if detail else text))
    return None


def _last_exit(container: dict[str, Any]) -> str:
    terminated = (container.get("lastState") or {}).get("terminated") or {}
    if not terminated:
        return ""
    message = (terminated.get("message") or "").strip()
    last = message.splitlines()[-1] if message else ""
    code = f"last exit code {terminated.get('exitCode')}"
    return f"{code}: {last}" if last else code


def first_blocker(pods: Iterable[dict[str, Any]]) -> Blocker | None:
    for pod in pods:
        blocker = pod_blocker(pod)
        if blocker is not None:
            return blocker
    return None


def creation_blocker(events: Iterable[dict[str, Any]]) -> Blocker | None:
    """The newest FailedCreate warning of a Job's controller (e.g. Pod Security refused
    the pod, a quota is exhausted): the Job itself shows nothing of it."""
    failed = [e for e in events if e.get("type") == "Warning" and e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    newest = max(failed, key=_event_time)
    message = newest.get("message") or newest.get("note") or "pod creation failed"
    return Blocker("PodCreationFailed", one_line(message))


def _event_time(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def deployment_blocker(deployment: dict[str, Any]) -> Blocker | None:
    """The Deployment's ReplicaFailure condition: its ReplicaSet cannot create pods."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            message = condition.get("message") or condition.get("reason") or "cannot create pods"
            return Blocker("PodCreationFailed", one_line(message))
    return None
