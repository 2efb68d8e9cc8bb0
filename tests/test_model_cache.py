"""The shared model cache and the transfer Jobs, without a cluster: names, builders, the
CachedModel's status from its Job, and the pipeline's Fetching and Publishing phases."""

from __future__ import annotations

import json
from typing import Any

from maap import cache_builders, transfer_builders
from maap.builders import build_training_job
from maap.children import plan
from maap.manifest import parse_manifest
from maap.model_cache import observed_status
from maap.pipeline import CacheState, JobState, Observed, decide
from maap.podspec import ModelCacheSettings, OperatorSettings
from maap.watches import Children

CACHE = ModelCacheSettings(claim_name="models", storage_class_name="nfs")
SETTINGS = OperatorSettings(trainer_image="maap-trainer:test", model_cache=CACHE)


def job(name: str = "demo", **spec: Any):
    return parse_manifest({
        "apiVersion": "maap.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"model": {"preset": "smollm2-135m-instruct"},
                 "dataset": {"path": "data/train.jsonl"}, **spec},
    })  # fmt: skip


def done() -> JobState:
    return JobState(succeeded=True)


def test_jobs_on_one_base_name_one_cached_model() -> None:
    hub = {"path": "hf://acme/base"}
    assert cache_builders.cached_model_name(
        job("a", model=hub)
    ) == cache_builders.cached_model_name(job("b", model={"path": "hf://acme/base@main"}))
    other = cache_builders.cached_model_name(job(model={"path": "hf://acme/base@v2"}))
    assert other != cache_builders.cached_model_name(job(model=hub))
    long = cache_builders.cached_model_name(job(model={"path": "hf://" + "a" * 90 + "/b"}))
    assert len(long) <= 63 and long[-1].isalnum()
    assert cache_builders.cached_model_name(job()) == "preset-smollm2-135m-instruct"
    # A hub preset goes through the same location as hf:// does.
    phi = job(model={"preset": "phi-3-mini-4k-instruct"})
    assert transfer_builders.model_location(phi.spec.model) == (
        "hf://microsoft/Phi-3-mini-4k-instruct"
    )


def test_the_first_pass_creates_the_fetch_job_the_cache_claim_and_the_cached_model() -> None:
    spec = job(model={"path": "hf://acme/base"}, hub={"secretName": "hf"})
    stages = decide(spec, Observed(uses_cache=True)).create
    assert stages == ["fetch", "cache"]
    writes = plan(spec, "uid-1", SETTINGS, stages, Children(), set(), token=lambda n: "t" * n)
    kinds = [(w.verb, w.kind) for w in writes]
    assert ("create", "Job") in kinds and ("create", "CachedModel") in kinds
    claim = next(w.body for w in writes if w.kind == "PersistentVolumeClaim"
                 and w.name == "models")  # fmt: skip
    assert "ownerReferences" not in claim["metadata"], "the cache outlives every job"
    assert claim["spec"]["storageClassName"] == "nfs"
    cached = next(w.body for w in writes if w.kind == "CachedModel")
    assert cached["spec"]["model"] == {"path": "hf://acme/base"}
    assert cached["spec"]["hub"]["secretName"] == "hf"
    fetch = next(w.body for w in writes if w.kind == "Job")
    container = fetch["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "--data-only"
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}},
    } in (container["env"])


def test_the_download_job_is_the_caches_one_writer() -> None:
    body = cache_builders.build_cached_model(job(model={"path": "s3://models/base/"},
                                                 s3={"secretName": "s3"}))  # fmt: skip
    body["metadata"]["uid"] = "cm-uid"
    config_map, download = cache_builders.build_download(body, SETTINGS)
    assert json.loads(config_map["data"]["model.json"])["model"] == {"path": "s3://models/base/"}
    pod = download["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][-3:] == ["fetch-model", "--config", "/etc/maap/model.json"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert not mounts["model-cache"].get("readOnly")
    names = {e["name"] for e in container["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MAAP_CACHE_DIR"} <= names
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    assert download["metadata"]["ownerReferences"][0]["kind"] == "CachedModel"
    # Training reads the same claim, read-only.
    trainer = build_training_job(job(), "uid", SETTINGS)["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in trainer["containers"][0]["volumeMounts"]}
    assert mounts["model-cache"]["readOnly"]


def _terminated(code: int, message: str = "") -> dict[str, Any]:
    state = {"terminated": {"exitCode": code, "message": message, "finishedAt": "t"}}
    return {"status": {"containerStatuses": [{"state": state}]}}


def test_cached_model_status_follows_its_download_job() -> None:
    assert observed_status(None, [], "models")["phase"] == "Pending"
    running = {"spec": {}, "status": {"active": 1}}
    assert observed_status(running, [], "models")["phase"] == "Downloading"
    failed = {"spec": {}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}  # fmt: skip
    message = "model.path: hf://acme/base: 401 Unauthorized (set spec.hub.secretName)"
    status = observed_status(failed, [_terminated(2, message)], "models")
    assert (status["phase"], status["message"]) == ("Failed", message)
    complete = {"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    report = {"location": "hf://acme/base", "path": "/var/cache/maap/models/x", "files": 4,
              "bytes": 3 * 1024**3, "revision": "abc123"}  # fmt: skip
    ready = observed_status(complete, [_terminated(0, json.dumps(report))], "models")
    assert ready["phase"] == "Ready" and ready["size"] == "3.0 GiB"
    assert (ready["revision"], ready["files"]) == ("abc123", 4)


def test_jobs_wait_for_the_cached_model_and_fail_with_its_reason() -> None:
    spec = job()
    waiting = decide(spec, Observed(fetch=done(), uses_cache=True,
                                    cache=CacheState("m", "Downloading")))  # fmt: skip
    assert waiting.phase == "Fetching" and "train" not in waiting.create
    failed = decide(spec, Observed(fetch=done(), uses_cache=True,
                                   cache=CacheState("m", "Failed", "404 Not Found")))  # fmt: skip
    assert failed.phase == "Failed"
    [reason] = [c.reason for c in failed.conditions if c.type == "Failed"]
    assert reason == "ModelFetchFailed"
    ready = decide(spec, Observed(fetch=done(), uses_cache=True, cache=CacheState("m", "Ready")))
    assert ready.create == ["train"]


def test_publishing_comes_after_export_and_before_serving() -> None:
    spec = job(output={"path": "s3://models/pirate/"})
    exported = Observed(fetch=done(), train=done(), export=done())
    step = decide(spec, exported)
    assert (step.phase, step.create) == ("Publishing", ["publish"])
    denied = JobState(failed=True, message="403 AccessDenied")
    failed = decide(spec, Observed(fetch=done(), train=done(), export=done(), publish=denied))
    assert failed.phase == "Failed"
    published = decide(spec, Observed(fetch=done(), train=done(), export=done(), publish=done()))
    assert (published.phase, published.create) == ("Serving", ["serving"])
    no_serving = job(output={"path": "s3://models/pirate/"}, serving={"enabled": False})
    assert decide(no_serving, Observed(fetch=done(), train=done(), export=done(),
                                       publish=done())).phase == "Succeeded"  # fmt: skip
