"""The console in tests: Debian's chromium driven by Playwright, and what a person does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium (Playwright's own browser downloads cannot work here)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: scripts/install-system-packages.sh installs chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # As root there is no user namespace sandbox; the pages are our own.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


def sign_in(page: Any, key: str) -> None:
    """As a person does: the key field has the focus, type, press Enter."""
    from playwright.sync_api import expect

    field = page.get_by_label("API key")
    expect(field).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")


def shoot(page: Any, name: str) -> None:
    """MAAP_CONSOLE_SCREENSHOTS=DIR: a full-page screenshot there (the README's)."""
    folder = os.environ.get("MAAP_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
