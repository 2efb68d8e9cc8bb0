"""Remote data sets and the shared model cache, against the real control plane.

kwok's pods do not run the trainer (the real-node tests do that): here the operator's
side is checked for real: the fetch Job before training and what it is given, the phases,
one CachedModel and one download Job for two jobs on one base, the cache claim mounted
read-only by training, and `kubectl get cachedmodels`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import make_volume
from maap_api.cachedmodel import PLURAL as CACHED_MODELS
from maap_api.finetunejob import GROUP, VERSION

from tests.controlplane.test_operator import (
    Cluster,
    OperatorProcess,
    condition,
    finetunejob,
    wait_until,
)

pytestmark = pytest.mark.controlplane

CACHE_CLAIM = "maap-model-cache"
CACHE_CLASS = "sc-model-cache"
# tests/cluster/stages: the fetch, publish and download pods stay Running this long.
HOLD = {"maap.dev/kwok-transfer-delay": "3s"}


class CacheOperator(OperatorProcess):
    """The operator with the shared model cache switched on."""

    def start(self) -> None:
        self.spawn(
            sys.executable,
            ["operator", "--liveness-port", str(self.liveness_port),
             "--metrics-port", str(self.metrics_port), "--progress-port", "0",
             "--model-cache-claim", CACHE_CLAIM, "--model-cache-storage-class", CACHE_CLASS,
             "--model-cache-access-mode", "ReadWriteOnce", "--model-cache-size", "1Gi"],
            {"MAAP_WAIT_CHECK_SECONDS": "1"},
        )  # fmt: skip


@pytest.fixture(scope="module")
def cache_operator(control_plane, tmp_path_factory) -> Iterator[CacheOperator]:
    proc = CacheOperator(
        Path(control_plane.kubeconfig), tmp_path_factory.mktemp("operator") / "operator.log"
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def cluster(api_client, namespace, cache_operator) -> Cluster:
    return Cluster(api_client, namespace, cache_operator)


def phases_until(cluster: Cluster, name: str, last: str, timeout: float = 90) -> list[str]:
    """Every phase the job shows, in order, until it reaches `last`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = cluster.status(name).get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        if phase == last:
            return seen
        time.sleep(0.2)
    pytest.fail(f"{name} never reached {last}; phases {seen}\n{cluster.op.log()}")


def _env(container: Any) -> dict[str, Any]:
    return {e.name: e for e in container.env or []}


def test_a_remote_data_set_is_fetched_before_training(cluster: Cluster) -> None:
    cluster.core.create_namespaced_secret(
        cluster.namespace,
        {"metadata": {"name": "s3-creds"},
         "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}},
    )  # fmt: skip
    make_volume(cluster.core, CACHE_CLASS)
    spec = {
        "dataset": {"path": "s3://training-data/pirate/train.jsonl", "sha256": "a" * 64},
        "s3": {"endpoint": "http://10.199.0.1:8333", "secretName": "s3-creds"},
        "placement": {"podAnnotations": HOLD},
        "serving": {"enabled": False},
        "export": {"enabled": False},
    }
    cluster.create(finetunejob("remote", "sc-remote", **spec))
    phases = phases_until(cluster, "remote", "Training")
    # [Pending] (creating), Fetching (the fetch pod runs), [Pending] (the training pod comes
    # up), Training: a Pending that lasts less than one poll may go unseen.
    assert "Fetching" in phases and phases.index("Fetching") < phases.index("Training"), phases
    assert set(phases) <= {"Pending", "Fetching", "Training"}, phases

    fetch = cluster.read_job("remote-fetch")
    assert fetch is not None and fetch.status.succeeded == 1
    [container] = fetch.spec.template.spec.containers
    # The shared cache brings the base model: this Job fetches the data only.
    assert container.command[-3:] == ["--config", "/etc/maap/config.json", "--data-only"]
    env = _env(container)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[key].value_from.secret_key_ref
        assert (ref.name, ref.key) == ("s3-creds", key)
    assert fetch.spec.pod_failure_policy.rules[0].action == "FailJob"  # exit 2: no retry
    train = cluster.read_job("remote-train")
    assert train is not None
    assert train.metadata.creation_timestamp >= fetch.status.completion_time, (
        "training started before the data was fetched"
    )
    assert "AWS_SECRET_ACCESS_KEY" not in _env(train.spec.template.spec.containers[0])

    config_map = cluster.core.read_namespaced_config_map("remote-config", cluster.namespace)
    config = json.loads(config_map.data["config.json"])
    assert config["dataset"]["path"] == "s3://training-data/pirate/train.jsonl"
    assert config["dataset"]["sha256"] == "a" * 64
    assert config["inputsDir"] == "/workspace/inputs"
    assert config["s3"] == {
        "endpoint": "http://10.199.0.1:8333", "region": "us-east-1", "secretName": "s3-creds"
    }  # fmt: skip
    status = cluster.status("remote")
    assert condition(status, "Fetched")["status"] == "True"
    assert "Fetching" in {reason for _, reason in cluster.events("remote")}


def test_two_jobs_on_one_base_share_one_cached_download(cluster: Cluster, control_plane) -> None:
    make_volume(cluster.core, CACHE_CLASS)
    model = {"path": "hf://acme/base-model@v1"}
    for name in ("left", "right"):
        cluster.create(finetunejob(name, f"sc-{name}", model=model, serving={"enabled": False},
                                   export={"enabled": False}))  # fmt: skip
    for name in ("left", "right"):
        cluster.wait_phase(name, "Training", timeout=120)

    models = cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, CACHED_MODELS
    )["items"]
    assert len(models) == 1, [m["metadata"]["name"] for m in models]
    [cached] = models
    assert cached["spec"]["model"] == model
    assert cached["status"]["phase"] == "Ready" and cached["status"]["claim"] == CACHE_CLAIM
    assert not cached["metadata"].get("ownerReferences"), "the cache must outlive the jobs"
    downloads = [
        j for j in cluster.batch.list_namespaced_job(cluster.namespace).items
        if j.metadata.name.endswith("-download")
    ]  # fmt: skip
    assert [d.metadata.name for d in downloads] == [f"{cached['metadata']['name']}-download"]
    [download] = downloads
    assert download.metadata.owner_references[0].kind == "CachedModel"
    [container] = download.spec.template.spec.containers
    assert "fetch-model" in container.command
    cache_mount = {m.name: m for m in container.volume_mounts}["model-cache"]
    assert not cache_mount.read_only, "the download Job is the cache's one writer"
    claim = cluster.core.read_namespaced_persistent_volume_claim(CACHE_CLAIM, cluster.namespace)
    assert not claim.metadata.owner_references

    for name in ("left", "right"):
        train = cluster.read_job(f"{name}-train")
        assert train is not None
        assert train.metadata.creation_timestamp >= download.status.completion_time
        pod = train.spec.template.spec
        volumes = {v.name: v for v in pod.volumes}
        assert volumes["model-cache"].persistent_volume_claim.claim_name == CACHE_CLAIM
        [container] = pod.containers
        mounts = {m.name: m for m in container.volume_mounts}
        assert mounts["model-cache"].read_only
        assert _env(container)["MAAP_CACHE_DIR"].value == mounts["model-cache"].mount_path
        status = cluster.status(name)
        assert condition(status, "Fetched")["status"] == "True"

    listed = control_plane.kubectl("get", "cachedmodels", "-n", cluster.namespace).stdout
    header, row = listed.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "PRESET", "LOCATION", "PHASE"], header
    assert "hf://acme/base-model@v1" in row and "Ready" in row, listed
    wait_until("the Ready event", lambda: ("Normal", "Ready") in [
        (e.type, e.reason) for e in cluster.core.list_namespaced_event(
            cluster.namespace, field_selector=f"involvedObject.name={cached['metadata']['name']}"
        ).items
    ], 30, cluster.op)  # fmt: skip


def test_a_failed_fetch_fails_the_job_with_its_line_and_starts_no_training(
    cluster: Cluster,
) -> None:
    make_volume(cluster.core, CACHE_CLASS)
    reason = "dataset.path: s3://data/train.jsonl: 403 SignatureDoesNotMatch"
    # kwok's stage ends the fetch pod as the trainer image would: exit 2, this message.
    annotations = {"maap.dev/kwok-fail-transfer": reason}
    cluster.create(finetunejob("denied", "sc-denied", placement={"podAnnotations": annotations},
                               dataset={"path": "s3://data/train.jsonl"}))  # fmt: skip
    status = cluster.wait_phase("denied", "Failed", timeout=90)
    failed = condition(status, "Failed")
    assert (failed["reason"], failed["message"]) == ("FetchFailed", reason)
    assert condition(status, "Fetched")["status"] == "False"
    assert ("Warning", "FetchFailed") in cluster.events("denied")
    fetch = cluster.read_job("denied-fetch")
    assert fetch is not None and (fetch.status.failed or 0) == 1, "exit 2 is not retried"
    assert cluster.read_job("denied-train") is None
