"""`attnlab <command>`: the command-line interface.

Each command lives in its own module with ``register(subparsers)``, which adds its parser and sets
``handler``. Libraries raise; this is the one place that prints errors: a UserError becomes one
line on stderr and exit code 2, Ctrl-C exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from attnlab.errors import UserError

COMMANDS = ("train", "sample", "evaluate", "tokenize", "translate")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps descriptions' line breaks. An option whose help
    says its default in words ("(default: stdlib, ...)") is left as written."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="Build, train, sample, evaluate and look inside your own transformers.",
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"attnlab.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"attnlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`attnlab sample ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
