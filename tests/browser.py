"""Headless Chromium for the attention viewer's browser test and the README screenshot: Debian's
chromium (`apt-get install chromium`) driven by Playwright for Python (the dev extras), offline:
no browser download, no background requests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("ATTNLAB_CHROMIUM", "/usr/bin/chromium")
# Playwright adds --headless and its own automation flags; these keep Chromium off the network
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserMissing(RuntimeError):
    pass


@contextmanager
def chromium() -> Iterator:
    """A Playwright Browser on Debian's Chromium; BrowserMissing says what to install."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserMissing(
            "Playwright for Python is missing: `make setup` installs it (the dev extras)"
        ) from None
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserMissing(
            f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (as .ci/run does), "
            "or set ATTNLAB_CHROMIUM to a Chromium binary"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, chromium_sandbox=False, args=ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Opened:
    """A page opened from disk, with every URL it requested and every error it reported."""

    page: object
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def open_file(browser, path: str | os.PathLike, width: int = 1000, height: int = 800) -> Opened:
    page = browser.new_page(viewport={"width": width, "height": height})
    opened = Opened(page)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.goto(Path(path).resolve().as_uri())
    return opened
