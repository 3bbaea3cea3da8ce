"""Small edges of the command line: matplotlib under a home folder it cannot write, a list flag
given its values apart, old Macs' line ends on stdin, a data folder that cannot be written."""

import hashlib
import io
import os
import subprocess
import sys

import pytest
from helpers import one_line_error, read_only, run

from attnlab.cli.options import stdin_lines
from attnlab.cli.plot_config import matplotlib_folder
from attnlab.data import catalog
from attnlab.data.catalog import DataFile, Dataset

# Runs attnlab's start (a command that draws nothing), then imports matplotlib as a plot would
PLOTS_AFTER_A_COMMAND = """
from attnlab.cli import main
assert main(["data", "cache"]) == 0
import matplotlib
print(matplotlib.get_cachedir())
"""


def test_plots_under_a_home_folder_that_cannot_be_written_go_to_the_cache_quietly(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file: no folder can be made in it, whoever runs this\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_"))}
    env.update(HOME=str(home), ATTNLAB_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-c", PLOTS_AFTER_A_COMMAND], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(tmp_path / "cache" / "matplotlib")
    assert "matplotlib" not in done.stderr.lower(), done.stderr


def test_matplotlibs_own_folder_is_left_alone_where_it_can_be_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", "")  # unset, as matplotlib reads it; restored after
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    matplotlib_folder()
    assert os.environ["MPLCONFIGDIR"] == ""
    monkeypatch.setenv("HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")
    matplotlib_folder()
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "cache" / "matplotlib")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))  # the user's: kept
    matplotlib_folder()
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")


@pytest.mark.parametrize(
    "words, written",
    [
        (["--label-names", "negative", "positive"], "--label-names negative,positive"),
        (["--label-names=a", "b", "c", "--seed", "1"], "--label-names a,b,c"),
        (["--label-names", "a,b", "b", "c"], "--label-names a,b,c"),
    ],
)
def test_a_comma_separated_flag_given_its_values_apart_says_how_to_write_them(
    words, written, capsys
):
    with pytest.raises(SystemExit) as stopped:
        run(["train", "classifier", *words], capsys)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"takes one value, comma-separated: {written} (see" in err


def test_a_stray_word_after_another_flag_gets_no_such_hint(capsys):
    with pytest.raises(SystemExit):
        run(["train", "classifier", "--label-names", "a,b", "--seed", "1", "stray"], capsys)
    assert "comma-separated" not in capsys.readouterr().err


def test_stdin_lines_end_at_old_macs_lone_carriage_returns_too(monkeypatch):
    text = "a good movie\rbad film\r\r\nunix\nlast"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert stdin_lines() == ["a good movie", "bad film", "", "unix", "last"]


def test_a_data_folder_that_cannot_be_written_says_so_and_how_to_fix_it(
    tmp_path, monkeypatch, capsys
):
    body = b"alpha\n"
    (tmp_path / "mirror" / "fake").mkdir(parents=True)
    (tmp_path / "mirror" / "fake" / "a.txt").write_bytes(body)
    entry = DataFile("a.txt", hashlib.sha256(body).hexdigest(), len(body))
    monkeypatch.setitem(catalog.CATALOG, "fake", Dataset("fake", "a test dataset", (entry,)))
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ATTNLAB_DATA_MIRROR", str(tmp_path / "mirror"))
    (tmp_path / "data").mkdir()
    read_only(monkeypatch, tmp_path / "data")
    line = one_line_error(*run(["data", "get", "fake"], capsys)[::2])
    assert line == (
        f"attnlab: error: cannot get dataset 'fake': cannot write {tmp_path / 'data' / 'fake'}: "
        "Permission denied; make it writable, or set ATTNLAB_DATA to another folder"
    )


def test_words_after_a_double_dash_are_text_not_flags_given():
    from attnlab.cli import build_parser

    argv = ["translate", "--beam-size", "1", "RUN", "--", "--length-penalty"]
    args = build_parser("translate").parse_args(argv)
    assert args.text == "--length-penalty" and args.given == {"beam_size"}


def test_a_cache_path_that_cannot_even_be_looked_at_leaves_matplotlib_alone(monkeypatch):
    from attnlab.cli.plot_config import matplotlib_folder

    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/" + "b" * 300)  # ENAMETOOLONG on a look
    monkeypatch.setenv("ATTNLAB_CACHE", "/tmp/" + "c" * 300)
    matplotlib_folder()  # no OSError: a command must start whatever these say
    assert "MPLCONFIGDIR" not in os.environ
