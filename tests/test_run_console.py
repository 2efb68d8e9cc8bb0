"""`maap run`'s console without training: the run's job as the gateway reads it, stage by
stage, and the console's HTTP API over it (its key, its history, what it refuses).

The console over a real run (training, the growing curve, the playground in Chromium) is
tests/test_e2e.py's `maap run`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from maap.gateway import jobs
from maap.local.run_console import RunConsole, bind
from maap.local.run_job import RunBackend, RunJob
from maap.manifest import load_manifest
from maap_api.history import LogPoint, append_history
from maap_api.results import TrainedMetrics
from maap_trainer.progress import ProgressReport, write_progress

from tests.conftest import EXAMPLE_MANIFEST, PIRATE_DATA

TOKEN = "run-token-0123456789abcdef"


@pytest.fixture
def run(tmp_path: Path) -> RunJob:
    doc = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    doc["spec"]["dataset"]["path"] = str(PIRATE_DATA / "train.jsonl")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    output = tmp_path / "out" / doc["metadata"]["name"]
    output.mkdir(parents=True)
    return RunJob(load_manifest(manifest), output)


@pytest.fixture
def console(run: RunJob) -> Iterator[str]:
    shown = RunConsole(run, TOKEN)
    url = shown.start("127.0.0.1", 0)
    try:
        yield url.removesuffix("/console/")
    finally:
        shown.stop()


def state(run: RunJob) -> dict:
    found = RunBackend(run).get("default", run.name)
    assert found is not None
    return jobs.openai_job(found)


def test_the_run_reads_as_a_job_stage_by_stage(run: RunJob) -> None:
    assert state(run)["status"] == "queued"
    run.stage_started("fetch")
    assert state(run)["status"] == "validating_files"
    run.stage_finished("fetch", None)
    run.stage_started("train")
    # The live progress comes from the run's progress file, as a local gateway job's does.
    write_progress(run.output_dir, ProgressReport(stage="training", step=3, total_steps=10,
                                                  loss=1.25))  # fmt: skip
    job = state(run)
    assert job["status"] == "running" and job["maap"]["phase"] == "Training"
    assert job["maap"]["progress"]["step"] == 3 and job["maap"]["progress"]["totalSteps"] == 10
    run.stage_finished("train", "metrics", TrainedMetrics(eval_loss_before=2.0, eval_loss_after=1.0,
                                                          steps=10))  # fmt: skip
    assert state(run)["maap"]["artifacts"] is None, "nothing published yet"
    (run.output_dir / "adapter").mkdir()
    (run.output_dir / "adapter" / "adapter_config.json").write_text("{}")
    run.stage_finished("train", None)
    assert state(run)["maap"]["artifacts"] == {"adapter": str(run.output_dir / "adapter")}
    run.stage_started("export")
    run.stage_finished("export", None)
    run.serving_starting()
    assert state(run)["status"] == "running" and state(run)["fine_tuned_model"] is None
    run.serving_ready("http://127.0.0.1:8000", TOKEN)
    job = state(run)
    assert job["status"] == "succeeded" and job["finished_at"] is not None
    assert job["maap"]["metrics"] == {"evalLossBefore": 2.0, "evalLossAfter": 1.0, "steps": 10}
    assert job["maap"]["progress"] is None, "a finished job has no progress"
    conditions = {c["type"]: c["status"] for c in job["maap"]["conditions"]}
    assert conditions == {"Fetched": "True", "Trained": "True", "Exported": "True",
                          "ServingReady": "True"}  # fmt: skip
    served = RunBackend(run).served_models("default")
    assert [(m.name, m.upstream, m.upstream_model, m.token) for m in served] == [
        (job["fine_tuned_model"], "http://127.0.0.1:8000", run.name, TOKEN)
    ]
    assert RunBackend(run).served_models("team-a") == []
    messages = [e.message for e in RunBackend(run).events("default", run.name)]
    assert messages[0] == "Fine-tuning job started" and "successfully completed" in messages[-1]


def test_a_failed_stage_fails_the_job_with_its_reason(run: RunJob) -> None:
    run.stage_started("train")
    run.failed("TrainFailed", "spec.training.batchSize: out of memory at batch size 64")
    job = state(run)
    assert job["status"] == "failed" and job["finished_at"] is not None
    assert "out of memory" in job["error"]["message"]
    events = RunBackend(run).events("default", run.name)
    assert events[-1].level == "error" and "out of memory" in events[-1].message


def test_without_serving_the_run_succeeds(run: RunJob) -> None:
    for stage in ("fetch", "train", "export"):
        run.stage_started(stage)
        run.stage_finished(stage, None)
    run.succeeded()
    job = state(run)
    assert job["status"] == "succeeded" and job["maap"]["phase"] == "Succeeded"
    assert RunBackend(run).served_models("default") == []


def test_the_console_asks_for_the_servings_token_and_shows_the_run(
    run: RunJob, console: str
) -> None:
    page = httpx.get(f"{console}/console/", timeout=10)
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert httpx.get(f"{console}/v1/fine_tuning/jobs", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.get(f"{console}/v1/fine_tuning/jobs", headers=wrong, timeout=10).status_code == 401

    api = httpx.Client(base_url=f"{console}/v1", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=10)  # fmt: skip
    listed = api.get("/fine_tuning/jobs").json()["data"]
    assert [(j["id"], j["status"], j["organization_id"]) for j in listed] == [
        (run.name, "queued", "default")
    ]
    assert api.get("/fine_tuning/jobs/ftjob-someone-else").status_code == 404

    # The curve's points are the run's history file, as the train stage appends it.
    run.stage_started("train")
    for step in (1, 2, 3):
        append_history(
            run.output_dir, LogPoint(step=step, time=time.time(), train_loss=3 - step / 2)
        )
    history = api.get(f"/fine_tuning/jobs/{run.name}/history").json()
    assert [(p["step"], p["train_loss"]) for p in history["points"]] == [(1, 2.5), (2, 2.0),
                                                                         (3, 1.5)]  # fmt: skip
    assert api.get(f"/fine_tuning/jobs/{run.name}").json()["status"] == "running"

    # A run's console creates, pauses and cancels nothing, and says where that is done.
    for path in (f"/fine_tuning/jobs/{run.name}/pause", f"/fine_tuning/jobs/{run.name}/cancel"):
        refused = api.post(path)
        assert refused.status_code == 405, refused.text
        assert "maap gateway --local" in refused.json()["error"]["message"]
    upload = api.post("/files", files={"file": ("a.jsonl", b'{"text": "x"}\n')},
                      data={"purpose": "fine-tune"})  # fmt: skip
    assert upload.status_code == 200, upload.text
    asked = {"model": "smollm2-135m-instruct", "training_file": upload.json()["id"]}
    created = api.post("/fine_tuning/jobs", json=asked)
    assert created.status_code == 405 and created.json()["error"]["code"] == "read_only"

    # Until the run serves, no model is listed but the fine-tunable bases.
    assert not [m for m in api.get("/models").json()["data"] if m["id"].startswith("ft:")]
    run.serving_ready("http://127.0.0.1:1", TOKEN)
    models = [m["id"] for m in api.get("/models").json()["data"]]
    assert state(run)["fine_tuned_model"] in models


def test_an_open_console_when_the_server_asks_no_token(run: RunJob) -> None:
    shown = RunConsole(run, None)
    base = shown.start("127.0.0.1", 0).removesuffix("/console/")
    try:
        listed = httpx.get(f"{base}/v1/fine_tuning/jobs", timeout=10).json()["data"]
        assert [j["id"] for j in listed] == [run.name]
    finally:
        shown.stop()


def test_a_taken_console_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with bind("127.0.0.1", port) as sock:
            assert sock.getsockname()[1] not in (port, 0)
