"""The console in headless Chromium over queued jobs (no training: seconds), so the sign-in,
tenancy and navigation are checked by `make test-fast` too; the real job's curve and the
playground are in tests/test_e2e.py (`maap run`'s console) and tests/test_gateway_local.py
(side by side with the base model), both slow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.files import FileStore
from maap.gateway.local_backend import LocalBackend
from maap.gateway.tenancy import KeyRing, OpenAccess, StaticKeys

from tests.console_helpers import browser, shoot, sign_in
from tests.gateway_helpers import KEY_A, KEY_B, KEYS, serving_app

__all__ = ["browser"]  # the fixture, imported for pytest

TRAIN = Path(__file__).resolve().parents[1] / "examples" / "pirate-chat" / "train.jsonl"


def queued_gateway(root: Path, keys: KeyRing, key: str | None) -> Iterator[tuple[str, str]]:
    """A gateway whose worker is not started, with one queued job: (its URL, the job id)."""
    files = FileStore(root / "files")
    backend = LocalBackend(root, files, serve=False)
    app = create_app(backend, keys, files, GatewaySettings(b"k" * 32, run_backend=False))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with serving_app(app) as base:
        upload = httpx.post(f"{base}/files", headers=headers, data={"purpose": "fine-tune"},
                            files={"file": ("train.jsonl", TRAIN.read_bytes())})  # fmt: skip
        body = {"model": "smollm2-135m-instruct", "training_file": upload.json()["id"],
                "maap": {"method": {"type": "qlora"}}}  # fmt: skip
        job = httpx.post(f"{base}/fine_tuning/jobs", headers=headers, json=body).json()
        yield base.removesuffix("/v1"), job["id"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    yield from queued_gateway(tmp_path_factory.mktemp("keyed"), StaticKeys(KEYS), KEY_A)


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    yield from queued_gateway(tmp_path_factory.mktemp("open"), OpenAccess(), None)


def test_sign_in_list_job_page_and_sign_out(browser, keyed: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    url, job_id = keyed
    page = browser.new_page()
    try:
        page.goto(f"{url}/console/")
        sign_in(page, "sk-wrong-0123456789abcdef")
        expect(page.get_by_role("alert")).to_contain_text("refused")
        assert job_id not in page.content()
        assert page.evaluate("sessionStorage.getItem('maap.apiKey')") is None
        shoot(page, "login")
        # A stale key kept from before (revoked since) is dropped the same way.
        page.evaluate("sessionStorage.setItem('maap.apiKey', 'sk-revoked-0123456789abcdef')")
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text("refused")
        assert job_id not in page.content() and page.get_by_role("table").count() == 0

        sign_in(page, KEY_A)
        row = page.locator(f'tr[data-job="{job_id}"]')
        expect(row.locator("[data-status]")).to_have_text("queued · Pending")
        expect(row.get_by_role("cell").nth(3)).to_have_text("qlora")
        row.get_by_role("link", name=job_id).focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name=job_id)).to_be_focused()
        expect(page.locator("figcaption")).to_have_text("Loss per step: 0 points")

        # The key lasts for the tab: a reload stays signed in; signing out forgets it.
        page.reload()
        expect(page.get_by_role("heading", name=job_id)).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("API key")).to_be_focused()
        assert page.evaluate("sessionStorage.getItem('maap.apiKey')") is None
        assert job_id not in page.content()
    finally:
        page.close()


def test_the_other_tenant_sees_none_of_it(browser, keyed: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    url, job_id = keyed
    page = browser.new_page()
    try:
        page.goto(f"{url}/console/#/jobs/{job_id}")
        sign_in(page, KEY_B)
        expect(page.get_by_role("alert")).to_contain_text(f"no fine-tuning job with id '{job_id}'")
        page.get_by_role("link", name="Jobs", exact=True).click()
        expect(page.get_by_text("No fine-tuning jobs yet")).to_be_visible()
    finally:
        page.close()


def test_an_open_gateway_needs_no_sign_in(browser, open_gateway: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    url, job_id = open_gateway
    page = browser.new_page()
    try:
        page.goto(f"{url}/console/")
        expect(page.locator(f'tr[data-job="{job_id}"]')).to_be_visible()
        assert page.get_by_label("API key").count() == 0
        assert page.get_by_role("button", name="Sign out").count() == 0
    finally:
        page.close()


def test_a_long_list_shows_the_newest_hundred_and_more_on_demand(
    browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from playwright.sync_api import expect

    root = tmp_path_factory.mktemp("crowded")
    files = FileStore(root / "files")
    backend = LocalBackend(root, files, serve=False)
    app = create_app(backend, OpenAccess(), files, GatewaySettings(b"k" * 32, run_backend=False))
    with serving_app(app) as base:
        upload = httpx.post(f"{base}/files", data={"purpose": "fine-tune"},
                            files={"file": ("train.jsonl", TRAIN.read_bytes())})  # fmt: skip
        body = {"model": "smollm2-135m-instruct", "training_file": upload.json()["id"]}
        created = [httpx.post(f"{base}/fine_tuning/jobs", json=body).json()["id"]
                   for _ in range(105)]  # fmt: skip
        page = browser.new_page()
        try:
            page.goto(f"{base.removesuffix('/v1')}/console/")
            rows = page.locator("tr[data-job]")
            expect(rows).to_have_count(100)
            expect(rows.first).to_have_attribute("data-job", created[-1])  # newest first
            page.get_by_role("button", name="Show older jobs").click()
            expect(rows).to_have_count(105)
            expect(rows.last).to_have_attribute("data-job", created[0])
            assert page.get_by_role("button", name="Show older jobs").count() == 0
        finally:
            page.close()
