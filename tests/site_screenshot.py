"""The README's screenshot of the documentation site's tutorial index.

    python tests/site_screenshot.py [--site build/site] [--out docs/tutorials_index.png]

Serves a built site (`make docs`) on this machine and photographs its tutorial index in
headless Chromium (see browser.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from browser import check_screenshot, chromium, open_page, served


def screenshot(site: Path, out: Path) -> None:
    if not (site / "tutorials/index.html").is_file():
        sys.exit(f"no site in {site}: `make docs` builds it")
    with chromium() as browser, served(site) as base:
        opened = open_page(browser, base + "tutorials/index.html", width=1280, height=720)
        opened.page.wait_for_load_state("networkidle")
        opened.page.screenshot(path=out)
    check_screenshot(opened, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=Path("build/site"), help="a built site")
    parser.add_argument("--out", type=Path, default=Path("docs/tutorials_index.png"))
    args = parser.parse_args()
    screenshot(args.site, args.out)
