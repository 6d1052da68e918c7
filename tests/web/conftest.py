"""Headless Chromium for the demo page tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser builds are never downloaded (``playwright install`` is not used):
``make test`` installs Debian's package (mk/web.mk) and the tests launch it by path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As root, with no network but loopback: no sandbox, no GPU, and none of Chromium's background
# connections (they are refused here, many at a time, and slow every start).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def browser(tmp_path_factory) -> Iterator[object]:
    try:
        from playwright import sync_api as playwright_api
    except ImportError:
        pytest.fail("the `web` extra (playwright) is not installed: run `make venv`")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (Debian's chromium package)")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, tmp_path: Path) -> Iterator[object]:
    """A fresh page (its own context: no cache or storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()
