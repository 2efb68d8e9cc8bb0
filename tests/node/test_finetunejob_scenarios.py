"""The FineTuneJob scenarios on the real node: the images built from our Dockerfiles, the
Helm chart, the operator in a pod, real training, export and serving pods.

The scenarios themselves are tests/scenarios/scenarios.py, which tests/kind/e2e.sh runs
on kind too; here each is a test, in order (later ones reuse the pirate job), each in a
namespace under Pod Security "restricted". What each measured is printed and written to
the real node's log directory as scenario-results.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "scenarios"))
sys.path.insert(0, str(REPO / "tests" / "cluster"))
import images as image_builds  # noqa: E402
import scenarios  # noqa: E402
from scenario_steps import (  # noqa: E402
    Cluster,
    Images,
    chat,
    install_chart,
    restricted_namespace,
    say,
    uninstall_chart,
)

from tests.serving import in_persona  # noqa: E402

pytestmark = pytest.mark.timeout(3600)
RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def maap_images(real_node) -> Images:
    """Both images, built (or taken from the cache, keyed by content) and imported."""
    if not shutil.which("buildah"):
        reason = "buildah not found: the images are built from the Dockerfiles with it"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true)", pytrace=False)
        pytest.skip(reason)
    refs = {}
    for name in ("operator", "trainer"):
        started = time.monotonic()
        built = image_builds.build(name)
        built_seconds = time.monotonic() - started
        started = time.monotonic()
        if built.full_ref not in real_node.images():
            real_node.import_image(built.archive)
        RESULTS[f"image-{name}"] = {
            "ref": built.ref,
            "archiveMiB": round(built.archive.stat().st_size / 2**20),
            "buildOrCacheSeconds": round(built_seconds),
            "importSeconds": round(time.monotonic() - started),
        }
        refs[name] = built.ref
    return Images(refs["operator"], refs["trainer"], "IfNotPresent")


@pytest.fixture(scope="module")
def maap(real_cluster, real_node, maap_images) -> Iterator[Cluster]:
    """The chart installed with the built images; uninstalled afterwards."""
    bin_dir = real_cluster.bin_dir
    cluster = Cluster(str(bin_dir / "kubectl"), str(bin_dir / "helm"), str(real_cluster.kubeconfig))
    # The shared model cache on: every job's base model comes through one CachedModel per
    # namespace (the hostPath provisioner's volumes live on this one node: ReadWriteOnce).
    cache = ["--set", "modelCache.enabled=true", "--set", "modelCache.accessMode=ReadWriteOnce",
             "--set", "modelCache.size=5Gi"]  # fmt: skip
    RESULTS["install"] = {"seconds": round(install_chart(cluster, maap_images, cache))}
    try:
        yield cluster
    finally:
        uninstall_chart(cluster)
        out = real_node.logs_dir / "scenario-results.json"
        out.write_text(json.dumps(RESULTS, indent=2) + "\n")
        say(f"scenario results: {json.dumps(RESULTS)}")


@pytest.fixture(scope="module")
def jobs_namespace(maap: Cluster) -> Iterator[str]:
    name = f"maap-scenarios-{uuid.uuid4().hex[:6]}"
    restricted_namespace(maap, name)
    try:
        yield name
    finally:
        maap.kubectl("delete", "namespace", name, "--wait=false", check=False)


def run(name: str, cluster: Cluster, namespace: str, images: Images) -> dict[str, Any]:
    started = time.monotonic()
    result = scenarios.SCENARIOS[name](cluster, namespace, images)
    RESULTS[name] = {"seconds": round(time.monotonic() - started), **result}
    print(name, json.dumps(RESULTS[name]))
    return result


def test_pirate_example_trains_exports_and_serves_in_persona(
    maap: Cluster, jobs_namespace: str, maap_images: Images
) -> None:
    result = run("pirate", maap, jobs_namespace, maap_images)
    assert in_persona(result["answer"]), result["answer"]
    # The Service's ClusterIP answers from the node too: kube-proxy routes it.
    service = maap.get(f"service/{scenarios.PIRATE}-server", "-n", jobs_namespace)
    ip = service["spec"]["clusterIP"]
    answer = chat(f"http://{ip}:{scenarios.SERVING_PORT}/v1", scenarios.PIRATE, scenarios.QUESTION)
    assert answer == result["answer"], "greedy answers through the ClusterIP and port-forward"
    assert result["endpoint"] == (
        f"http://{scenarios.PIRATE}-server.{jobs_namespace}.svc:{scenarios.SERVING_PORT}/v1"
    )


def test_two_replicas_roll_without_a_failed_request(
    maap: Cluster, jobs_namespace: str, maap_images: Images
) -> None:
    if "pirate" not in RESULTS:
        pytest.skip("needs the pirate scenario's serving job, which did not come up")
    result = run("rolling", maap, jobs_namespace, maap_images)
    assert result["failed"] == 0 and result["ok"] >= 10


def test_a_stopped_training_pod_checkpoints_and_the_next_resumes(
    maap: Cluster, jobs_namespace: str, maap_images: Images
) -> None:
    result = run("preemption", maap, jobs_namespace, maap_images)
    before, after = result["evalLoss"]
    assert after < before


def test_two_training_pods_shard_under_deepspeed_zero2(
    maap: Cluster, jobs_namespace: str, maap_images: Images
) -> None:
    result = run("two-pods", maap, jobs_namespace, maap_images)
    assert result["worldSize"] == 2


def test_stalled_children_are_named_in_conditions_and_events(
    maap: Cluster, jobs_namespace: str, maap_images: Images
) -> None:
    result = run("blockers", maap, jobs_namespace, maap_images)
    assert "exceeded quota" in result["quota"]


@pytest.fixture(scope="module")
def pods_s3(real_cluster) -> Iterator[scenarios.S3Store]:
    """A real S3 server (rclone serve s3) where the pods reach it: the node's address."""
    from tests.servers.s3 import S3Server

    with S3Server(host=real_cluster.advertise_address) as server:
        yield scenarios.S3Store(
            endpoint=server.endpoint, access_key=server.access_key,
            secret_key=server.secret_key, put=server.put, keys=server.list,
            create_bucket=server.create_bucket,
        )  # fmt: skip


def test_data_from_s3_one_cached_base_for_two_jobs_and_models_published_to_s3(
    maap: Cluster, maap_images: Images, pods_s3: scenarios.S3Store
) -> None:
    namespace = f"maap-sources-{uuid.uuid4().hex[:6]}"
    restricted_namespace(maap, namespace)
    try:
        started = time.monotonic()
        result = scenarios.scenario_sources(maap, namespace, maap_images, pods_s3)
        RESULTS["sources"] = {"seconds": round(time.monotonic() - started), **result}
        print("sources", json.dumps(RESULTS["sources"]))
    finally:
        maap.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    assert result["downloads"] == 1
    assert "403" in result["deniedMessage"]
    assert result["publishedObjects"] > 0


def test_deleting_the_finetunejobs_removes_their_children(
    maap: Cluster, jobs_namespace: str, maap_images: Images
) -> None:
    result = run("cleanup", maap, jobs_namespace, maap_images)
    assert result["deleted"] >= 1
