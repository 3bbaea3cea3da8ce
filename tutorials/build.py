"""Run the tutorials as notebooks, and build the documentation site with them.

    python tutorials/build.py run [--size default|quick|gpu] [NN ...]   # `make tutorials`
    python tutorials/build.py site [--notebooks DIR] [--out DIR]          # `make docs`

`run` executes each tutorial (a plain-text jupytext notebook, tutorials/NN_name.py) top to bottom
in a fresh Python kernel and writes it with its outputs as NN_name.ipynb, to open in Jupyter. The
size (default: $ATTNLAB_TUTORIAL_SIZE, else default) goes to the notebooks in that variable.
`site` renders the executed notebooks, the README, the reference pages and the API reference
into a static site (MkDocs, warnings as errors); tutorials not run since they last changed are
run first, at the quick size.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
SIZES = ("default", "quick", "gpu")
CELL_TIMEOUT = 3600  # seconds one cell may take


def tutorials(selected: list[str] | None = None) -> list[Path]:
    """The tutorial sources in order; `selected` picks by number or name (`3`, `03_build...`)."""
    found = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))

    def named(path: Path, name: str) -> bool:
        return path.stem == name or path.stem[:2] == name.zfill(2)

    unknown = [name for name in selected or [] if not any(named(p, name) for p in found)]
    if unknown:
        raise SystemExit(f"build.py: no tutorial {', '.join(unknown)} in {TUTORIALS}")
    return [p for p in found if not selected or any(named(p, name) for name in selected)]


def execute(source: Path, out: Path, size: str, workdir: Path) -> float:
    """Runs one tutorial in a new kernel with `workdir` as its current directory; writes the
    notebook with its outputs to `out` (also when a cell fails, to see where). Seconds taken."""
    import jupytext
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    notebook = jupytext.read(source)
    os.environ["ATTNLAB_TUTORIAL_SIZE"] = size  # the kernel inherits this process's environment
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as sockets:  # the kernel talks over local sockets
        kernel = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/kernel")
        client = NotebookClient(
            notebook, km=kernel, timeout=CELL_TIMEOUT, resources={"metadata": {"path": workdir}}
        )
        try:
            client.execute()
        finally:
            if kernel.has_kernel:  # nbclient leaves a kernel it was given running
                kernel.shutdown_kernel(now=True)
            seconds = time.perf_counter() - start
            notebook.metadata["attnlab"] = {"size": size, "seconds": round(seconds, 1)}
            # a sample streamed a token at a time is one text, as a terminal shows it
            CoalesceStreamsPreprocessor().preprocess(notebook, {})
            out.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, out)
    return seconds


def run_all(
    sources: list[Path], out_dir: Path, size: str, workdir: Path
) -> dict[str, float | None]:
    """Executes each tutorial; the seconds each took, None for a failure (reported, not raised)."""
    from nbclient.exceptions import CellExecutionError

    times: dict[str, float | None] = {}
    for source in sources:
        print(f"running {source.name} ({size}) ...", flush=True)
        try:
            times[source.stem] = seconds = execute(
                source, out_dir / f"{source.stem}.ipynb", size, workdir
            )
            print(f"  done in {seconds:.0f} s", flush=True)
        except CellExecutionError as error:
            times[source.stem] = None
            print(f"  FAILED: {error.ename}: {error.evalue}", flush=True)
    return times


def build_site(notebooks: Path, out: Path) -> Path:
    """The static site in `out`: README as the home page, the tutorials with their outputs,
    docs/*.md, benchmarks/RESULTS.md and the API reference. Returns `out`."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    if not logging.getLogger("mkdocs").handlers:  # show its warnings
        logging.getLogger("mkdocs").addHandler(logging.StreamHandler())

    with tempfile.TemporaryDirectory() as staging:
        pages = Path(staging)
        shutil.copytree(ROOT / "docs", pages, dirs_exist_ok=True)
        (pages / "index.md").write_text(site_links((ROOT / "README.md").read_text()))
        (pages / "results.md").write_text(site_links((ROOT / "benchmarks/RESULTS.md").read_text()))
        (pages / "tutorials").mkdir()
        index, listed = ["# Tutorials\n", TUTORIAL_INTRO], ["tutorials/index.md"]
        for source in tutorials():
            index.append(render_tutorial(notebooks / f"{source.stem}.ipynb", pages / "tutorials"))
            listed.append(f"tutorials/{source.stem}.md")
        (pages / "tutorials/index.md").write_text("\n".join(index) + "\n")
        config = load_config(str(ROOT / "mkdocs.yml"), docs_dir=str(pages), site_dir=str(out))
        config["nav"].insert(1, {"Tutorials": listed})
        config["strict"] = True
        build(config)
    return out


TUTORIAL_INTRO = """Notebooks that walk the course from attention by hand to Mamba, each
pairing a lecture idea with attnlab code you can change and run. Each `tutorials/NN_name.py` is a
plain-text notebook; `make tutorials` runs them all and writes `tutorials/NN_name.ipynb` with the
outputs shown here, to open in Jupyter (`make jupyter`) or VS Code. Each takes at most 15
minutes on a 2-core CPU; `ATTNLAB_TUTORIAL_SIZE=gpu` picks a bigger setting for a GPU.
"""


def render_tutorial(notebook: Path, pages: Path) -> str:
    """Writes an executed notebook as a Markdown page, its pictures beside it; returns its entry
    in the index: title, first paragraph, and how long it ran."""
    import nbformat
    from nbconvert import MarkdownExporter

    node = nbformat.read(notebook, as_version=4)
    body, resources = MarkdownExporter().from_notebook_node(
        node, resources={"output_files_dir": f"{notebook.stem}_files"}
    )
    for name, data in resources["outputs"].items():
        (pages / name).parent.mkdir(parents=True, exist_ok=True)
        (pages / name).write_bytes(data)
    title, lead = node.cells[0].source.split("\n\n")[:2]  # "# N. Title", the first paragraph
    run = node.metadata.get("attnlab")
    ran = f"ran in {run['seconds'] / 60:.1f} min at the {run['size']} size" if run else "not run"
    note = f"*Run it yourself: `tutorials/{notebook.stem}.py` ({ran}).*"
    if run and run["size"] != "default":
        note += "\n\n" + size_notice(run["size"], notebook.stem[:2].lstrip("0"))
    body = body.replace(f"{title}\n", f"{title}\n\n{note}\n", 1)
    (pages / f"{notebook.stem}.md").write_text(body)
    return f"#{title} {{#{notebook.stem}}}\n\n{lead}\n[Open it]({notebook.stem}.md) ({ran}).\n"


def size_notice(size: str, number: str) -> str:
    """A warning box for the top of a page whose outputs come from a size other than the
    default, which its text is written for."""
    return (
        f'!!! warning "Outputs from the {size} size"\n'
        f"    The printed numbers, samples and plots on this page come from a run at the "
        f"**{size}** size (`ATTNLAB_TUTORIAL_SIZE={size}`). The text describes the default "
        f"size, so the figures it quotes will differ from the outputs shown here. "
        f'`make tutorials ONLY="{number}"` runs the notebook at the default size, and '
        f"`make docs` then shows its outputs.\n"
    )


def site_links(markdown: str) -> str:
    """Links written for the repository (README, RESULTS) as the site lays the pages out."""
    markdown = re.sub(r"\((?:\.\./)?docs/", "(", markdown)
    markdown = re.sub(r'src="docs/', 'src="', markdown)
    markdown = markdown.replace("(benchmarks/RESULTS.md", "(results.md")
    markdown = markdown.replace("(tutorials/README.md)", "(tutorials/index.md)")
    return re.sub(r"\(tutorials/(\d\d_\w+)\.py\)", r"(tutorials/\1.md)", markdown)


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= than.stat().st_mtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute tutorials, writing tutorials/NN_name.ipynb")
    run.add_argument("names", nargs="*", help="tutorial numbers or names (default: all)")
    size = os.environ.get("ATTNLAB_TUTORIAL_SIZE", "default")
    run.add_argument("--size", choices=SIZES, default=size, help=f"default: {size}")
    run.add_argument("--out", type=Path, default=TUTORIALS, help="where the notebooks go")
    run.add_argument("--workdir", type=Path, default=ROOT, help="the notebooks' current folder")
    site = commands.add_parser("site", help="build the documentation site")
    site.add_argument("--notebooks", type=Path, default=TUTORIALS, help="executed notebooks")
    site.add_argument("--out", type=Path, default=ROOT / "build/site")
    args = parser.parse_args(argv)
    if getattr(args, "size", SIZES[0]) not in SIZES:
        parser.error(f"ATTNLAB_TUTORIAL_SIZE={args.size}: choose from {', '.join(SIZES)}")
    if args.command == "run":
        times = run_all(tutorials(args.names), args.out, args.size, args.workdir)
        for name, seconds in times.items():
            print(f"{name}: {'FAILED' if seconds is None else f'{seconds:.0f} s'}")
        return 1 if None in times.values() else 0
    stale = [s for s in tutorials() if not _newer(args.notebooks / f"{s.stem}.ipynb", s)]
    if stale and None in run_all(stale, args.notebooks, "quick", ROOT).values():
        return 1
    print(f"site: {build_site(args.notebooks, args.out)}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
