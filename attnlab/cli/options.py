"""Config dataclasses as command-line options and TOML sections.

Every field of a config becomes a flag (``n_layers`` -> ``--n-layers``) whose help is the
field's trailing comment in the dataclass source, so the comment is the one description. Values
come, lowest priority first, from the dataclass defaults, a TOML file, then the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import tomllib
import typing
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from attnlab.config import config_from_dict
from attnlab.errors import UserError
from attnlab.files import decode_utf8, read_text

BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field line in a dataclass's source, and in its base
    classes' (a subclass's own comment first)."""
    comments = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        for line in inspect.getsource(base).splitlines():
            match = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
            if match:
                comments[match.group(1)] = match.group(2)
    return comments


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    defaults: dict[str, Any] | None = None,
    skip: Collection[str] = (),
) -> None:
    """One flag per field, but those in `skip`; flags not given stay absent from the namespace
    (argparse.SUPPRESS). defaults: the values the command starts from where they are not the
    dataclass's own (a preset's), so that --help shows what a run gets."""
    group = parser.add_argument_group(title)
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = (defaults or {}).get(field.name, field.default)
        comment = comments.get(field.name, "")  # which may say its default in words
        shown = "none" if default in ("", (), []) else default
        help_text = comment if "(default:" in comment else f"{comment} (default: {shown})".strip()
        hint = hints[field.name]
        if hint is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                flag,
                type=_parser_for(hint),
                default=argparse.SUPPRESS,
                metavar=field.name.upper(),
                help=help_text,
            )


def _parser_for(hint: Any):
    if hint is Any:  # a table of options (GPTConfig.mixer_options)
        return _table
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    base = options[0]

    def parse(text: str):
        if text.lower() == "none" and type(None) in typing.get_args(hint):
            return None
        if base is bool:  # bool("no") would be True
            if text.lower() not in BOOLEANS:
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return BOOLEANS[text.lower()]
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None

    parse.__name__ = base.__name__  # argparse names the type in its error message
    return parse


def _table(text: str) -> dict[str, Any]:
    """KEY=VALUE,KEY=VALUE as a dict, each value read as TOML (2, 0.5, true, "text"); a value
    that is not TOML is taken as a string. A key given twice is an error, not the last one."""
    table = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...], got {text!r}")
        if key in table:
            raise UserError(f"option {key} is given twice in {text!r}: give each option once")
        try:
            table[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            table[key] = value.strip()
    return table


_table.__name__ = "table"


CHECKPOINT_FILES = (".safetensors", ".json", ".jsonl")  # suffixes of what a run folder keeps
LOSS_PLOT = "loss.png"  # a run folder's plot of its metrics


def as_flags(message: str, cls: type) -> str:
    """A config's message with its fields named as flags: "Cls.top_p must" -> "--top-p must",
    and a key of a table field "Cls.mixer_options.order" -> "order (in --mixer-options)"."""

    def flag(match: re.Match) -> str:
        name = "--" + match[1].replace("_", "-")
        return f"{match[2]} (in {name})" if match[2] else name

    return re.sub(rf"\b{cls.__name__}\.(\w+)(?:\.(\w+))?", flag, message)


def add_device_flag(parser: argparse.ArgumentParser, default: str = "auto", why: str = "") -> None:
    """--device, checked as it is parsed: one of DEVICES or cuda:N."""
    from attnlab.devices import DEVICES, is_device_name

    def device(text: str) -> str:
        if not is_device_name(text):
            raise argparse.ArgumentTypeError(f"choose one of {', '.join(DEVICES)} or cuda:N")
        return text

    choices = ", ".join(DEVICES) + " or cuda:N"
    parser.add_argument(
        "--device", default=default, type=device, help=f"where to run: {choices}{why}"
    )


def as_given(args: argparse.Namespace, name: str, value: Any) -> str:
    """A setting as the user gave it: its flag where one was given (--n-layers 2), else the
    config file's key (n_layers = 2)."""
    if hasattr(args, name):
        flag = name.replace("_", "-")
        if isinstance(value, bool):  # a switch: --prenorm, --no-prenorm
            return f"--{flag}" if value else f"--no-{flag}"
        if isinstance(value, dict):  # --mixer-options, as typed: KEY=VALUE,...
            value = ",".join(f"{key}={item}" for key, item in value.items())
        return f"--{flag} {value}"
    return f"{name} = {json.dumps(value, default=str)}"


def given_flags(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """Those of `names` given on the command line, whatever their values, as flags
    (--beam-size): `sample --temperature 0.8` is given, though 0.8 is its default."""
    return ["--" + name.replace("_", "-") for name in sorted(set(names) & args.given)]


def check_top_k(args: argparse.Namespace, choices: int, what: str) -> None:
    """--top-k given at or above the `choices` tokens the model chooses from keeps them all: it
    would change nothing. A default that does (sample's 200, past a character vocabulary) is
    not refused: it keeps them all."""
    if given_flags(args, ("top_k",)) and args.top_k >= choices:
        raise UserError(
            f"--top-k {args.top_k} would change nothing: the model chooses from {choices} "
            f"{what}, and k >= {choices} keeps them all; give a smaller k or leave it out"
        )


def check_output(
    flag: str,
    path: str | Path,
    checkpoint: str,
    suffix: str = "",
    inputs: dict[str, str | Path | list | None] | None = None,
) -> Path:
    """The file an output flag names, checked before the slow work: a file, not a folder; in a
    writable place (a link, pipe or device such as /dev/stdout: writable itself); none of the
    checkpoint's own files (its weights, configs, logs, loss plot, or its run's, for a best/
    checkpoint) nor of the command's `inputs` (flag -> a file or a list of files); ending in
    `suffix` where the format is fixed. A file that is this process's stdout gets it to itself:
    what the command prints goes to stderr from then on."""
    from attnlab.files import check_writable, written_in_place

    if not str(path):
        raise UserError(f"{flag} is empty: give a file")
    path, folder = Path(path), Path(checkpoint).resolve()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file")
    checkpoint_folders = (folder, folder.parent) if folder.name == "best" else (folder,)
    ours = path.suffix in CHECKPOINT_FILES or path.name == LOSS_PLOT
    if ours and path.resolve().parent in checkpoint_folders:
        raise UserError(f"{flag} {path} would overwrite a file of the checkpoint: name another")
    for input_flag, files in (inputs or {}).items():
        for file in files if isinstance(files, list) else [files]:
            if file is not None and Path(file).resolve() == path.resolve():
                raise UserError(f"{flag} {path} would overwrite {input_flag}'s file: name another")
    if suffix and path.suffix.lower() != suffix:
        raise UserError(f"{flag} {path}: the file is {suffix[1:].upper()}, name it *{suffix}")
    if not written_in_place(path):
        check_writable(path.parent)
    elif not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write to it")
    elif _is_stdout(path):  # `--png /dev/stdout > plot.png`: the command's text goes apart
        sys.stdout.flush()
        sys.stdout = sys.stderr  # for this command (main puts stdout back)
    return path


def _is_stdout(path: Path) -> bool:
    """Whether `path` is the file, pipe or terminal this process's stdout writes to."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # a stream with no descriptor (a test's)
        return False


def default_output(checkpoint: str, name: str, flag: str) -> Path:
    """CKPT/NAME, where a command writes when `flag` is not given, never through a link: in a
    run someone shared, one could lead the write to any file of the user's (a link given as
    `flag` is the user's own, written through)."""
    path = Path(checkpoint) / name
    if path.is_symlink():
        raise UserError(
            f"{path} is a link (to {os.readlink(path)}): a command writes its own files into a "
            f"run, never through links; name the file with {flag}"
        )
    return path


def check_seed(seed: int) -> None:
    """--seed, in the range torch's generators take (as train's TrainConfig.seed)."""
    if not 0 <= seed < 2**63:
        raise UserError(f"--seed must be in [0, 2**63), got {seed}")


def refuse_empty(args: argparse.Namespace, names: Iterable[str]) -> None:
    """An option of `names` given as '' (`--data "$UNSET"`) is one line, not taken for the
    option left out (the run's own data, a default file) nor for the current folder."""
    for name in names:
        if getattr(args, name, None) == "":
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} is empty: give a value, or leave {flag} out")


def check_beam_flags(args: argparse.Namespace) -> None:
    """--beam-size (>= 1) and --length-penalty (>= 0, and given only where a beam has more than
    one hypothesis to rank), each error one line naming its flag."""
    if args.beam_size < 1:
        raise UserError(f"--beam-size must be >= 1, got {args.beam_size}")
    if not 0 <= args.length_penalty < math.inf:
        raise UserError(f"--length-penalty must be a number >= 0, got {args.length_penalty}")
    if args.beam_size == 1 and given_flags(args, ["length_penalty"]):
        # one hypothesis ever ends, so there is nothing for the penalty to rank
        raise UserError(
            "--length-penalty would change nothing at --beam-size 1 (greedy: a single "
            "hypothesis, nothing to rank): leave it out, or give a beam size above 1"
        )


def check_sampling_flags(
    args: argparse.Namespace, greedy_unused: Iterable[str] = (), **sampling: Any
) -> None:
    """--seed's and --top-k's ranges (0: off) and the sampling settings (SamplingConfig's
    fields, top_k None for off), each error one line naming its flag, before a model is
    loaded; at --temperature 0 (greedy), none of the flags that would change nothing: --seed,
    --top-k, --top-p given, and `greedy_unused`."""
    from attnlab.errors import ConfigError
    from attnlab.generation.sampling import SamplingConfig

    check_seed(args.seed)
    if (args.top_k or 0) < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    unused = [*given_flags(args, ("top_k", "top_p", "seed")), *greedy_unused]
    if sampling["temperature"] == 0 and unused:  # the most likely token every time
        raise UserError(
            f"{' and '.join(unused)} would change nothing at --temperature 0 (greedy: the most "
            f"likely token every time): leave {'it' if len(unused) == 1 else 'them'} out, or "
            "give a temperature above 0"
        )
    try:
        SamplingConfig(**sampling)
    except ConfigError as error:
        raise UserError(as_flags(str(error), SamplingConfig)) from None


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` that were given as flags."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def read_toml(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(read_text(path, "config file"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"config file {path} is not valid TOML: {error}") from None


def build_config(cls: type, *layers: dict[str, Any], source: str) -> Any:
    """A config from dicts merged left to right (later wins), type-checked."""
    return config_from_dict(cls, merge_layers(*layers), source=source)


def merge_layers(*layers: dict[str, Any]) -> dict[str, Any]:
    """Settings merged left to right, a later value winning; where two are tables (a mixer's
    options from a file, then from --mixer-options), key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            both = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = {**merged[key], **value} if both else value
    return merged


def data_root() -> Path:
    """Where datasets live: $ATTNLAB_DATA, else ~/.cache/attnlab/data (the catalog decides)."""
    from attnlab.data import catalog

    return catalog.data_root()


def resolve_data_path(spec: str) -> str:
    """A data spec as given when it exists on disk; else the catalog's path for it, fetching
    a named dataset first with a note on stderr (catalog.resolve)."""
    from attnlab.data import catalog

    return catalog.resolve(spec, log=lambda message: print(f"attnlab: {message}", file=sys.stderr))


def read_stdin() -> str:
    """All of stdin as UTF-8 text; other bytes are a UnicodeDecodeError (one line at the CLI),
    never characters that only look like text. A stream without bytes beneath (a test's
    StringIO) is read as the text it holds."""
    if hasattr(sys.stdin, "buffer"):
        return decode_utf8(sys.stdin.buffer.read())
    return user_text(sys.stdin.read())


def stdin_lines() -> list[str]:
    """Stdin's lines (read_stdin), one for each line of output: they end at \\n, \\r\\n or a
    lone \\r (old Macs' line ends), as Python's text files' do."""
    from attnlab.data.corpus import text_lines

    return text_lines(read_stdin().replace("\r\n", "\n").replace("\r", "\n"))


def print_json(value: Any) -> None:
    """`value` as one line of JSON on stdout. JSON has no NaN or infinity (Python's json writes
    them as NaN and Infinity, which other readers refuse): such a number is written as null."""
    print(json.dumps(_finite(value)))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0, DEL and C1 but \t and \n


def write_text(text: str) -> None:
    """Text of a model (or of its tokens) to stdout: to a file or a pipe exactly; on a terminal
    with its control characters other than \\n and \\t escaped (\\x1b, \\r), which an
    undertrained model emits and which would act on the terminal."""
    if sys.stdout.isatty():
        text = _CONTROL.sub(lambda match: ascii(match[0])[1:-1], text)
    sys.stdout.write(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def user_text(text: str) -> str:
    """A text argument, checked: bytes of the command line that are not UTF-8 arrive as lone
    surrogates (Python's surrogateescape), which are refused here in one line."""
    text.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    return text
