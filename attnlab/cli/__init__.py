"""`attnlab <command>`: the command-line interface.

Each command lives in its own module with ``register(subparsers)``, which adds its parser and sets
``handler``. Only the module of the command given is imported, so `attnlab --help` answers
without loading torch. ATTNLAB_PLUGINS (comma-separated modules or .py files) is imported
first: a user's own mixers and model kinds register themselves there. Libraries raise; this is
the one place that prints errors: a UserError, an OSError (a missing or read-only file, a full
disk) or text that is not UTF-8 becomes one line on stderr and exit code 2, Ctrl-C (and a kill,
SIGTERM, which stops a command as Ctrl-C does) exit code 130.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import importlib.util
import itertools
import os
import shlex
import sys
import sysconfig
import traceback
import warnings
from pathlib import Path

import attnlab
from attnlab.cli.plot_config import matplotlib_folder
from attnlab.errors import OutputError, UserError, memory_error_line, os_error_line
from attnlab.signals import sigterm_as_interrupt

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C or SIGTERM

# command -> (module in attnlab.cli, one line for `attnlab --help`)
COMMANDS = {
    "train": ("train", "train a model of any registered kind (attnlab train --help lists them)"),
    "sample": ("sample", "generate text from a trained checkpoint"),
    "evaluate": ("evaluate", "score a checkpoint on data"),
    "translate": ("translate", "translate text with an encoder-decoder checkpoint"),
    "fill-mask": ("fill_mask", "predict the hidden words of a text with a BERT checkpoint"),
    "classify": ("classify", "label texts with a classifier checkpoint"),
    "classify-image": ("classify_image", "classify images with a vision checkpoint"),
    "sample-images": (
        "sample_images",
        "draw images, and complete half images, with an image GPT checkpoint",
    ),
    "tokenize": ("tokenize", "train, apply and look at tokenizers"),
    "data": ("data", "list and download the datasets the configs use; show or clear the cache"),
    "convert": ("convert", "Hugging Face GPT-2 and BERT folders as checkpoints, and back"),
    "compare": ("compare", "training runs side by side: a table of losses and speed, a plot"),
    "arena": ("arena", "train every token mixer alike and compare them; cost against length"),
    "inspect": (
        "inspect",
        "look inside: attention, induction, logit lens, layers, heads, attribution, patching",
    ),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps descriptions' line breaks. An option whose help
    says its default in words ("(default: stdlib, ...)"), a required one, or one without a
    default (None) is left as written; an empty default reads "none"."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.required or action.default is None:
            return action.help
        if action.default in ("", (), []):  # not "(default: )"
            return f"{action.help} (default: none)"
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A command's parser (every subparser is one too). Words it does not take are its own
    error, one line naming the command (its usage is --help's, some 30 lines for `train`);
    but words after options go to a trailing text argument left empty (`attnlab translate RUN
    --beam-size 1 "ein Satz"`). Flags are never abbreviated: `--proc 2` would reach the ranks
    that --processes starts as another flag. A value that starts with '-' but is no number
    (`--lengths -8:16`) argparse takes for a flag: the error says to write `--lengths=-8:16`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        self.words: list[str] = []  # the command line parsed last

    def error(self, message: str):
        if message.endswith(("expected one argument", "expected at least one argument")):
            named = message.removeprefix("argument ").split(":")[0].split("/")  # -o/--out
            for flag, value in zip(self.words, self.words[1:], strict=False):
                # --out --seed 3, --out --sed 3: its value left out, not one of '-'
                flag_like = value[:2] == "--" and value[2:3].isalpha()
                flagged = value.split("=")[0] in self._option_string_actions or flag_like
                if flag in named and value.startswith("-") and not flagged:
                    message += f"; a value that starts with '-' is written {flag}={value}"
                    break
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        self.words = sys.argv[1:] if args is None else list(args)
        namespace, extra = super().parse_known_args(args, namespace)
        if self._subparsers is None:  # a command's flags given, whatever their values
            words = itertools.takewhile(lambda w: w != "--", self.words)  # after: positional
            flags = {w.split("=")[0] if w[:2] == "--" else w[:2] for w in words}
            namespace.given = {a.dest for a in self._actions if flags & set(a.option_strings)}
        if not extra or self._subparsers is not None:  # a command's words: its subcommand's
            return namespace, extra
        texts = [a for a in self._actions if not a.option_strings and a.nargs in ("?", "*")]
        if texts and not any(word.startswith("-") for word in extra):
            action, given = texts[-1], getattr(namespace, texts[-1].dest)
            if action.nargs == "*":
                setattr(namespace, action.dest, [*(given or []), *extra])
                return namespace, []
            if given is None and len(extra) == 1:
                setattr(namespace, action.dest, extra[0])
                return namespace, []
        self.error(f"unrecognized arguments: {' '.join(extra)}{self._listed(extra)}")

    def _listed(self, extra: list[str]) -> str:
        """How to write the words left over where they follow the value of a flag that takes
        its values comma-separated (`--label-names negative positive`); else nothing."""
        for at, word in enumerate(self.words):
            flag, eq, value = word.partition("=")
            action = self._option_string_actions.get(flag)
            if action and "comma-separated" in (action.help or ""):
                words = [value] * bool(eq) + self.words[at + 1 :]
                given = list(itertools.takewhile(lambda w: not w.startswith("-"), words))
                if given[1:2] == extra[:1]:  # each value once: `a,b b` is a,b
                    values = ",".join(dict.fromkeys(",".join(given).split(",")))
                    return f"; {flag} takes one value, comma-separated: {flag} {values}"
        return ""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of `command` only (None: every command's)."""
    parser = Parser(
        prog="attnlab",
        description="Build, train, sample, evaluate and look inside your own transformers.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"attnlab {attnlab.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"attnlab.cli.{module}").register(subparsers)
        else:  # named in the list, its module left unimported
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def load_plugins(spec: str) -> None:
    """Import each comma-separated module name or .py file, so it can register mixers and
    model kinds before the parser lists them. A file is a module of a name of its own, which
    no other module has: a plugin named socket.py must not stand in for Python's socket."""
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        try:
            if entry.endswith(".py"):
                name = f"attnlab_plugin_{Path(entry).stem}"
                module_spec = importlib.util.spec_from_file_location(name, entry)
                if module_spec is None or not Path(entry).is_file():
                    raise ImportError(f"no such file: {entry}")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_spec.name] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(entry)
        except ImportError as error:
            raise UserError(f"ATTNLAB_PLUGINS: cannot import {entry}: {error}") from None
        except Exception as error:  # the plugin's own mistake: what and where, in one line
            where = "" if isinstance(error, SyntaxError) else f" ({_plugin_line(error)})"
            raise UserError(
                f"ATTNLAB_PLUGINS: {entry} failed: {type(error).__name__}: {error}{where}"
            ) from None


def _plugin_line(error: Exception) -> str:
    """FILE:LINE of the plugin's own code that raised: the innermost frame that is not of
    attnlab, an installed library or Python (a registration attnlab refuses is the plugin's
    call, not attnlab's check); else the innermost."""
    paths = sysconfig.get_paths()
    others = ("<", str(Path(attnlab.__file__).parent) + os.sep)
    others += tuple(paths[key] + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    frames = traceback.extract_tb(error.__traceback__)
    frame = next((f for f in reversed(frames) if not f.filename.startswith(others)), frames[-1])
    return f"{frame.filename}:{frame.lineno}"


def say_error(message: str) -> int:
    """The one line of a refusal, on stderr; exit code 2. Characters that would act on the
    terminal (a newline, an escape sequence) or were not UTF-8 are shown escaped: the message
    may quote a file name or text the user gave."""
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in message)
    print(f"attnlab: error: {shown}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    streams = sys.stdin, sys.stdout, sys.stderr
    nulls = _closed_streams_to_null()
    sys.stdout = _Stdout(sys.stdout)  # every command's results: print, write_text, print_json
    formatting = warnings.formatwarning
    warnings.formatwarning = _warning_line  # for this command only: main runs in notebooks too
    try:
        with _random_numbers_kept():
            return _main(sys.argv[1:] if argv is None else argv)
    finally:
        warnings.formatwarning = formatting
        sys.stdin, sys.stdout, sys.stderr = streams
        for null in nulls:
            null.close()


@contextlib.contextmanager
def _random_numbers_kept():
    """The random numbers of Python, NumPy and PyTorch as they were: a command in a notebook
    (`train` seeds them all; loading a checkpoint builds a model, drawing its first weights)
    leaves the notebook's own sequences where they were. A library the command loaded is seeded
    afresh, as on its import. None is imported for this, nor NumPy's random module (importing
    NumPy leaves it out; it takes 7-25 ms): commands start as soon as they would without it."""
    python, np_random, torch = (
        sys.modules.get(name) for name in ("random", "numpy.random", "torch")
    )
    numbers = python.getstate() if python else None
    arrays = np_random.get_state() if np_random else None
    tensors = torch.get_rng_state() if torch else None
    gpus = torch.cuda.get_rng_state_all() if torch and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        if numbers is not None:
            python.setstate(numbers)
        elif python := sys.modules.get("random"):
            python.seed()
        if arrays is not None:
            np_random.set_state(arrays)
        elif np_random := sys.modules.get("numpy.random"):
            np_random.seed()
        if tensors is None:
            if torch := sys.modules.get("torch"):
                torch.seed()  # and every GPU's
        else:
            torch.set_rng_state(tensors)
            if gpus is not None:
                torch.cuda.set_rng_state_all(gpus)
            elif torch.cuda.is_initialized():  # by the command: seeded as torch.manual_seed does
                torch.cuda.manual_seed_all(torch.initial_seed())


def _closed_streams_to_null() -> list:
    """A standard stream closed when the process started (`<&-`, `>&-`, `2>&-`) is None in
    Python, which print() takes for stdout and a read or write fails on: it is the null device
    instead, as its user asked, read as empty or written nowhere (its descriptor too, for the
    processes a command starts; stdin first, so that no other stream's takes descriptor 0). A
    stream set to None in a process whose descriptor is open (main called in-process) leaves
    the descriptor as it is. Returns the streams opened, for main to close."""
    opened = []
    for name, descriptor, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(descriptor)
            stream = open(os.devnull, mode)  # noqa: SIM115 - main's while it runs
        except OSError:  # closed: the null device takes its number
            null = os.open(os.devnull, os.O_RDONLY if mode == "r" else os.O_WRONLY)
            if null != descriptor:
                os.dup2(null, descriptor)
                os.close(null)
            stream = open(descriptor, mode, closefd=False)  # noqa: SIM115 - main's while it runs
        setattr(sys, name, stream)
        opened.append(stream)
    return opened


class _Stdout:
    """sys.stdout while a command runs: a write that fails names standard output (a full
    disk's error names no file), and so does the next flush (argparse drops --help's error).
    A closed pipe stays a BrokenPipeError, which ends quietly."""

    def __init__(self, stream):
        self._stream, self._failed = stream, None

    def write(self, text: str) -> int:
        with self._named():
            return self._stream.write(text)

    def flush(self) -> None:
        with self._named():
            if self._failed:
                raise self._failed
            self._stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, buffer, encoding: the stream's
        return getattr(self._stream, name)

    @contextlib.contextmanager
    def _named(self):
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as error:
            self._failed = OutputError(error.errno, error.strerror or str(error))
            raise self._failed from None


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as a user of the command reads it: one line, not the code that raised it. Of
    torchrun's ranks, which run the same code and so raise the same warnings, rank 0 speaks."""
    return f"attnlab: warning: {message}\n" if _rank_0() else ""


def _rank_0() -> bool:
    """Whether this process speaks for the run: alone, or rank 0 of torchrun's ranks."""
    return os.environ.get("RANK", "0") == "0"


def _main(argv: list[str]) -> int:
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        _check_current_folder()  # before a command's module, or a plugin, imports torch
        matplotlib_folder()  # before a command's plots import matplotlib
        load_plugins(os.environ.get("ATTNLAB_PLUGINS", ""))
        try:
            args = build_parser(command if command in COMMANDS else "").parse_args(argv)
        except SystemExit:  # --help or --version: their text out now, where a closed pipe is
            sys.stdout.flush()  # caught below (at exit it would be a warning and exit code 120)
            raise
        args.argv = argv  # for a command that starts itself again (train --processes)
        with sigterm_as_interrupt():  # a kill (`timeout`, a scheduler's) cleans up as Ctrl-C does
            code = args.handler(args) or 0
        sys.stdout.flush()  # the same for the last of a command's output
        return code
    except UserError as error:  # of torchrun's ranks, rank 0 speaks for all (the same checks)
        if _rank_0() or getattr(error, "every_rank", False):
            say_error(str(error))
        return 2
    except UnicodeError as error:
        return say_error(_unicode_error_line(error))
    except BrokenPipeError:  # the reader went away (`attnlab sample ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:  # the user's files and folders: missing, read-only, full disk
        return say_error(os_error_line(error))
    except (MemoryError, RuntimeError) as error:
        if (line := memory_error_line(error)) is None:
            raise
        return say_error(line)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # a terminal closed (SIGHUP): no one to tell
            print("attnlab: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


def _check_current_folder() -> None:
    """A current folder deleted while the shell was in it (a run removed, `git clean`) is one
    line: relative paths would name nothing, and importing torch there ends the process with
    oneMKL's "FATAL ERROR: Cannot load libtorch_cpu.so"."""
    try:
        os.getcwd()
    except FileNotFoundError:
        message = "the current folder no longer exists (deleted): cd to one that does"
        raise UserError(message) from None


def _unicode_error_line(error: UnicodeError) -> str:
    """What a UnicodeError means: text from the user that is not UTF-8 (stdin, arguments), or
    output that the encoding of stdout (PYTHONIOENCODING, the locale's) cannot hold."""
    if isinstance(error, UnicodeEncodeError) and codecs.lookup(error.encoding).name != "utf-8":
        import unicodedata  # here: every command's start would pay for it

        char = error.object[error.start]
        return (
            f"cannot print U+{ord(char):04X} ({unicodedata.name(char, 'a character')}): the "
            f"output's encoding is {error.encoding}; set PYTHONIOENCODING=utf-8 or a UTF-8 "
            "locale (LANG=C.UTF-8)"
        )
    where = f" at byte {error.start:,}" if isinstance(error, UnicodeDecodeError) else ""
    return f"the input is not valid UTF-8 text ({getattr(error, 'reason', error)}{where})"


def run(command: str) -> None:
    """Run one attnlab command line in this process, as it would be typed after `attnlab`
    (for notebooks and scripts): `run("train gpt --data stdlib --max-iters 100")`. Its output
    goes to this process's stdout and stderr; a failure raises RuntimeError, and Ctrl-C (once
    the command has stopped, a training run saved) KeyboardInterrupt, which stops a notebook's
    cell or a script as Ctrl-C does where `except Exception` would catch a RuntimeError."""
    try:
        argv = shlex.split(command)
    except ValueError as error:  # a quote left open: a shell would not run it either
        raise RuntimeError(f"`attnlab {command}`: cannot split it: {error}") from None
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse: a bad flag (exit code 2), or --help (0)
        code = stop.code
    if code == INTERRUPTED:
        raise KeyboardInterrupt(f"`attnlab {command}` was interrupted")
    if code:
        raise RuntimeError(f"`attnlab {command}` failed (exit code {code})")


if __name__ == "__main__":
    sys.exit(main())
