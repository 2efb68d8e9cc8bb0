"""Which child writes a reconcile makes, and what it reads from the caches: no cluster."""

from __future__ import annotations

import copy
from typing import Any

from maap import builders
from maap.children import covers, plan, suspend_patches
from maap.manifest import parse_manifest
from maap.objectmeta import Names
from maap.observe import failure_message, observe, served_auth_secret, served_endpoint
from maap.podspec import OperatorSettings
from maap.watches import Children

UID = "uid-1"
SETTINGS = OperatorSettings(trainer_image="maap-trainer:test", progress_url="http://op:8081")


def job(**spec: Any):
    return parse_manifest({
        "apiVersion": "maap.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {"model": {"preset": "smollm2-135m-instruct"},
                 "dataset": {"path": "data/train.jsonl"}, **spec},
    })  # fmt: skip


def token(n: int) -> str:
    return "t" * n


def as_stored(body: dict[str, Any]) -> dict[str, Any]:
    """Roughly what the API server returns: the body plus defaults and status."""
    out = copy.deepcopy(body)
    out["metadata"]["resourceVersion"] = "7"
    out["metadata"]["generation"] = 1
    out["status"] = {"observedGeneration": 1}
    if out["kind"] == "Service":
        for port in out["spec"]["ports"]:
            port["protocol"] = "TCP"
        out["spec"]["clusterIP"] = out["spec"].get("clusterIP", "10.0.0.9")
    return out


def test_covers_ignores_server_defaults_but_not_changes() -> None:
    desired = {"spec": {"ports": [{"name": "http", "port": 8000}], "replicas": 1,
                        "resources": {"cpu": 4}}}  # fmt: skip
    observed = {"spec": {"ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
                         "replicas": 1, "resources": {"cpu": "4"}, "x": 1}}  # fmt: skip
    assert covers(observed, desired)
    observed["spec"]["ports"][0]["port"] = 9000
    assert not covers(observed, desired)
    assert not covers({"spec": {"ports": []}}, desired)
    assert not covers(None, desired)


def test_a_new_job_creates_the_train_stage_in_mount_order() -> None:
    writes = plan(job(), UID, SETTINGS, ["train"], Children(), set(), token)
    assert [(w.verb, w.kind) for w in writes] == [
        ("apply", "ConfigMap"),
        ("create", "PersistentVolumeClaim"),
        ("create", "Secret"),
        ("create", "Job"),
    ]  # one node: no headless Service


def test_the_progress_secret_comes_before_the_first_stage_pod_and_once() -> None:
    """Every stage pod (fetch, train, export, publish) reads its progress token from the
    Secret: a pod created before it fails with CreateContainerConfigError."""
    writes = plan(job(), UID, SETTINGS, ["fetch"], Children(), set(), token)
    assert [(w.verb, w.kind, w.name) for w in writes] == [
        ("apply", "ConfigMap", "demo-config"),
        ("create", "PersistentVolumeClaim", "demo-artifacts"),
        ("create", "Secret", "demo-progress"),
        ("create", "Job", "demo-fetch"),
    ]
    both = plan(job(), UID, SETTINGS, ["fetch", "train"], Children(), set(), token)
    assert [w.name for w in both if w.kind == "Secret"] == ["demo-progress"]
    assert [w.name for w in both if w.verb == "create"].count("demo-artifacts") == 1


def test_children_that_match_their_builders_cost_no_writes() -> None:
    j = job(serving={"auth": {"enabled": True}})
    bodies = [
        builders.build_config_map(j, UID),
        builders.build_serving_deployment(j, UID, SETTINGS),
        builders.build_serving_service(j, UID),
        builders.build_training_job(j, UID, SETTINGS),
        builders.build_export_job(j, UID, SETTINGS),
    ]
    seen = Children(
        jobs={b["metadata"]["name"]: as_stored(b) for b in bodies if b["kind"] == "Job"},
        deployments={bodies[1]["metadata"]["name"]: as_stored(bodies[1])},
        services={bodies[2]["metadata"]["name"]: as_stored(bodies[2])},
        configmaps={bodies[0]["metadata"]["name"]: as_stored(bodies[0])},
    )
    created = {"demo-artifacts", "demo-progress", "demo-serving-auth"}
    assert plan(j, UID, SETTINGS, ["train", "export", "serving"], seen, created, token) == []

    # The spec moves on: exactly the children it changes are applied again.
    changed = job(serving={"auth": {"enabled": True}, "port": 9000})
    writes = plan(changed, UID, SETTINGS, ["train", "export", "serving"], seen, created, token)
    assert sorted((w.verb, w.kind) for w in writes) == [
        ("apply", "ConfigMap"),  # config.json: serving.port
        ("apply", "Deployment"),
        ("apply", "Service"),
    ]


def test_serving_switched_off_deletes_the_server() -> None:
    j = job()
    server = builders.build_serving_deployment(j, UID, SETTINGS)
    seen = Children(deployments={"demo-server": as_stored(server)})
    writes = plan(job(serving={"enabled": False}), UID, SETTINGS, [], seen, set(), token)
    assert [(w.verb, w.kind, w.name) for w in writes] == [("delete", "Deployment", "demo-server")]


def test_suspend_is_patched_only_on_unfinished_jobs_that_differ() -> None:
    done = {"conditions": [{"type": "Complete", "status": "True"}]}
    fetch = {"spec": {"suspend": True}, "status": {}}
    train = {"spec": {"suspend": False}, "status": {}}
    seen = Children(jobs={"demo-fetch": fetch, "demo-train": train})
    assert suspend_patches(job(suspend=True), seen) == [("demo-train", True)]
    assert suspend_patches(job(), seen) == [("demo-fetch", False)]
    fetch["status"] = train["status"] = done
    assert suspend_patches(job(suspend=True), seen) == []
    assert suspend_patches(job(), Children()) == []


def _deployment(auth: bool, updated: int, replicas: int = 1) -> dict[str, Any]:
    body = as_stored(
        builders.build_serving_deployment(
            job(serving={"auth": {"enabled": auth}, "replicas": replicas}), UID, SETTINGS
        )
    )
    body["status"] = {
        "observedGeneration": 1, "replicas": replicas, "updatedReplicas": updated,
        "readyReplicas": replicas,
    }  # fmt: skip
    return body


def test_status_names_the_auth_secret_only_once_every_pod_requires_it() -> None:
    names = Names("demo")
    rolling = Children(deployments={"demo-server": _deployment(True, updated=1, replicas=2)})
    assert served_auth_secret(rolling, names) is None
    done = Children(deployments={"demo-server": _deployment(True, updated=1)})
    assert served_auth_secret(done, names) == "demo-serving-auth"
    assert served_auth_secret(Children(deployments={"demo-server": _deployment(False, 1)}),
                              names) is None  # fmt: skip


def test_endpoint_is_the_observed_service_port() -> None:
    names = Names("demo")
    service = as_stored(builders.build_serving_service(job(), UID))
    service["spec"]["ports"][0]["port"] = 9100
    seen = Children(services={"demo-server": service})
    assert served_endpoint(seen, names, "team-a") == "http://demo-server.team-a.svc:9100/v1"
    assert served_endpoint(Children(), names, "team-a") is None


def test_observe_reads_pods_from_the_cache_and_lists_events_only_without_pods() -> None:
    calls: list[tuple[str, str]] = []

    def events(kind: str, name: str) -> list[dict[str, Any]]:
        calls.append((kind, name))
        return []

    failed_pod = {
        "metadata": {"labels": {"job-name": "demo-train"}},
        "status": {"containerStatuses": [{"state": {"terminated": {
            "exitCode": 2, "message": "traceback\nerror: dataset.path: no such file",
            "finishedAt": "2026-12-01T10:00:00Z"}}}]},
    }  # fmt: skip
    failed = {"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    seen = Children(jobs={"demo-train": failed}, pods=[failed_pod])
    state = observe(seen, Names("demo"), events)
    assert state.train is not None and state.train.failed
    assert state.train.message == "error: dataset.path: no such file"
    assert failure_message([]) == ""
    assert calls == []

    waiting = Children(jobs={"demo-train": {"spec": {}, "status": {}}})
    observe(waiting, Names("demo"), events)
    assert calls == [("Job", "demo-train")]
