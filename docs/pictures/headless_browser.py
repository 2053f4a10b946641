"""A headless Chromium for screenshots, kept off the network.

Nothing is downloaded: the browser is the system's Chromium (Playwright's own builds are a
download) driven by Playwright, a dev dependency. Every page refuses requests that would leave
this machine (:func:`new_page`), so that fonts or telemetry cannot hang a screenshot.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

VIEWPORT = {"width": 1400, "height": 900}
"""The window every page opens in (CSS pixels): the pictures are 1400 pixels wide."""
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""With the network closed, Chromium hangs on connections it tries at start without these
(the same flags as tests/integration/test_pipeline_pinned_version.py)."""


def chromium_path() -> str:
    """The system's Chromium (Playwright's own browsers are a download, which we never do)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: apt-get install chromium")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's ``Browser``), closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def new_page(browser: Any, width: int = VIEWPORT["width"], scale: float = 1.0) -> Iterator[Any]:
    """A page in a fresh context (no stored state), ``width`` CSS pixels wide; a ``scale``
    below 1 renders it smaller, as a browser zoomed out does."""
    height = round(VIEWPORT["height"] / scale)
    context = browser.new_context(
        viewport={"width": width, "height": height}, device_scale_factor=scale
    )
    context.route(re.compile(r"^(?!(file:|data:|blob:|http://127\.0\.0\.1[:/])).*"), _offline)
    try:
        yield context.new_page()
    finally:
        context.close()


def _offline(route: Any) -> None:
    """Refuse a request that would leave this machine (fonts, telemetry): no network needed."""
    route.abort()
