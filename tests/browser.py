"""Headless Chromium for the attention viewer's browser test and the README screenshot: Debian's
chromium (`apt-get install chromium`) driven by Playwright for Python (the dev extras), offline:
no browser download, no background requests."""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
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


def open_page(browser, url: str, width: int = 1000, height: int = 800) -> Opened:
    page = browser.new_page(viewport={"width": width, "height": height})
    opened = Opened(page)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on(
        "response",
        lambda r: opened.errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
    )
    page.goto(url)
    return opened


def open_file(browser, path: str | os.PathLike, width: int = 1000, height: int = 800) -> Opened:
    return open_page(browser, Path(path).resolve().as_uri(), width, height)


def check_screenshot(opened: Opened, out: Path, limit: int = 200_000) -> None:
    """A README picture: stops the script if its page reported errors, or if the PNG is over
    `limit` bytes (it stays small in the repository)."""
    if opened.errors:
        sys.exit(f"the page reported errors: {opened.errors}")
    size = out.stat().st_size
    print(f"wrote {out} ({size:,} bytes)")
    if size > limit:
        sys.exit(f"{out} is over {limit:,} bytes: make the picture smaller")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # no line per request
        pass


@contextmanager
def served(directory: str | os.PathLike) -> Iterator[str]:
    """`directory` served over HTTP on this machine, as `python -m http.server` would; yields
    the base URL (ending in /)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
