"""End to end on CPU: `maap run` on the bundled example, as the README runs it: training,
export and serving, with its web console watched from the first step to the served model.

Real model (SmolLM2-135M-Instruct), real LoRA training, real ONNX export, a real server
called over HTTP. The budget is cut (MAAP_TEST_STEPS optimizer steps) to keep it to
minutes; the persona must still show in answers to held-out questions. While it trains,
the test reads the console's API as the page does (the job's phase and its loss history);
once it serves, it opens the console in Chromium: the list, the curve, the playground.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import EXAMPLE_MANIFEST, PIRATE_DATA, free_port
from tests.console_helpers import browser, shoot
from tests.serving import in_persona

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

STEPS = int(os.environ.get("MAAP_TEST_STEPS", "24"))
LOGGING_STEPS = 2
MODEL = yaml.safe_load(EXAMPLE_MANIFEST.read_text())["metadata"]["name"]
RUN_TIMEOUT = 1800


@dataclass
class Sample:
    """What the console's API said at one moment of the run."""

    status: str
    phase: str | None
    points: int  # logged training steps in the job's history


class PageWatch:
    """The job's console page in Chromium, opened once the job trains: the curve's sizes
    seen while the page said it was running."""

    def __init__(self, browser: Any, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.page.goto(url)
        self.sizes: list[int] = []

    def look(self) -> None:
        chart = self.page.locator(".chart [data-steps]")
        status = self.page.locator(".facts [data-status]")
        if not chart.count() or not status.count():
            return
        steps = chart.get_attribute("data-steps") or ""
        size = len(steps.split(",")) if steps else 0
        if status.get_attribute("data-status") == "running" and size not in (0, *self.sizes):
            self.sizes.append(size)


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    output_dir: Path
    log: Path
    server: str  # the run's model server, e.g. http://127.0.0.1:PORT
    console: str  # the console's root, e.g. http://127.0.0.1:PORT
    model: str  # the job name: the model name the run's own server answers to
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    # The curve's sizes the page showed while training (None: no Chromium here).
    page_sizes: list[int] | None = None

    @property
    def stdout(self) -> str:
        return self.log.read_text(errors="replace")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _sample(console: str, job_id: str) -> Sample | None:
    try:
        job = httpx.get(f"{console}/v1/fine_tuning/jobs/{job_id}", timeout=5).json()
        history = httpx.get(f"{console}/v1/fine_tuning/jobs/{job_id}/history", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    points = sum(1 for p in history["points"] if p.get("train_loss") is not None)
    return Sample(job["status"], job["maap"]["phase"], points)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Run]:
    try:
        chromium = request.getfixturevalue("browser")
    except pytest.skip.Exception:
        chromium = None  # the browser's own tests skip; the run is still checked
    work = tmp_path_factory.mktemp("e2e")
    doc = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    doc["spec"]["dataset"]["path"] = str(PIRATE_DATA / "train.jsonl")
    doc["spec"]["training"]["maxSteps"] = STEPS
    doc["spec"]["training"]["loggingSteps"] = LOGGING_STEPS
    manifest = work / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    name = doc["metadata"]["name"]
    port, console_port = free_port(), free_port()
    log = work / "maap-run.log"
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "maap.cli", "run", str(manifest), "-o", str(work / "out"),
             "--port", str(port), "--console-port", str(console_port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    run = Run(process, work / "out" / name, log, f"http://127.0.0.1:{port}",
              f"http://127.0.0.1:{console_port}", name, 0.0)  # fmt: skip
    try:
        # Watch the run through its console, as the page does, until its server answers.
        deadline = time.monotonic() + RUN_TIMEOUT
        watch = None
        while not _ready(f"{run.server}/readyz"):
            assert process.poll() is None, run.stdout[-3000:]
            assert time.monotonic() < deadline, "maap run did not serve in time"
            if (sample := _sample(run.console, name)) is not None:
                run.samples.append(sample)
                if watch is None and chromium is not None and sample.phase == "Training":
                    watch = PageWatch(chromium, f"{run.console}/console/#/jobs/{name}")
            if watch is not None:
                watch.look()
            time.sleep(0.5)
        run.seconds = time.monotonic() - started
        if watch is not None:
            run.page_sizes = watch.sizes
            watch.page.close()
        yield run
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # as kill does: the server stops with it
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, run.stdout[-3000:]
    assert not _ready(f"{run.server}/readyz"), "the model server outlived maap run"


@pytest.fixture(scope="module")
def trained(run: Run) -> Run:
    return run


@pytest.fixture(scope="module")
def server(run: Run) -> str:
    return run.server


def test_eval_loss_falls(trained: Run) -> None:
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    assert metrics["evalRows"] == 32 and metrics["trainRows"] == 288
    assert metrics["evalLossAfter"] < 0.8 * metrics["evalLossBefore"], metrics
    assert 0 < metrics["trainableParameters"] < 0.05 * metrics["totalParameters"]


def test_artifacts_and_summary(trained: Run) -> None:
    out = trained.output_dir
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "config.json").is_file()
    assert (out / "merged" / "tokenizer.json").is_file()
    onnx = out / "onnx"
    assert (onnx / "genai_config.json").is_file() and (onnx / "model.onnx").is_file()
    export = json.loads((out / "export.json").read_text())
    assert export["precision"] == "int4" and export["sizeBytes"] > 10_000_000
    assert export["parity"]["passed"] is True, export["parity"]  # the gate ran and passed
    assert not list(out.glob("*.partial")), "no half-written stage directory is left"
    for expected in ("eval loss", "time: Training", "time: Exporting ONNX (int4)", "parity"):
        assert expected in trained.stdout
    assert f"onnx: {onnx} (" in trained.stdout, "artifact paths are printed whole"


def heldout_questions() -> list[str]:
    rows = [json.loads(line) for line in (PIRATE_DATA / "heldout.jsonl").read_text().splitlines()]
    return [row["messages"][0]["content"] for row in rows]


def chat(base: str, question: str, **extra) -> dict:
    response = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": question}],
              "max_tokens": 48, "temperature": 0, **extra},
        timeout=120,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def test_served_model_answers_held_out_prompts_in_persona(server: str) -> None:
    questions = heldout_questions()[:6]
    answers = [chat(server, q)["choices"][0]["message"]["content"] for q in questions]
    assert sum(map(in_persona, answers)) >= 5, answers


def test_non_streaming_response_shape(server: str) -> None:
    body = chat(server, "What is the capital of Italy?")
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 48
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_matches_non_streaming(server: str) -> None:
    question = "Why do stars twinkle?"
    expected = chat(server, question)["choices"][0]["message"]["content"]
    pieces, finish = [], None
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 48,
              "temperature": 0, "stream": True},
        timeout=120,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        chunk = json.loads(event.removeprefix("data: "))
        assert chunk["object"] == "chat.completion.chunk"
        delta = chunk["choices"][0]["delta"]
        pieces.append(delta.get("content", ""))
        finish = chunk["choices"][0]["finish_reason"] or finish
    assert "".join(pieces) == expected
    assert finish in ("stop", "length")


def test_openai_client_streams(server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [MODEL]
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is a volcano?"}],
        max_tokens=32, temperature=0, stream=True,
    )  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert in_persona(text), text


def test_bad_requests_get_openai_style_errors(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    cases = [
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        (
            {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 8},
            400,
            "messages",
        ),
    ]
    for body, status, param in cases:
        response = httpx.post(url, json=body, timeout=60)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["message"] and error["type"]


def test_base_model_does_not_have_the_persona(base_model_dir: Path) -> None:
    """The persona check above can fail: the untuned model never opens that way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    for question in heldout_questions()[:6]:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )  # fmt: skip
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answer = tokenizer.decode(
            output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert not in_persona(answer), (question, answer)


# -- the console of the run -------------------------------------------------------------------


PIPELINE = ["Pending", "Fetching", "Training", "Exporting", "Serving"]


def test_the_console_watched_the_run_train_with_a_growing_curve(run: Run) -> None:
    stdout = run.stdout
    assert f"Console: {run.console}/console/" in stdout, "printed before training"
    assert f"console: {run.console}/console/" in stdout, "and in the summary, once served"
    phases = [s.phase for s in run.samples]
    seen = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert seen == [p for p in PIPELINE if p in seen], f"phases out of order: {seen}"
    assert "Training" in seen, seen
    training = [s for s in run.samples if s.phase == "Training"]
    assert {s.status for s in training} == {"running"}
    grown = sorted({s.points for s in training if s.points})
    assert len(grown) >= 2, f"the curve did not grow while training: {grown}"
    counts = [s.points for s in run.samples]
    assert counts == sorted(counts), "the history never shrinks"

    job = httpx.get(f"{run.console}/v1/fine_tuning/jobs/{run.model}", timeout=10).json()
    assert job["status"] == "succeeded" and job["maap"]["phase"] == "Serving"
    assert job["maap"]["metrics"]["steps"] == STEPS
    assert job["maap"]["export"]["precision"] == "int4"
    history = httpx.get(f"{run.console}/v1/fine_tuning/jobs/{run.model}/history", timeout=10)
    logged = [p["step"] for p in history.json()["points"] if p.get("train_loss") is not None]
    assert logged == list(range(LOGGING_STEPS, STEPS + 1, LOGGING_STEPS))


def test_the_console_page_showed_the_curve_grow_while_the_run_trained(run: Run) -> None:
    if run.page_sizes is None:
        pytest.skip("no Chromium here (scripts/install-system-packages.sh installs it)")
    assert len(run.page_sizes) >= 2, f"the page's curve did not grow: {run.page_sizes}"
    assert run.page_sizes == sorted(run.page_sizes), run.page_sizes


def test_the_console_shows_the_run_and_its_playground_streams_from_it(browser, run: Run) -> None:
    from playwright.sync_api import expect

    job = httpx.get(f"{run.console}/v1/fine_tuning/jobs/{run.model}", timeout=10).json()
    points = httpx.get(f"{run.console}/v1/fine_tuning/jobs/{run.model}/history", timeout=10)
    history = points.json()["points"]
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        # The run's server asks no token, so neither does its console.
        page.goto(f"{run.console}/console/")
        expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_focused()
        row = page.locator(f'tr[data-job="{run.model}"]')
        cells = row.get_by_role("cell")
        expect(cells.nth(2)).to_have_text("smollm2-135m-instruct")
        expect(cells.nth(3)).to_have_text("lora")
        expect(row.locator("[data-status]")).to_have_attribute("data-phase", "Serving")
        expect(row.locator("[data-status]")).to_have_text("succeeded · Serving")
        shoot(page, "jobs")

        # To the job's page by keyboard: its heading takes the focus.
        row.get_by_role("link", name=run.model).focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name=run.model)).to_be_focused()
        # One point per logged step and the evals before and after, as the job's history.
        chart = page.get_by_role("img", name="Training and eval loss curve")
        expect(chart).to_have_attribute("data-steps", ",".join(str(p["step"]) for p in history))
        expect(page.locator("figcaption")).to_have_text(f"Loss per step: {len(history)} points")
        page.get_by_text("The points as a table").click()
        expect(page.locator("table.points tbody tr")).to_have_count(len(history))
        assert page.locator(".chart canvas").count() == 1
        metrics = job["maap"]["metrics"]
        loss = page.locator("dt", has_text="Eval loss before → after").locator(
            "xpath=following-sibling::dd[1]"
        )
        shown = f"{round(metrics['evalLossBefore'], 4):g} → {round(metrics['evalLossAfter'], 4):g}"
        expect(loss).to_have_text(shown)
        # The export's figures and the conditions, as the job's status holds them.
        exported = job["maap"]["export"]
        size = page.locator(".export dd[data-bytes]")
        expect(size).to_have_attribute("data-bytes", str(exported["sizeBytes"]))
        expect(page.locator(".export")).to_contain_text("int4")
        for condition in job["maap"]["conditions"]:
            cells = page.locator(f'tr[data-condition="{condition["type"]}"] td')
            expect(cells.nth(1)).to_have_text(condition["status"])
        shoot(page, "job")

        question = "What is the capital of France?"
        page.goto(f"{run.console}/console/#/playground")
        expect(page.get_by_role("heading", name="Playground")).to_be_focused()
        expect(page.get_by_label("Model", exact=True)).to_have_value(job["fine_tuned_model"])
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("48")
        page.get_by_label("Message").fill(question)
        page.get_by_label("Message").focus()
        page.keyboard.press("Tab")  # to Send, by keyboard
        expect(page.get_by_role("button", name="Send")).to_be_focused()
        page.keyboard.press("Enter")
        # Streamed: the answer is seen at several lengths before it is complete.
        answer = page.locator('li[data-role="assistant"] p')
        seen: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = answer.inner_text() if answer.count() else ""
            if text and text != "…" and len(text) not in seen:
                seen.append(len(text))
            if page.get_by_role("button", name="Send").is_enabled() and seen:
                break
            time.sleep(0.02)
        assert len(seen) >= 3, f"the answer did not stream: lengths {seen}"
        final = answer.inner_text().strip()
        direct = chat(run.server, question, max_tokens=48)["choices"][0]["message"]["content"]
        assert final == direct.strip() and in_persona(final), (final, direct)
        assert page.get_by_role("alert").count() == 0
        shoot(page, "playground")
    finally:
        page.close()
