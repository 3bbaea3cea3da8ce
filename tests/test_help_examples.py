"""The command lines a --help shows as examples must parse: a flag renamed would leave them
teaching a command that fails. The command list says what each command has."""

import re
import shlex

import pytest
from test_cli import subcommands

from attnlab.cli import COMMANDS, build_parser, main

EXAMPLE = re.compile(r"^\s+(attnlab \S.*)$", re.M)


def help_text(path, capsys) -> str:
    """The help of `attnlab PATH`, an example continued on the next line (`\\`) as one line."""
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    return re.sub(r"\\\n\s*", " ", capsys.readouterr().out)


def command_words(line: str) -> list[str]:
    """The words of an example up to a redirection, a pipe or a comment."""
    words = []
    for word in shlex.split(line, comments=True)[1:]:
        if word in ("<", ">", "|"):
            break
        words.append(word)
    return words


def test_every_example_in_a_help_parses(capsys):
    parser, seen = build_parser(), 0
    for path in subcommands(parser):
        for line in EXAMPLE.findall(help_text(path, capsys)):
            try:
                parser.parse_args(command_words(line))
            except SystemExit:
                pytest.fail(f"attnlab {' '.join(path)} --help shows {line!r}, which does not parse")
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize(
    "what", ["attention", "induction", "lens", "layers", "heads", "attribution"]
)
def test_each_inspect_help_shows_an_example(what, capsys):
    examples = EXAMPLE.findall(help_text(["inspect", what], capsys))
    assert [line for line in examples if line.startswith(f"attnlab inspect {what} ")], examples


def test_layers_help_points_to_head_ablation_and_sample_to_beam_search(capsys):
    assert "ablate_heads" in help_text(["inspect", "layers"], capsys)
    assert "Beam search decodes encoder-decoders too: see `attnlab translate`" in " ".join(
        help_text(["sample"], capsys).split()
    )


def test_the_command_list_names_what_each_command_has():
    """`attnlab --help` lists each command by COMMANDS' line, which its parser shows too; the
    inspect line names every inspect tool (it had left out heads, attribution and patching)."""
    paths = list(subcommands(build_parser()))
    tools = [path[1] for path in paths if path[0] == "inspect" and len(path) == 2]
    assert len(tools) >= 7 and all(tool in COMMANDS["inspect"][1] for tool in tools), tools
    listing = build_parser()._subparsers._group_actions[0]._choices_actions
    assert {action.dest: action.help for action in listing} == {
        name: summary for name, (_, summary) in COMMANDS.items()
    }
