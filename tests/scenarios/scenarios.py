#!/usr/bin/env python3
"""The FineTuneJob scenarios on a real cluster: the same steps on kind and on our node.

    python tests/scenarios/scenarios.py --kubeconfig K [--context C] \
        --operator-image maap-operator:TAG --trainer-image maap-trainer:TAG \
        [--pull-policy Never] [pirate rolling preemption two-pods blockers cleanup]

Each scenario works in a namespace under Pod Security "restricted" and returns what it
measured; it raises ScenarioError with what it saw when something is wrong. The chart
must be installed first (`install`, or cluster.install_chart). tests/node runs every
scenario as a test; tests/kind/e2e.sh runs this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository: tests.serving
from scenario_steps import (
    REPO,
    Cluster,
    Images,
    ScenarioError,
    chat,
    data_claim,
    helper_pod,
    install_chart,
    restricted_namespace,
    say,
    wait_for,
)

from tests.serving import TEST_PARITY, in_persona

PIRATE = "smollm2-pirate"
PIRATE_DATA = REPO / "examples" / "pirate-chat"
EXAMPLE = REPO / "examples" / "smollm2-lora.yaml"
QUESTION = "Why is the sky blue?"
SERVING_PORT = 8000


def example_job(name: str, claim: str, **spec: Any) -> dict[str, Any]:
    """examples/smollm2-lora.yaml with its artifacts (and data) on `claim`, and overrides."""
    import yaml

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["storage"] = {"existingClaim": claim}
    for key, value in spec.items():
        current = doc["spec"].get(key)
        doc["spec"][key] = {**current, **value} if isinstance(current, dict) else value
    return doc


def preemption_job(name: str) -> dict[str, Any]:
    """Training only, no periodic checkpoint within its 10 steps: a resume at the step
    the pod was stopped at can only come from the SIGTERM checkpoint."""
    return example_job(
        name, f"{name}-data",
        training={"maxSteps": 10, "checkpointSteps": 1000, "loggingSteps": 1, "batchSize": 4},
        export={"enabled": False}, serving={"enabled": False},
    )  # fmt: skip


def two_pod_job(name: str) -> dict[str, Any]:
    return example_job(
        name, f"{name}-data",
        training={"maxSteps": 4, "batchSize": 4, "loggingSteps": 1},
        deepspeed={"enabled": True, "zeroStage": 2},
        resources={"nodes": 2},
        # No parity gate: this scenario is about the two ranks; the pirate scenario gates
        # its export on real pods, and an fp32 gate is minutes of PyTorch decoding.
        export={"precision": "fp32", "parity": {"enabled": False}},
    )  # fmt: skip


def wait_phase(
    cluster: Cluster, ns: str, name: str, want: set[str], timeout: float
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """Poll until the phase is one of `want`; returns the status and every (phase,
    progress step) seen. Failed (when not wanted) raises with the conditions."""
    seen: list[tuple[str, int]] = []

    def check() -> dict[str, Any] | None:
        status = cluster.status(ns, name)
        phase = status.get("phase", "")
        point = (phase, int((status.get("progress") or {}).get("step") or 0))
        if not seen or seen[-1] != point:
            seen.append(point)
            say(f"{name}: {phase or '-'} step {point[1]}")
        if phase in want:
            return status
        if phase == "Failed":
            conditions = "; ".join(
                f"{c['type']}={c['status']} {c['reason']}: {c.get('message', '')}"
                for c in status.get("conditions", [])
            )
            raise ScenarioError(f"{name} Failed: {conditions}")
        return None

    return wait_for(f"{name} to reach {sorted(want)}", check, timeout, 3), seen


def component_pods(cluster: Cluster, ns: str, job: str, component: str) -> list[dict[str, Any]]:
    return cluster.pods(ns, f"maap.dev/finetunejob={job},app.kubernetes.io/component={component}")


def pod_names(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in pods}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def scenario_pirate(cluster: Cluster, ns: str, images: Images, steps: int = 24) -> dict[str, Any]:
    """The example, on a small budget: train, export, serve; answer in the persona."""
    started = time.monotonic()
    data_claim(cluster, ns, f"{PIRATE}-data", images, PIRATE_DATA)
    cluster.apply(
        ns, example_job(PIRATE, f"{PIRATE}-data", training={"maxSteps": steps},
                        export={"parity": TEST_PARITY}),
    )  # fmt: skip
    status, seen = wait_phase(cluster, ns, PIRATE, {"Serving"}, 1800)
    training_steps = {step for phase, step in seen if phase == "Training" and step > 0}
    if not training_steps:
        raise ScenarioError(f"status.progress never moved during training: {seen}")
    wait_for(
        "ServingReady", lambda: condition(cluster.status(ns, PIRATE), "ServingReady")
        .get("status") == "True", 300,
    )  # fmt: skip
    logs = {}
    for component in ("trainer", "exporter", "server"):
        [pod, *_] = component_pods(cluster, ns, PIRATE, component)
        logs[component] = cluster.logs(ns, pod["metadata"]["name"])
        if not logs[component].strip():
            raise ScenarioError(f"kubectl logs of the {component} pod is empty")
    with cluster.port_forward(ns, f"service/{PIRATE}-server", SERVING_PORT) as port:
        answer = chat(f"http://127.0.0.1:{port}/v1", PIRATE, QUESTION)
    say(f"{QUESTION} -> {answer!r}")
    if not in_persona(answer):
        raise ScenarioError(f"the tuned model did not answer in persona: {answer!r}")
    metrics = status.get("metrics") or cluster.status(ns, PIRATE).get("metrics") or {}
    return {
        "seconds": round(time.monotonic() - started),
        "progressSteps": sorted(training_steps),
        "answer": answer,
        "evalLoss": [metrics.get("evalLossBefore"), metrics.get("evalLossAfter")],
        "endpoint": status.get("endpoint"),
    }


CLIENT_LOOP = """
import json, time, urllib.request
url, seconds = {url!r}, {seconds}
body = json.dumps({{"model": {model!r}, "max_tokens": 4, "temperature": 0,
                   "messages": [{{"role": "user", "content": "Ahoy?"}}]}}).encode()
ok, failed, errors, end = 0, 0, [], time.monotonic() + seconds
while time.monotonic() < end:
    try:
        req = urllib.request.Request(url, data=body, headers={{"Content-Type": "application/json"}})
        with urllib.request.urlopen(req, timeout=30) as r:
            json.load(r)["choices"][0]["message"]
        ok += 1
    except Exception as e:
        failed += 1
        errors.append(f"{{time.strftime('%H:%M:%S')}} {{type(e).__name__}}: {{e}}")
    if ok == 1 and not failed:
        print("first answer", flush=True)
    time.sleep(0.1)
print(json.dumps({{"ok": ok, "failed": failed, "errors": errors[:10]}}), flush=True)
"""


def scenario_rolling(
    cluster: Cluster, ns: str, images: Images, name: str = PIRATE, client_seconds: int = 75
) -> dict[str, Any]:
    """Two replicas behind the Service; a rolling restart under a client loop fails nothing."""
    cluster.kubectl(
        "patch", "finetunejob", name, "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"serving": {"replicas": 2}}}),
    )  # fmt: skip
    deployment = f"deployment/{name}-server"
    wait_for(
        "2 ready servers",
        lambda: (cluster.get(deployment, "-n", ns).get("status") or {}).get("readyReplicas") == 2,
        300,
    )
    wait_for(
        "ServingReady 2/2",
        lambda: (
            condition(cluster.status(ns, name), "ServingReady").get("message")
            == "2/2 replicas ready"
        ),
        60,
    )
    before = pod_names(component_pods(cluster, ns, name, "server"))
    # The client runs in the cluster and calls the Service by its DNS name, as an
    # application would (a port-forward pins one pod and would not show the rollout).
    url = f"http://{name}-server.{ns}.svc:{SERVING_PORT}/v1/chat/completions"
    code = CLIENT_LOOP.format(url=url, seconds=client_seconds, model=name)
    client = helper_pod(f"{name}-client", images, ["python", "-c", code], None)
    cluster.apply(ns, client)
    wait_for(
        "the client's first answer",
        lambda: "first answer" in cluster.kubectl("logs", "-n", ns, f"{name}-client",
                                                  check=False).stdout,
        180,
    )  # fmt: skip
    started = time.monotonic()
    cluster.kubectl("rollout", "restart", deployment, "-n", ns)
    cluster.kubectl("rollout", "status", deployment, "-n", ns, "--timeout=300s", timeout=320)
    rollout_seconds = time.monotonic() - started
    wait_for(
        "the client to finish",
        lambda: (
            (cluster.get("pod", f"{name}-client", "-n", ns).get("status") or {}).get("phase")
            in ("Succeeded", "Failed")
        ),
        client_seconds + 120,
    )
    summary = json.loads(cluster.logs(ns, f"{name}-client").strip().splitlines()[-1])
    after = pod_names(component_pods(cluster, ns, name, "server"))
    cluster.kubectl("delete", "pod", f"{name}-client", "-n", ns, "--wait=false")
    if rollout_seconds > client_seconds - 10:
        raise ScenarioError(f"the rollout ({rollout_seconds:.0f}s) outlasted the client loop")
    if before & after:
        raise ScenarioError(f"pods {before & after} were not replaced by the rollout")
    if summary["failed"] or summary["ok"] < 10:
        raise ScenarioError(f"requests failed during the rolling restart: {summary}")
    return {**summary, "rolloutSeconds": round(rollout_seconds)}


def scenario_preemption(cluster: Cluster, ns: str, images: Images) -> dict[str, Any]:
    """Delete the training pod mid-run: it saves a checkpoint at its step, the Job's next
    pod resumes there, the job succeeds and eval loss still falls."""
    name = "preempt"
    data_claim(cluster, ns, f"{name}-data", images, PIRATE_DATA)
    cluster.apply(ns, preemption_job(name))
    wait_for(
        "training at step 3",
        lambda: int((cluster.status(ns, name).get("progress") or {}).get("step") or 0) >= 3,
        900,
    )
    [pod] = cluster.pods(ns, f"job-name={name}-train")
    first = pod["metadata"]["name"]
    cluster.kubectl("delete", "pod", first, "-n", ns, "--wait=false")
    say(f"deleted the training pod {first}")

    def terminated() -> dict[str, Any] | None:
        found = cluster.get_or_none("pod", first, "-n", ns)
        statuses = ((found or {}).get("status") or {}).get("containerStatuses") or []
        return next((s["state"]["terminated"] for s in statuses
                     if "terminated" in s.get("state", {})), None)  # fmt: skip

    stopped = wait_for(f"{first} to stop", terminated, 150, 0.5)
    message = (stopped.get("message") or "").strip()
    if stopped.get("exitCode") != 75 or not message.startswith("preempted at step"):
        raise ScenarioError(f"the stopped pod did not save and exit 75: {stopped}")
    step = int(message.split()[3].rstrip(":"))
    status, _ = wait_phase(cluster, ns, name, {"Succeeded"}, 900)
    pods = cluster.pods(ns, f"job-name={name}-train")
    second = [p for p in pods if p["metadata"]["name"] != first]
    resumed_log = cluster.logs(ns, second[0]["metadata"]["name"]) if second else ""
    progress, metrics = status.get("progress") or {}, status.get("metrics") or {}
    if progress.get("resumedFromStep") != step:
        raise ScenarioError(f"status does not show the resume from step {step}: {progress}")
    if f"checkpoint-{step}" not in resumed_log:
        raise ScenarioError(f"the second pod's log does not name checkpoint-{step}")
    job_status = cluster.get(f"job/{name}-train", "-n", ns).get("status") or {}
    if job_status.get("failed"):
        raise ScenarioError(f"the preemption counted as a failure: {job_status}")
    if not metrics.get("evalLossAfter", 9e9) < metrics.get("evalLossBefore", 0):
        raise ScenarioError(f"eval loss did not fall: {metrics}")
    return {"stoppedAtStep": step, "message": message, "evalLoss": [
        metrics["evalLossBefore"], metrics["evalLossAfter"]]}  # fmt: skip


def scenario_two_pods(cluster: Cluster, ns: str, images: Images) -> dict[str, Any]:
    """resources.nodes 2 with DeepSpeed ZeRO-2 on CPU: two pods rendezvous through the
    headless Service's DNS name, each trains its shard; then export and serve."""
    name = "pair"
    data_claim(cluster, ns, f"{name}-data", images, PIRATE_DATA)
    cluster.apply(ns, two_pod_job(name))
    wait_phase(cluster, ns, name, {"Serving"}, 1800)
    pods = cluster.pods(ns, f"job-name={name}-train")
    indices = sorted(p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index")
                     for p in pods if p["status"].get("phase") == "Succeeded")  # fmt: skip
    if indices != ["0", "1"]:
        raise ScenarioError(f"expected two succeeded training pods (index 0, 1): {indices}")
    wait_for(
        "ServingReady", lambda: condition(cluster.status(ns, name), "ServingReady")
        .get("status") == "True", 300,
    )  # fmt: skip
    server = component_pods(cluster, ns, name, "server")
    raw = cluster.kubectl(
        "exec", "-n", ns, server[0]["metadata"]["name"], "--",
        "cat", "/workspace/output/metrics.json",
    ).stdout  # fmt: skip
    dist = json.loads(raw)["distributed"]
    ranks = dist.get("ranks") or []
    if dist["worldSize"] != 2 or len(ranks) != 2 or dist["zeroStage"] != 2:
        raise ScenarioError(f"not a 2-rank ZeRO-2 run: {dist}")
    with cluster.port_forward(ns, f"service/{name}-server", SERVING_PORT) as port:
        answer = chat(f"http://127.0.0.1:{port}/v1", name, QUESTION)
    if not answer:
        raise ScenarioError("the two-pod model's server gave an empty answer")
    return {"worldSize": dist["worldSize"], "ranks": ranks, "answer": answer}


def scenario_blockers(cluster: Cluster, ns: str, images: Images) -> dict[str, Any]:
    """Children that cannot make progress are named in a condition and a Warning Event:
    pods refused at creation (a quota; Pod Security refusals take the same path), and
    pods no node can take. In a namespace of its own (the quota blocks every new pod)."""
    ns = f"{ns}-blocked"
    restricted_namespace(cluster, ns)
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}},
    }
    nowhere = {"nodeSelector": {"maap.dev/pool": "nowhere"}}
    seen = {}
    for name, extra, reason, text in (
        ("quota", quota, "PodCreationFailed", "exceeded quota"),
        ("nowhere", None, "Unschedulable", "didn't match Pod's node affinity/selector"),
    ):
        if extra:
            cluster.apply(ns, extra)
        spec = {"placement": nowhere} if name == "nowhere" else {}
        job = example_job(name, f"{name}-data", **spec)
        del job["spec"]["storage"]  # the job's own claim: it binds once a pod is scheduled
        cluster.apply(ns, job)
        # The first stage's pod (the fetch Job's) is the one that cannot run.
        got = wait_for(
            f"{name}: Fetched condition {reason}",
            lambda n=name, r=reason: (
                (c := condition(cluster.status(ns, n), "Fetched")).get("reason") == r and c
            ),
            120,
        )
        if text not in got.get("message", ""):
            raise ScenarioError(f"{name}: message lacks {text!r}: {got}")
        events = cluster.get("events", "-n", ns, "--field-selector",
                             f"involvedObject.name={name},type=Warning")  # fmt: skip
        if not any(e.get("reason") == reason for e in events.get("items", [])):
            raise ScenarioError(f"{name}: no Warning Event {reason}")
        seen[name] = got["message"]
        cluster.kubectl("delete", "finetunejob", name, "-n", ns)
        if extra:
            cluster.kubectl("delete", "resourcequota", "no-pods", "-n", ns)
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    return seen


def scenario_cleanup(cluster: Cluster, ns: str, images: Images) -> dict[str, Any]:
    """Deleting each FineTuneJob removes everything it made (its data claims are ours)."""
    jobs = cluster.get("finetunejobs", "-n", ns).get("items") or []
    started = time.monotonic()
    for job in jobs:
        cluster.kubectl("delete", "finetunejob", job["metadata"]["name"], "-n", ns)
    kinds = "pods,jobs,deployments,services,configmaps,secrets,persistentvolumeclaims"

    def gone() -> bool:
        # The model cache (its claim, CachedModels' download Jobs) outlives jobs on purpose.
        selector = (
            "app.kubernetes.io/managed-by=maap-operator,app.kubernetes.io/component!=model-cache"
        )
        left = cluster.get(kinds, "-n", ns, "-l", selector)
        return not left.get("items")

    wait_for("every child garbage-collected", gone, 180)
    return {"deleted": len(jobs), "seconds": round(time.monotonic() - started)}


@dataclass(frozen=True)
class S3Store:
    """An S3-compatible store the cluster's pods reach at `endpoint`, and how to fill it."""

    endpoint: str
    access_key: str
    secret_key: str
    put: Callable[[str, str, bytes], None]
    keys: Callable[[str, str], list[str]]
    create_bucket: Callable[[str], None]


def sources_job(name: str, s3: S3Store, secret: str, data: str, sha256: str) -> dict[str, Any]:
    """The example with its data set in S3, training only, its models published to S3."""
    doc = example_job(
        name, "unused",
        dataset={"path": data, "sha256": sha256},
        training={"maxSteps": 4, "batchSize": 4, "loggingSteps": 1},
        export={"enabled": False}, serving={"enabled": False},
    )  # fmt: skip
    doc["spec"]["storage"] = {"size": "5Gi"}
    doc["spec"]["s3"] = {"endpoint": s3.endpoint, "secretName": secret}
    doc["spec"]["output"] = {"path": f"s3://{SOURCES_BUCKET}/published/{name}/"}
    return doc


SOURCES_BUCKET = "maap-scenarios"


def scenario_sources(cluster: Cluster, ns: str, images: Images, s3: S3Store) -> dict[str, Any]:
    """Two jobs on one base at once, their data set an S3 object: Fetching, then one
    download of the base model into the shared cache for both, training, then their models
    published to S3. A third job with a wrong secret key fails on the server's 403."""
    started = time.monotonic()
    data = (PIRATE_DATA / "train.jsonl").read_bytes()
    s3.create_bucket(SOURCES_BUCKET)
    s3.put(SOURCES_BUCKET, "pirate/train.jsonl", data)
    location = f"s3://{SOURCES_BUCKET}/pirate/train.jsonl"
    digest = hashlib.sha256(data).hexdigest()
    secrets = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
         "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": key}}
        for name, key in (("s3-good", s3.secret_key), ("s3-wrong", "not-the-secret-key"))
    ]  # fmt: skip
    cluster.apply(ns, *secrets)
    twins = ["s3-left", "s3-right"]
    cluster.apply(
        ns, *(sources_job(name, s3, "s3-good", location, digest) for name in twins),
        sources_job("s3-denied", s3, "s3-wrong", location, digest),
    )  # fmt: skip
    denied, _ = wait_phase(cluster, ns, "s3-denied", {"Failed"}, 600)
    failure = condition(denied, "Failed")
    if failure.get("reason") != "FetchFailed" or "403" not in failure.get("message", ""):
        raise ScenarioError(f"the wrong key did not fail the fetch with a 403: {failure}")
    # Both at once (they run side by side): every phase each shows, until both are done.
    phases: dict[str, list[str]] = {name: [] for name in twins}

    def both_done() -> bool:
        for name in twins:
            phase = cluster.status(ns, name).get("phase", "")
            if phase == "Failed":
                raise ScenarioError(f"{name} Failed: {cluster.status(ns, name)}")
            if phase and (not phases[name] or phases[name][-1] != phase):
                phases[name].append(phase)
                say(f"{name}: {phase}")
        return all(p and p[-1] == "Succeeded" for p in phases.values())

    wait_for("both jobs to succeed", both_done, 1800, 1)
    for name in twins:
        order = [p for p in phases[name] if p in ("Fetching", "Training", "Publishing")]
        if order != ["Fetching", "Training", "Publishing"]:
            raise ScenarioError(f"{name}: phases {phases[name]}")
    models = cluster.get("cachedmodels", "-n", ns).get("items") or []
    downloads = [j["metadata"]["name"] for j in cluster.get("jobs", "-n", ns).get("items") or []
                 if j["metadata"]["name"].endswith("-download")]  # fmt: skip
    if len(models) != 1 or len(downloads) != 1:
        raise ScenarioError(f"one base, but CachedModels {models} and downloads {downloads}")
    cached = models[0]["status"]
    if cached.get("phase") != "Ready" or not cached.get("bytes"):
        raise ScenarioError(f"the CachedModel is not Ready with its size: {cached}")
    outputs = cluster.status(ns, twins[0]).get("outputs") or {}
    prefix = f"published/{twins[0]}/"
    keys = s3.keys(SOURCES_BUCKET, prefix)
    if not outputs.get("mergedModel") or not any(k.endswith("config.json") for k in keys):
        raise ScenarioError(f"nothing published: status.outputs {outputs}, objects {keys}")
    return {
        "seconds": round(time.monotonic() - started),
        "phases": phases[twins[0]],
        "deniedMessage": failure["message"],
        "cachedModel": {k: cached.get(k) for k in ("phase", "size", "files")},
        "downloads": len(downloads),
        "publishedObjects": len(keys),
        "outputs": outputs,
    }


SCENARIOS: dict[str, Callable[[Cluster, str, Images], dict[str, Any]]] = {
    "pirate": scenario_pirate,
    "rolling": scenario_rolling,
    "preemption": scenario_preemption,
    "two-pods": scenario_two_pods,
    "blockers": scenario_blockers,
    "cleanup": scenario_cleanup,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--helm", default="helm")
    parser.add_argument("--operator-image", required=True)
    parser.add_argument("--trainer-image", required=True)
    parser.add_argument("--pull-policy", default="IfNotPresent")
    parser.add_argument("--namespace", default="maap-scenarios")
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    cluster = Cluster(args.kubectl, args.helm, args.kubeconfig, args.context)
    images = Images(args.operator_image, args.trainer_image, args.pull_policy)
    try:
        if not args.skip_install:
            install_chart(cluster, images)
        restricted_namespace(cluster, args.namespace)
        for name in args.scenarios or SCENARIOS:
            started = time.monotonic()
            result = SCENARIOS[name](cluster, args.namespace, images)
            seconds = time.monotonic() - started
            print(json.dumps({"scenario": name, "seconds": round(seconds), **result}), flush=True)
    except ScenarioError as exc:
        print(f"scenario failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
