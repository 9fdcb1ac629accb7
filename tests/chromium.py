"""Headless Debian chromium driven by playwright (never `playwright install`), for the browser tests.

One playwright driver per test session (its sync API cannot be entered twice in one process); the
``browser`` and ``gl_browser`` fixtures (tests/conftest.py) launch their chromium from it. `make test`
installs chromium; where the variable CI is set, a missing browser fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: without the background-networking flags chromium's own connections are refused by a closed network
QUIET_ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"]
#: WebGL2 on SwiftShader, for the 3D viewer (the usual --disable-gpu turns WebGL off)
GL_ARGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
           *QUIET_ARGS]


@contextlib.contextmanager
def driver():
    """The session's playwright driver; skips (fails on CI) when chromium or playwright is missing."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing; `make browser` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="install the dev extra: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        yield playwright


@contextlib.contextmanager
def launch(playwright, args: list[str]):
    """A chromium launched with ``args`` from the session's driver."""
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        yield launched
    finally:
        launched.close()


def open_page(browser, url: str, allowed: tuple[str, ...], size=(1200, 820)):
    """``(page, errors)``: the page loaded, and every console error, page error and request to an address
    outside ``allowed`` (prefixes) it raised."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith(allowed) else
            errors.append(f"request outside {allowed}: {request.url}"))
    page.goto(url, wait_until="load")
    return page, errors
