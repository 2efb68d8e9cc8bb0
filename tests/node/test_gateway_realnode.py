"""The whole MaaS path on real pods: the chart's gateway in front of the operator, driven from
the host with the real `openai` client.

Upload a file, create a fine-tuning job, poll it to `succeeded` while the operator runs the
fetch (which downloads the upload from the gateway's Service over a signed URL), training,
export and serving pods on the real node; then read its events and checkpoints and chat with
the tuned model, whole and streamed, through the gateway to the job's own server. A second
tenant's key sees none of it. What it measured is printed and written to the real node's log
directory as gateway-results.json.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "scenarios"))
sys.path.insert(0, str(REPO / "tests" / "cluster"))
import images as image_builds  # noqa: E402
from maap_api.sources import shown_location  # noqa: E402
from scenario_steps import (  # noqa: E402
    OPERATOR_NAMESPACE,
    RELEASE,
    Cluster,
    Images,
    ScenarioError,
    install_chart,
    restricted_namespace,
    say,
    uninstall_chart,
)

from tests.console_helpers import browser, sign_in  # noqa: E402

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(3600)

MODEL = "smollm2-135m-instruct"
TRAIN = REPO / "examples" / "pirate-chat" / "train.jsonl"
ROWS = 40
STEPS = 6
GATEWAY = f"{RELEASE}-gateway"  # maap.gateway.fullname for the release "maap"
GATEWAY_PORT = 8080
INTERNAL_URL = f"http://{GATEWAY}.{OPERATOR_NAMESPACE}.svc:{GATEWAY_PORT}"
JOB_TIMEOUT = 1500
# Short real runs: one log line per step, a checkpoint every 3, the job's own 5Gi claim and
# a bearer token on its server (the gateway reads it from the job's Secret). The export is
# int8 without the parity gate: this test is about the gateway's path through the cluster;
# the int4 export and its gate on real pods are the pirate scenario's (test_finetunejob_
# scenarios), and they took 3 of this test's 7 minutes.
MAAP = {
    "training": {"maxSteps": STEPS, "loggingSteps": 1, "checkpointSteps": 3,
                 "maxSeqLength": 128, "batchSize": 4},
    "export": {"precision": "int8", "parity": {"enabled": False}},
    "storage": {"size": "5Gi"},
    "serving": {"auth": {"enabled": True}},
}  # fmt: skip
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def maap_images(real_node) -> Images:
    """Both images, built (or taken from the cache, keyed by content) and imported, as
    test_finetunejob_scenarios.py's fixture of the same name does."""
    if not shutil.which("buildah"):
        reason = "buildah not found: the images are built from the Dockerfiles with it"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true)", pytrace=False)
        pytest.skip(reason)
    refs = {}
    for name in ("operator", "trainer"):
        started = time.monotonic()
        built = image_builds.build(name)
        RESULTS[f"image-{name}"] = {"ref": built.ref, "buildOrCacheSeconds": round(
            time.monotonic() - started)}  # fmt: skip
        if built.full_ref not in real_node.images():
            real_node.import_image(built.archive)
        refs[name] = built.ref
    return Images(refs["operator"], refs["trainer"], "IfNotPresent")


@pytest.fixture(scope="module")
def maap(real_cluster, real_node, maap_images) -> Iterator[Cluster]:
    """The chart with its gateway (and the shared model cache, as the scenarios run it);
    uninstalled afterwards, the gateway's kept file claim deleted too."""
    bin_dir = real_cluster.bin_dir
    cluster = Cluster(str(bin_dir / "kubectl"), str(bin_dir / "helm"), str(real_cluster.kubeconfig))
    # The hostPath provisioner's volumes live on this one node: ReadWriteOnce.
    values = ["--set", "modelCache.enabled=true", "--set", "modelCache.accessMode=ReadWriteOnce",
              "--set", "modelCache.size=5Gi",
              "--set", "gateway.enabled=true", "--set", "gateway.storage.size=1Gi",
              "--set", "gateway.storage.accessMode=ReadWriteOnce"]  # fmt: skip
    RESULTS["installSeconds"] = round(install_chart(cluster, maap_images, values))
    try:
        yield cluster
    finally:
        uninstall_chart(cluster)
        cluster.kubectl("delete", "pvc", f"{GATEWAY}-files", "-n", OPERATOR_NAMESPACE,
                        "--ignore-not-found", check=False)  # fmt: skip
        (real_node.logs_dir / "gateway-results.json").write_text(json.dumps(RESULTS, indent=2))
        say(f"gateway results: {json.dumps(RESULTS)}")


@pytest.fixture(scope="module")
def tenants(maap: Cluster) -> Iterator[dict[str, str]]:
    """Two tenants: namespace -> API key, each key a labelled Secret beside the gateway."""
    found = {}
    for team in ("a", "b"):
        namespace = f"gw-team-{team}-{uuid.uuid4().hex[:6]}"
        restricted_namespace(maap, namespace)
        found[namespace] = f"sk-team-{team}-{uuid.uuid4().hex}"
    secrets = [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"key-{namespace}", "labels": {"maap.dev/gateway-api-key": "true"}},
         "stringData": {"apiKey": key, "namespace": namespace}}
        for namespace, key in found.items()
    ]  # fmt: skip
    maap.apply(OPERATOR_NAMESPACE, *secrets)
    try:
        yield found
    finally:
        for namespace in found:
            # While the operator still runs: it removes its finalizers.
            maap.kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--wait=true",
                         check=False, timeout=180)  # fmt: skip
            maap.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            maap.kubectl("delete", "secret", f"key-{namespace}", "-n", OPERATOR_NAMESPACE,
                         "--ignore-not-found", check=False)  # fmt: skip


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def answers(client: openai.OpenAI) -> bool:
    """The gateway has read this client's key (it lists the Secrets every 10 s)."""
    try:
        client.models.list()
    except (openai.AuthenticationError, openai.APIConnectionError):
        return False
    return True


def diagnose(cluster: Cluster, namespace: str, job_id: str | None) -> None:
    """What a failed run leaves: the job's status, every pod's log, the gateway's and the
    operator's logs."""
    if job_id:
        say(f"{job_id} status: {json.dumps(cluster.status(namespace, job_id), indent=1)}")
    for pod in cluster.pods(namespace, "maap.dev/finetunejob") + cluster.pods(
        namespace, "app.kubernetes.io/component=model-cache"
    ):
        name = pod["metadata"]["name"]
        done = cluster.kubectl("logs", "-n", namespace, name, "--all-containers", "--tail=60",
                               check=False)  # fmt: skip
        say(f"pod {name} ({pod['status'].get('phase')}):\n{done.stdout}{done.stderr}")
    for deployment in (GATEWAY, RELEASE):
        done = cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"deployment/{deployment}",
                               "--tail=80", check=False)  # fmt: skip
        say(f"{deployment} log:\n{done.stdout}{done.stderr}")


def wait_succeeded(client: openai.OpenAI, job_id: str) -> Any:
    """Poll retrieve to a terminal status, printing each change; the job object."""
    seen: list[tuple[str, Any, int]] = []

    def finished() -> Any:
        job = client.fine_tuning.jobs.retrieve(job_id)
        point = (job.status, job.maap["phase"], (job.maap["progress"] or {}).get("step", 0))
        if not seen or seen[-1] != point:
            seen.append(point)
            say(f"{job_id}: {point[0]} (phase {point[1]}, step {point[2]})")
        if job.status in ("failed", "cancelled"):
            raise ScenarioError(f"{job_id} ended {job.status}: {job.error}")
        return job if job.status == "succeeded" else None

    job = poll(f"{job_id} to succeed", finished, JOB_TIMEOUT, 3)
    RESULTS["statuses"] = [list(p) for p in seen]
    return job


def test_openai_client_fine_tunes_and_chats_through_the_gateway_on_real_pods(
    maap: Cluster, tenants: dict[str, str], browser
) -> None:
    (ours, key), (_, other_key) = tenants.items()
    service = maap.get(f"service/{GATEWAY}", "-n", OPERATOR_NAMESPACE)
    # From the host to the ClusterIP: kube-proxy routes it to the gateway pod.
    base = f"http://{service['spec']['clusterIP']}:{GATEWAY_PORT}"
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    team_a = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=300)
    team_b = openai.OpenAI(base_url=f"{base}/v1", api_key=other_key, max_retries=0, timeout=60)
    poll("the gateway to read the API-key Secrets", lambda: answers(team_a) and answers(team_b),
         60)  # fmt: skip
    job_id = None
    try:
        rows = "\n".join(TRAIN.read_text().splitlines()[:ROWS]) + "\n"
        uploaded = team_a.files.create(file=("pirate.jsonl", rows.encode()), purpose="fine-tune")
        started = time.monotonic()
        job = team_a.fine_tuning.jobs.create(
            model=MODEL, training_file=uploaded.id, suffix="pirate", extra_body={"maap": MAAP}
        )
        job_id = job.id
        assert job.status in ("queued", "validating_files") and job.fine_tuned_model is None
        done = wait_succeeded(team_a, job.id)
        RESULTS["createdToSucceededSeconds"] = round(time.monotonic() - started)
        say(f"{job.id}: created -> succeeded in {RESULTS['createdToSucceededSeconds']}s")
        assert done.fine_tuned_model == f"ft:{MODEL}:{ours}:pirate:{job.id[len('ftjob-') :]}"
        assert done.trained_tokens and done.finished_at

        check_fetched_from_the_gateway(maap, ours, job.id, uploaded.id)
        check_events_and_checkpoints(team_a, job.id)
        chat_through_the_gateway(team_a, done.fine_tuned_model)
        check_the_console(browser, base, key, other_key, job.id, done.fine_tuned_model)

        # The other tenant: no job, no events, no model; 404s that say nothing of them.
        for call in (lambda: team_b.fine_tuning.jobs.retrieve(job.id),
                     lambda: team_b.fine_tuning.jobs.list_events(job.id),
                     lambda: team_b.chat.completions.create(model=done.fine_tuned_model,
                                                            messages=QUESTION)):  # fmt: skip
            with pytest.raises(openai.NotFoundError):
                call()
        assert list(team_b.fine_tuning.jobs.list()) == []
        assert done.fine_tuned_model not in {m.id for m in team_b.models.list()}
        assert [j.id for j in team_a.fine_tuning.jobs.list()] == [job.id]
    except BaseException:
        diagnose(maap, ours, job_id)
        raise


def check_fetched_from_the_gateway(cluster: Cluster, namespace: str, job_id: str, file_id: str):
    """The FineTuneJob's data set is the gateway's signed URL, and the fetch pod read it
    there: its log names the URL and the rows, the gateway's log the 200 it answered."""
    obj = cluster.get("finetunejob", job_id, "-n", namespace)
    url = obj["spec"]["dataset"]["path"]
    assert url.startswith(f"{INTERNAL_URL}/internal/files/{namespace}/{file_id}?"), url
    assert "sig=" in url and "expires=" in url, url
    fetched = [c for c in obj["status"]["conditions"] if c["type"] == "Fetched"]
    assert fetched and fetched[0]["status"] == "True", obj["status"]["conditions"]
    [pod] = cluster.pods(
        namespace, f"maap.dev/finetunejob={job_id},app.kubernetes.io/component=fetch"
    )
    # The fetch stage's summary line: what it downloaded, from where, and what it checked.
    log = cluster.logs(namespace, pod["metadata"]["name"])
    summary = next((json.loads(x) for x in log.splitlines() if x.startswith('{"dataset"')), None)
    assert summary, log
    got = summary["dataset"]
    # The signed link's query string is a credential: the fetch log shows the URL without it.
    assert got["location"] == shown_location(url) and got["rows"] == ROWS, got
    assert "sig=" not in log, log
    assert got["sha256"] == obj["spec"]["dataset"]["sha256"], (got, obj["spec"]["dataset"])
    gateway_log = cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"deployment/{GATEWAY}").stdout
    served = [x for x in gateway_log.splitlines()
              if f"GET /internal/files/{namespace}/{file_id}" in x and " 200" in x]  # fmt: skip
    assert served, gateway_log[-3000:]
    assert "sig=" not in gateway_log, [x for x in gateway_log.splitlines() if "sig=" in x]
    RESULTS["fetched"] = {"rows": got["rows"], "bytes": got["bytes"]}


def check_events_and_checkpoints(client: openai.OpenAI, job_id: str) -> None:
    """One metrics event per logged step (from the history ConfigMap the operator fills from
    the trainer's progress), the operator's phase Events in order, and the checkpoints."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=200).data
    losses = {
        e.data["step"]: e.data["train_loss"]
        for e in events
        if e.type == "metrics" and "train_loss" in e.data
    }
    steps = set(losses)
    assert set(range(1, STEPS + 1)) <= steps, steps
    phases = [e.message.split(":")[0] for e in reversed(events) if e.type == "message"]
    pipeline = ["Fetching", "Training", "Exporting", "Serving"]
    assert [p for p in dict.fromkeys(phases) if p in pipeline] == pipeline, phases
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
    numbers = [c.step_number for c in checkpoints]
    assert numbers and set(numbers) <= {3, STEPS}, numbers
    assert all(c.metrics.train_loss is not None for c in checkpoints), checkpoints
    RESULTS["metricsSteps"] = sorted(steps)
    RESULTS["checkpointSteps"] = numbers
    RESULTS["trainLoss"] = [round(losses[step], 4) for step in sorted(losses)]


def chat_through_the_gateway(team_a: openai.OpenAI, model: str) -> None:
    """Whole and streamed, to the job's real server; the stream arrives as generated."""
    listed = {m.id for m in team_a.models.list()}
    assert model in listed and MODEL in listed, listed
    started = time.monotonic()
    answer = team_a.chat.completions.create(model=model, messages=QUESTION, max_tokens=24,
                                            temperature=0)  # fmt: skip
    RESULTS["wholeAnswerSeconds"] = round(time.monotonic() - started, 2)
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0, answer
    started = time.monotonic()
    arrivals, pieces = [], []
    stream = team_a.chat.completions.create(model=model, messages=QUESTION, max_tokens=48,
                                            temperature=0, stream=True)  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) >= 3, pieces
    # Passed through as generated, not buffered to the end: the pieces arrive spread over the
    # decode (a token takes milliseconds here; a buffered body's events parse in microseconds).
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(gaps) / len(gaps) > 0.003, arrivals
    RESULTS["firstTokenSeconds"] = round(arrivals[0], 3)
    RESULTS["streamSeconds"] = round(arrivals[-1], 3)
    RESULTS["streamChunks"] = len(pieces)
    RESULTS["answer"] = "".join(pieces)
    say(f"streamed {len(pieces)} chunks, first after {arrivals[0]:.3f}s: {''.join(pieces)!r}")


def check_the_console(browser, base: str, key: str, other_key: str, job_id: str, model: str):
    """The gateway's console over the cluster backend, in Chromium: the job's row (its
    namespace, phase), its page (the curve from the history ConfigMap, the conditions
    from status), the playground answering through the gateway to the job's pod, and
    nothing of it for the other tenant."""
    from playwright.sync_api import expect

    api = httpx.Client(base_url=f"{base}/v1", headers={"Authorization": f"Bearer {key}"},
                       timeout=60)  # fmt: skip
    job = api.get(f"/fine_tuning/jobs/{job_id}").json()
    history = api.get(f"/fine_tuning/jobs/{job_id}/history").json()
    # Every stage's pod reports to the operator: the export's summary and artifacts too.
    exported, artifacts = job["maap"]["export"], job["maap"]["artifacts"]
    assert exported and exported["precision"] == "int8" and exported["sizeBytes"] > 0, job["maap"]
    assert artifacts["onnxModel"] == "/workspace/output/onnx", artifacts
    RESULTS["export"] = exported
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"{base}/console/")
        sign_in(page, key)
        row = page.locator(f'tr[data-job="{job_id}"]')
        expect(row.get_by_role("cell").nth(1)).to_have_text(job["organization_id"])
        expect(row.locator("[data-status]")).to_have_text("succeeded · Serving")
        row.get_by_role("link", name=job_id).click()
        expect(page.get_by_role("heading", name=job_id)).to_be_focused()
        chart = page.get_by_role("img", name="Training and eval loss curve")
        steps = ",".join(str(p["step"]) for p in history["points"])
        expect(chart).to_have_attribute("data-steps", steps)
        for condition in job["maap"]["conditions"]:
            cells = page.locator(f'tr[data-condition="{condition["type"]}"] td')
            expect(cells.nth(1)).to_have_text(condition["status"])
        expect(page.locator(".export")).to_contain_text("int8")

        page.goto(f"{base}/console/#/playground")
        expect(page.get_by_label("Model", exact=True)).to_have_value(model)
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("24")
        page.get_by_label("Message").fill(QUESTION[0]["content"])
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=120_000)
        answer = page.locator('li[data-role="assistant"] p').inner_text().strip()
        direct = api.post(
            "/chat/completions",
            json={"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0},
        )
        assert answer == direct.json()["choices"][0]["message"]["content"].strip()
        RESULTS["consoleAnswer"] = answer

        # The other tenant signs in and sees no job, and not this one's page.
        page.evaluate("sessionStorage.clear()")
        page.goto(f"{base}/console/")
        sign_in(page, other_key)
        expect(page.get_by_text("No fine-tuning jobs yet")).to_be_visible()
        page.goto(f"{base}/console/#/jobs/{job_id}")
        expect(page.get_by_role("alert")).to_contain_text("no fine-tuning job with id")
    finally:
        page.close()
