"""The console in headless Chromium (Debian's package, driven by Playwright) against a
running gateway over a real fine-tuning job (SmolLM2 LoRA, a few steps on CPU: slow).

It checks what a person would: a wrong key shows the login and none of the data; the
right key, typed at the focused field, shows the jobs list with the job's phase; the job
page (reached by keyboard) draws one curve point per logged step, growing while the job
trains; the playground streams an answer from the served fine-tune; another tenant's key
does not see the job.

MAAP_CONSOLE_SCREENSHOTS=DIR saves a screenshot of each page there (for the README).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.files import FileStore
from maap.gateway.local_backend import LocalBackend
from maap.gateway.tenancy import StaticKeys

from tests.console_helpers import browser, shoot, sign_in
from tests.gateway_helpers import KEY_A, KEY_B, KEYS, serving_app

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "pirate-chat" / "train.jsonl"
HELDOUT = ROOT / "examples" / "pirate-chat" / "heldout.jsonl"
STEPS = 8
# Exported (int8, no parity gate: tests/test_gateway_local.py covers it) and served, so
# the playground has a fine-tuned model to stream from.
SHORT = {
    "training": {"maxSteps": STEPS, "loggingSteps": 1, "checkpointSteps": 4,
                 "maxSeqLength": 128, "batchSize": 4},
    "export": {"precision": "int8", "parity": {"enabled": False}},
}  # fmt: skip
WRONG_KEY = "sk-not-a-key-of-this-gateway-000"


@dataclass
class Gateway:
    url: str  # the gateway's root, e.g. http://127.0.0.1:PORT
    backend: LocalBackend
    job_id: str
    client: openai.OpenAI


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    state = tmp_path_factory.mktemp("console-e2e")
    files = FileStore(state / "files")
    backend = LocalBackend(state, files)
    app = create_app(backend, StaticKeys(KEYS), files, GatewaySettings(b"k" * 32))
    with serving_app(app) as base:
        client = openai.OpenAI(base_url=base, api_key=KEY_A, max_retries=0)
        rows = "\n".join(TRAIN.read_text().splitlines()[:40]) + "\n"
        training = client.files.create(file=("pirate.jsonl", rows.encode()), purpose="fine-tune")
        validation = client.files.create(file=HELDOUT.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=training.id,
            validation_file=validation.id, suffix="pirate", extra_body={"maap": SHORT},
        )  # fmt: skip
        yield Gateway(base.removesuffix("/v1"), backend, job.id, client)


def test_a_wrong_key_shows_the_login_and_none_of_the_data(browser, gateway: Gateway) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    try:
        # Straight to the job's page, with a key the gateway refuses.
        page.goto(f"{gateway.url}/console/#/jobs/{gateway.job_id}")
        sign_in(page, WRONG_KEY)
        expect(page.get_by_role("alert")).to_contain_text("refused")
        expect(page.get_by_label("API key")).to_be_visible()
        assert gateway.job_id not in page.content()
        assert page.evaluate("sessionStorage.getItem('maap.apiKey')") is None
        shoot(page, "login")

        # A stale key kept from before (revoked since) is dropped the same way.
        page.evaluate(f"sessionStorage.setItem('maap.apiKey', '{WRONG_KEY}')")
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text("refused")
        assert gateway.job_id not in page.content()
        assert page.get_by_role("table").count() == 0
    finally:
        page.close()


def test_the_list_and_the_growing_curve_of_a_real_job(browser, gateway: Gateway) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"{gateway.url}/console/")
        sign_in(page, KEY_A)
        expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_focused()
        row = page.locator(f'tr[data-job="{gateway.job_id}"]')
        cells = row.get_by_role("cell")
        expect(cells.nth(1)).to_have_text("team-a")
        expect(cells.nth(2)).to_have_text("smollm2-135m-instruct")
        expect(cells.nth(3)).to_have_text("lora")
        # The list is live: it shows the job reach training without a reload.
        status = row.locator("[data-status]")
        expect(status).to_have_attribute("data-phase", "Training", timeout=300_000)
        expect(status).to_have_text("running · Training")
        shoot(page, "jobs")

        # To the job's page by keyboard: its heading takes the focus.
        row.get_by_role("link", name=gateway.job_id).focus()
        page.keyboard.press("Enter")
        heading = page.get_by_role("heading", name=gateway.job_id)
        expect(heading).to_be_focused()
        chart = page.get_by_role("img", name="Training and eval loss curve")
        job_status = page.locator(".facts [data-status]")

        # The curve grows while the job trains: several sizes seen before it finishes.
        sizes_while_running: list[int] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            state = job_status.get_attribute("data-status")
            steps = chart.get_attribute("data-steps") or ""
            size = len(steps.split(",")) if steps else 0
            if state in ("succeeded", "failed", "cancelled"):
                break
            if state == "running" and size and size not in sizes_while_running:
                sizes_while_running.append(size)
            time.sleep(0.3)
        expect(job_status).to_have_attribute("data-status", "succeeded", timeout=5_000)
        assert len(sizes_while_running) >= 2, f"the curve did not grow: {sizes_while_running}"
        assert sizes_while_running == sorted(sizes_while_running)

        # One point per logged step (and the evals before and after), as the job's history.
        history = gateway.backend.history("team-a", gateway.job_id)
        logged = [p.step for p in history.points]
        assert [p.step for p in history.points if p.train_loss is not None] == list(
            range(1, STEPS + 1)
        )
        expect(chart).to_have_attribute("data-steps", ",".join(map(str, logged)))
        expect(page.locator("figcaption")).to_have_text(f"Loss per step: {len(logged)} points")
        page.get_by_text("The points as a table").click()
        expect(page.locator("table.points tbody tr")).to_have_count(len(logged))
        first = page.locator("table.points tbody tr").first.get_by_role("cell")
        assert history.points[0].valid_loss is not None, "the eval before training"
        expect(first.nth(2)).to_have_text(f"{round(history.points[0].valid_loss, 4):g}")
        # The canvas was drawn, at the size of its box.
        assert page.locator(".chart canvas").count() == 1
        expect(page.get_by_text("Eval loss before → after")).to_be_visible()

        # The export's figures and the job's conditions, as its status holds them.
        status_now = gateway.client.fine_tuning.jobs.retrieve(gateway.job_id).maap
        exported = status_now["export"]
        assert exported["precision"] == "int8" and exported["sizeBytes"] > 0, exported
        size = page.locator(".export dd[data-bytes]")
        expect(size).to_have_attribute("data-bytes", str(exported["sizeBytes"]))
        expect(size).to_contain_text("MiB")
        expect(page.locator(".export")).to_contain_text("int8")
        expect(page.locator(".export")).to_contain_text("Parity gatenot run")  # off in SHORT
        for condition in status_now["conditions"]:
            row = page.locator(f'tr[data-condition="{condition["type"]}"] td')
            expect(row.nth(1)).to_have_text(condition["status"])
        expect(page.locator('tr[data-condition="Trained"] td').nth(1)).to_have_text("True")
        shoot(page, "job")
    finally:
        page.close()


def test_another_tenants_key_does_not_see_the_job(browser, gateway: Gateway) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    try:
        page.goto(f"{gateway.url}/console/")
        sign_in(page, KEY_B)
        expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
        expect(page.get_by_text("No fine-tuning jobs yet")).to_be_visible()
        page.goto(f"{gateway.url}/console/#/jobs/{gateway.job_id}")
        expect(page.get_by_role("alert")).to_contain_text("no fine-tuning job with id")
        assert page.locator(".chart").count() == 0
    finally:
        page.close()


def test_the_playground_streams_an_answer_from_the_fine_tuned_model(browser, gateway) -> None:
    from playwright.sync_api import expect

    job = gateway.client.fine_tuning.jobs.retrieve(gateway.job_id)
    assert job.status == "succeeded" and job.fine_tuned_model, job
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"{gateway.url}/console/#/playground")
        sign_in(page, KEY_A)
        expect(page.get_by_role("heading", name="Playground")).to_be_focused()
        # The tuned model is offered first; each setting has its label.
        expect(page.get_by_label("Model", exact=True)).to_have_value(job.fine_tuned_model)
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("48")
        page.get_by_label("Message").fill("What is the capital of France?")
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
        final = answer.inner_text()
        assert len(seen) >= 3, f"the answer did not stream: lengths {seen}"
        # The same model, asked the same greedily through the API, says the same.
        direct = gateway.client.chat.completions.create(
            model=job.fine_tuned_model, temperature=0, max_tokens=48,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )  # fmt: skip
        assert final.strip() == (direct.choices[0].message.content or "").strip()
        assert page.get_by_role("alert").count() == 0
        shoot(page, "playground")
    finally:
        page.close()


def test_the_playground_compares_the_fine_tune_with_its_base_model(browser, gateway) -> None:
    from playwright.sync_api import expect

    job = gateway.client.fine_tuning.jobs.retrieve(gateway.job_id)
    listed = {m.id: m for m in gateway.client.models.list().data}
    base = getattr(listed[job.fine_tuned_model], "parent", None)
    assert base == "smollm2-135m-instruct", listed[job.fine_tuned_model]
    question = "Name a fruit."
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{gateway.url}/console/#/playground")
        sign_in(page, KEY_A)
        expect(page.get_by_label("Model", exact=True)).to_have_value(job.fine_tuned_model)
        compare = page.get_by_label("Compare with its base model")
        expect(compare).to_be_enabled()
        compare.check()
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("24")
        page.get_by_label("Message").fill(question)
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=120_000)

        # Each column answered with its own model: the API's greedy answer of that model.
        columns = page.locator("section.column")
        expect(columns).to_have_count(2)
        for name in (job.fine_tuned_model, base):
            column = page.locator(f'section.column[data-model="{name}"]')
            answer = column.locator('li[data-role="assistant"] p')
            direct = gateway.client.chat.completions.create(
                model=name, temperature=0, max_tokens=24,
                messages=[{"role": "user", "content": question}],
            )  # fmt: skip
            expected = (direct.choices[0].message.content or "").strip()
            assert expected, f"{name} answered nothing"
            assert answer.inner_text().strip() == expected, name
        assert page.get_by_role("alert").count() == 0
        shoot(page, "playground-compare")
    finally:
        page.close()
