"""Helpers shared by the CLI tests (the tests folder is on sys.path under pytest)."""

from attnlab.cli import main


def run(argv, capsys):
    """Run `attnlab ARGV` in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    """Assert exit code 2 and exactly one error line, last, with no traceback; return the line."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("attnlab: error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]
