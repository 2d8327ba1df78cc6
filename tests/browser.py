"""Debian's chromium, headless, as every web page test drives it (Playwright, no download)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

CHROMIUM = Path(os.environ.get("PARA_ATTN_CHROMIUM", "/usr/bin/chromium"))
INSTALL = "apt-get install -y --no-install-recommends chromium fonts-liberation"
# No sandbox: CI runs as root, where chromium refuses its sandbox. The rest keep a browser
# on a machine without network from reaching out to Google's services on its own.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 60_000  # two busy cores: the server, its ranks and a browser share them


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """The browser, closed on exit; a missing chromium fails the test with how to install it."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the web page tests drive Debian's chromium, and {CHROMIUM} is missing: install it with "
            f"`sudo {INSTALL}` (`make test` does this itself when run as root)",
            pytrace=False,
        )
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
