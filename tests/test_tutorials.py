"""The tutorials run top to bottom at the quick size, each checking something real on its way (a
loss falls, two implementations agree), and the documentation site built from them works in a
browser: every page loads with nothing fetched from outside and no error, every internal link
and anchor leads somewhere, and search finds pages.

The quick size reads no dataset: the data folder is empty and downloads fail here."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import nbformat
import pytest
from browser import open_page, served
from nbclient.exceptions import CellExecutionError

from tutorials import build

SOURCES = build.tutorials()


@pytest.fixture(scope="session")
def executed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every tutorial run at the quick size: the folder of executed notebooks, and the error of
    each that failed."""
    notebooks, work = tmp_path_factory.mktemp("notebooks"), tmp_path_factory.mktemp("work")
    failures = {}
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("ATTNLAB_DATA", str(tmp_path_factory.mktemp("no_data")))
        environment.setenv("ATTNLAB_DATA_MIRROR", "http://127.0.0.1:9")  # nothing listens there
        environment.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        for source in SOURCES:
            try:
                build.execute(source, notebooks / f"{source.stem}.ipynb", "quick", work)
            except CellExecutionError as error:
                failures[source.stem] = str(error)
    return notebooks, failures


def test_there_are_nine_tutorials_in_order():
    assert [p.stem[:2] for p in SOURCES] == [f"{n:02d}" for n in range(1, 10)]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_tutorial_runs_and_has_its_parts(executed, source):
    notebooks, failures = executed
    assert source.stem not in failures, failures.get(source.stem)
    notebook = nbformat.read(notebooks / f"{source.stem}.ipynb", as_version=4)
    text = "\n".join(cell.source for cell in notebook.cells)
    assert re.match(r"# \d\. ", notebook.cells[0].source), "the first cell is the title"
    assert "ATTNLAB_TUTORIAL_SIZE" in text
    assert re.search(r"^assert ", text, re.MULTILINE), "a check cell"
    assert "## Try this" in text
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "at least one picture"
    assert not [o for o in outputs if o.output_type == "error"]
    split = [a for c in notebook.cells for a, b in itertools.pairwise(c.get("outputs", []))
             if a.output_type == b.output_type == "stream" and a.name == b.name]  # fmt: skip
    assert not split, "a streamed sample is one output, not one a token"


def test_run_reports_a_failing_notebook(tmp_path, monkeypatch, capsys):
    source = tmp_path / "01_broken.py"
    source.write_text("# %%\nprint('before')\n\n# %%\nraise ValueError('the second cell')\n")
    monkeypatch.setattr(build, "TUTORIALS", tmp_path)
    assert build.main(["run", "--size", "quick", "--out", str(tmp_path), "1"]) == 1
    assert "FAILED: ValueError: the second cell" in capsys.readouterr().out
    written = nbformat.read(tmp_path / "01_broken.ipynb", as_version=4)  # kept, to see where
    assert written.cells[0].outputs[0]["text"] == "before\n"


def test_the_size_comes_from_the_environment_when_not_given(tmp_path, monkeypatch, capsys):
    source = tmp_path / "01_size.py"
    source.write_text("# %%\nimport os\nprint(os.environ['ATTNLAB_TUTORIAL_SIZE'])\n")
    monkeypatch.setattr(build, "TUTORIALS", tmp_path)
    monkeypatch.setenv("ATTNLAB_TUTORIAL_SIZE", "quick")
    assert build.main(["run", "--out", str(tmp_path), "1"]) == 0
    written = nbformat.read(tmp_path / "01_size.ipynb", as_version=4)
    assert written.metadata.attnlab.size == "quick"
    assert written.cells[0].outputs[0]["text"] == "quick\n"
    monkeypatch.setenv("ATTNLAB_TUTORIAL_SIZE", "huge")
    with pytest.raises(SystemExit) as exit:
        build.main(["run", "--out", str(tmp_path), "1"])
    assert exit.value.code == 2 and "ATTNLAB_TUTORIAL_SIZE=huge" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["quick", "default"])
def test_a_page_run_at_another_size_says_so_at_the_top(tmp_path, size):
    """The text is written for the default size: a page showing other outputs warns first."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# 5. A title\n\nThe lead paragraph."),
        nbformat.v4.new_markdown_cell("About 0.4 nats at the default size."),
    ]
    notebook.metadata["attnlab"] = {"size": size, "seconds": 30.0}
    nbformat.write(notebook, tmp_path / "05_title.ipynb")
    build.render_tutorial(tmp_path / "05_title.ipynb", tmp_path)
    page = (tmp_path / "05_title.md").read_text()
    notice = '!!! warning "Outputs from the quick size"'
    if size == "default":
        assert "!!! warning" not in page
    else:  # under the title, before the lead paragraph
        assert page.index("# 5. A title") < page.index(notice) < page.index("The lead paragraph")
        assert 'make tutorials ONLY="5"' in page


@pytest.fixture(scope="session")
def site(executed, tmp_path_factory) -> Path:
    notebooks, failures = executed
    if failures:
        pytest.fail(f"the site shows the tutorials, and these failed: {', '.join(failures)}")
    return build.build_site(notebooks, tmp_path_factory.mktemp("site"))


def test_site_has_every_page(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    expected = {"index.html", "reference.html", "api.html", "results.html", "tutorials/index.html"}
    assert expected | {f"tutorials/{s.stem}.html" for s in SOURCES} <= pages
    index = (site / "tutorials/index.html").read_text()
    assert all(f'href="{s.stem}.html"' in index for s in SOURCES)
    assert "scaled_dot_product_attention" in (site / "api.html").read_text()  # from docstrings
    quick = [
        s.stem
        for s in SOURCES
        if "Outputs from the quick size" not in (site / f"tutorials/{s.stem}.html").read_text()
    ]
    assert not quick, f"pages of quick-size outputs without the notice: {quick}"


def test_site_in_a_browser(site, browser):
    """Every page, opened from a local server: no console error, no request leaving the
    machine, every internal link and #anchor resolves; then a search finds the tutorials."""
    links, broken = set(), []
    with served(site) as base:
        host = urlparse(base).netloc
        for page_file in sorted(site.rglob("*.html")):
            if page_file.name == "404.html":  # for a server to show; its links are absolute
                continue
            url = base + page_file.relative_to(site).as_posix()
            opened = open_page(browser, url)
            opened.page.wait_for_load_state("networkidle")
            outside = [r for r in opened.requests if urlparse(r).scheme in ("http", "https")]
            outside = [r for r in outside if urlparse(r).netloc != host]
            assert not outside, f"{url} fetched from outside: {outside}"
            assert not opened.errors, f"{url}: {opened.errors}"
            hrefs = opened.page.eval_on_selector_all("a[href]", "a => a.map(e => e.href)")
            links |= {h for h in hrefs if urlparse(h).netloc == host}
            opened.page.close()

        opened = open_page(browser, base + "index.html")
        opened.page.wait_for_load_state("networkidle")  # the search index loaded
        opened.page.click("input.md-search__input")
        opened.page.keyboard.type("induction heads")
        opened.page.wait_for_selector(".md-search-result__item", timeout=20_000)
        found = opened.page.eval_on_selector_all(
            ".md-search-result__item a", "a => a.map(e => e.href)"
        )
        assert any("08_look_inside" in href for href in found), found
        assert not opened.errors, opened.errors
    for link in sorted(links):
        target, anchor = urldefrag(link)
        path = site / urlparse(target).path.lstrip("/")
        path = path / "index.html" if path.is_dir() else path
        if not path.is_file() or (anchor and f'id="{anchor}"' not in path.read_text()):
            broken.append(link)
    assert not broken, f"broken links: {broken}"
    assert len(links) > 50  # the navigation alone links every page


def test_search_index_holds_the_tutorials_text(site):
    index = json.loads((site / "search/search_index.json").read_text())
    locations = {doc["location"].split("#")[0] for doc in index["docs"]}
    assert {f"tutorials/{s.stem}.html" for s in SOURCES} <= locations
