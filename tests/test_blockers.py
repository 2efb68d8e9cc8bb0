"""Why a stage stalls: pods, Events and Deployments read into one-line conditions."""

from __future__ import annotations

from typing import Any

from maap.blockers import (
    Blocker,
    creation_blocker,
    deployment_blocker,
    first_blocker,
    one_line,
    pod_blocker,
)
from maap.pipeline import DeploymentState, JobState, Observed, decide

from tests.test_builders import job


def pod(name: str = "demo-train-x", phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase, **status}}


def waiting(reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": "train", "state": {"waiting": {"reason": reason, "message": message}}, **extra}


UNSCHEDULABLE = pod(
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory.\n preemption: not helpful",
        }
    ]
)


def test_unschedulable_pod_names_the_scheduler_message_on_one_line() -> None:
    blocker = pod_blocker(UNSCHEDULABLE)
    assert blocker == Blocker(
        "Unschedulable",
        "pod demo-train-x cannot be scheduled: 0/3 nodes are available: 3 Insufficient "
        "memory. preemption: not helpful",
    )


def test_image_pull_and_crash_loops_are_blockers_but_container_creation_is_not() -> None:
    pull = pod(containerStatuses=[waiting("ImagePullBackOff", 'Back-off pulling "maap:nope"')])
    assert pod_blocker(pull) == Blocker(
        "ImagePullFailed",
        'pod demo-train-x, container train: ImagePullBackOff: Back-off pulling "maap:nope"',
    )
    crash = pod(
        phase="Running",
        containerStatuses=[
            waiting(
                "CrashLoopBackOff",
                lastState={"terminated": {"exitCode": 1, "message": "Traceback\nOSError: nope"}},
            )
        ],
    )
    assert pod_blocker(crash) == Blocker(
        "CrashLoopBackOff",
        "pod demo-train-x, container train: CrashLoopBackOff: last exit code 1: OSError: nope",
    )
    assert pod_blocker(pod(containerStatuses=[waiting("ContainerCreating")])) is None
    assert pod_blocker(pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])) is None
    assert pod_blocker(pod(phase="Failed", containerStatuses=[waiting("ErrImagePull")])) is None
    assert first_blocker([pod(), UNSCHEDULABLE]) == pod_blocker(UNSCHEDULABLE)


def test_the_newest_failed_create_event_explains_a_job_without_pods() -> None:
    def event(reason: str, when: str, message: str, type_: str = "Warning") -> dict[str, Any]:
        return {"type": type_, "reason": reason, "lastTimestamp": when, "message": message}

    events = [
        event("FailedCreate", "2026-12-01T10:00:00Z", "old"),
        event("SuccessfulCreate", "2026-12-01T10:00:05Z", "created", "Normal"),
        event(
            "FailedCreate",
            "2026-12-01T10:00:09Z",
            'Error creating: pods "demo-train-q" is forbidden: violates PodSecurity '
            '"restricted:latest": allowPrivilegeEscalation != false',
        ),
    ]
    blocker = creation_blocker(events)
    assert blocker is not None and blocker.reason == "PodCreationFailed"
    assert blocker.message.startswith('Error creating: pods "demo-train-q" is forbidden')
    assert creation_blocker(events[1:2]) is None


def test_deployment_replica_failure_is_a_blocker() -> None:
    deployment = {
        "status": {
            "conditions": [
                {"type": "Available", "status": "False"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "demo-server-1" is forbidden: exceeded quota: q',
                },
            ]
        }
    }
    assert deployment_blocker(deployment) == Blocker(
        "PodCreationFailed", 'pods "demo-server-1" is forbidden: exceeded quota: q'
    )
    assert deployment_blocker({"status": {}}) is None


def test_one_line_flattens_and_bounds() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 1000)) == 300


def test_stalled_jobs_and_deployments() -> None:
    assert JobState(active=0).stalled
    assert JobState(active=1, ready=0).stalled
    assert not JobState(active=1, ready=1).stalled
    assert not JobState(succeeded=True).stalled
    assert not JobState(suspended=True).stalled
    assert DeploymentState(replicas=2, ready=1).stalled
    assert not DeploymentState(replicas=1, ready=1).stalled


def test_a_blocked_stage_says_why_in_its_condition_and_warns() -> None:
    spec = job()
    blocker = Blocker("Unschedulable", "pod demo-train-x cannot be scheduled: no nodes")
    training = decide(
        spec, Observed(fetch=JobState(succeeded=True), train=JobState(active=1, blocker=blocker))
    )
    assert training.phase == "Pending"
    [condition] = [c for c in training.conditions if c.type == "Training"]
    assert (condition.status, condition.reason, condition.message) == (
        "False",
        "Unschedulable",
        blocker.message,
    )
    assert condition.warning

    done = JobState(succeeded=True)
    exporting = decide(
        spec,
        Observed(
            fetch=JobState(succeeded=True), train=done, export=JobState(active=1, blocker=blocker)
        ),
    )
    assert exporting.phase == "Exporting"
    assert [c.reason for c in exporting.conditions if c.type == "Exported"] == ["Unschedulable"]

    crash = Blocker("CrashLoopBackOff", "pod demo-server-1, container server: CrashLoopBackOff")
    serving = decide(
        spec,
        Observed(
            fetch=JobState(succeeded=True),
            train=done,
            export=done,
            serving=DeploymentState(replicas=1, blocker=crash),
        ),
    )
    [ready] = [c for c in serving.conditions if c.type == "ServingReady"]
    assert (ready.status, ready.reason, ready.warning) == ("False", "CrashLoopBackOff", True)
    # Running again: the ordinary condition, no warning.
    running = decide(
        spec, Observed(fetch=JobState(succeeded=True), train=JobState(active=1, ready=1))
    )
    assert running.phase == "Training"
    assert not any(c.warning for c in running.conditions)
