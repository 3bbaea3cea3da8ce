import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Shared datasets: $ATTNLAB_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small text to train on (modules that need another define their own)."""
    path = tmp_path / "corpus.txt"
    path.write_text("All the world's a stage, and all the men and women merely players. " * 30)
    return path


@pytest.fixture
def shared_data() -> Path:
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path} (set ATTNLAB_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Tiny models gain nothing from two threads, and a thread that waits on a busy core slows them
# down a hundredfold; one thread keeps the suite fast and its timings steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Token caches go to a temporary directory, never the user's."""
    os.environ["ATTNLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def built_kernels(_token_cache):
    """attnlab's CPU kernels built in the session's cache, for a test that times a training
    process: its own build (7-10 s, minutes on a busy machine) would run into the time limits
    of a test run alone or first, whose cache is empty."""
    from attnlab.kernels import cpu

    cpu.load()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (browser.py), for the viewer's and the documentation site's tests."""
    from browser import BrowserMissing, chromium

    missing = None
    try:
        with chromium() as browser:
            yield browser
    except BrowserMissing as error:  # raised before the yield: fail here, not skip
        missing = error
    if missing:
        pytest.fail(f"the browser tests cannot run: {missing}", pytrace=False)
